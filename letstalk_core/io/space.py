"""Disk space: what a run will write, what the disk has, and what a failed write says.

A long run must learn that its output does not fit before the work starts, not after it (issue: 37 clips
sampled, then ``[Errno 28]`` and a broken mp4). :func:`estimate_video_bytes` sizes an mp4 from its frames
and sound; :func:`require_space` refuses a run that cannot fit, saying by how much; :func:`write_failed`
turns an ``OSError`` from a write into a message naming the path, the free space and what the rest needs.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

#: x264 at crf 18 (the writer's default) on talking-face video, bits per pixel per frame, rounded up from what we
#: measured (the demo's procedural faces at 64²: 0.46; noise-like frames from random weights: 3.0, the worst case).
X264_BITS_PER_PIXEL = 1.0
#: The writer's other encoders get a bit rate of 0.2 bit per pixel (io.video.VideoWriter).
OTHER_BITS_PER_PIXEL = 0.2
AAC_BYTES_PER_SECOND_PER_CHANNEL = 8000  # 64 kbit/s per channel (io.video)
CONTAINER_OVERHEAD = 1.03
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def format_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _existing(path) -> Path:
    """``path``, or the nearest folder above it that exists (where a file to be written would go)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path) -> int:
    """Free bytes on the file system that holds ``path`` (or would: the nearest folder that exists)."""
    return int(shutil.disk_usage(_existing(path)).free)


def same_disk(a, b) -> bool:
    """Whether ``a`` and ``b`` are (or would be) on one file system: their space comes from the same free bytes."""
    import os

    return os.stat(_existing(a)).st_dev == os.stat(_existing(b)).st_dev


def estimate_video_bytes(frames: int, width: int, height: int, *, audio_seconds: float = 0.0, audio_channels: int = 1,
                         crf: int = 18, x264: bool = True) -> int:
    """About the size of an mp4 of ``frames`` frames of ``width``×``height`` with ``audio_seconds`` of AAC sound, as
    :class:`~letstalk_core.io.video.VideoWriter` writes it. x264's size halves with every 6 crf steps."""
    bits = X264_BITS_PER_PIXEL * 2.0 ** ((18 - crf) / 6) if x264 else OTHER_BITS_PER_PIXEL
    video = frames * width * height * bits / 8
    audio = audio_seconds * AAC_BYTES_PER_SECOND_PER_CHANNEL * max(1, audio_channels)
    return int((video + audio) * CONTAINER_OVERHEAD) + 4096


def require_space(path, need: int, what: str, hint: str) -> None:
    """Refuse, before any work, to write about ``need`` bytes at ``path`` when the disk has less free."""
    free = free_bytes(path)
    if need > free:
        raise ValueError(f"the {what} needs about {format_bytes(need)} at '{path}', but that disk has "
                         f"{format_bytes(free)} free ({format_bytes(need - free)} short). {hint}")


def require_room_for_the_rest(path, done: int, total: int, estimate: int = 0) -> None:
    """After each clip: stop now (``OSError(ENOSPC)``) when the disk of the video at ``path`` cannot hold the rest,
    rather than when a write fails. An encoder holds frames back (x264's look-ahead is 40 frames) and FFmpeg
    writes in 32 KB blocks, so a write fails clips after the disk filled, and early in a run the file's size says
    little. The rest is the larger of two projections: from what the ``done`` frames of ``total`` took, and from
    the run's size ``estimate`` (:func:`estimate_video_bytes`) for the frames left. A run that passed
    :func:`require_space` and writes no faster than the estimate never stops here unless something else fills
    its disk."""
    if not done or done >= total:
        return
    try:
        size = Path(path).stat().st_size
    except OSError:
        return
    measured = size / done * (total - done)
    rest = max(measured, estimate * (total - done) / total)
    free = free_bytes(Path(path).parent)
    if rest > free:
        basis = (f"the video so far takes {format_bytes(size)} for {done} frames, so the other {total - done} need "
                 f"about {format_bytes(rest)}" if measured >= rest else
                 f"the other {total - done} frames need about {format_bytes(rest)}")
        raise OSError(errno.ENOSPC, f"{basis}, more than the {format_bytes(free)} free; stopping now rather than "
                                    "at the end", str(path))


class WriteFailed(OSError):
    """A write that failed, with a message a user can act on (the path, the free space, what the rest needs)."""


def write_failed(error: OSError, path, *, remaining: int | None = None, kept: str = "") -> WriteFailed:
    """``error`` from writing ``path`` → :class:`WriteFailed` naming the path, the free space, the bytes the rest of
    the run needs (``remaining``) and what was kept (``kept``: e.g. where the finished clips are)."""
    if isinstance(error, WriteFailed):
        return error
    try:
        free = format_bytes(free_bytes(path))
    except OSError:
        free = "unknown"
    reason = error.strerror or str(error)
    need = f"; the rest of the run needs about {format_bytes(remaining)}" if remaining is not None else ""
    full = " Free some space" if error.errno in FULL_DISK else " Fix the cause"
    out = WriteFailed(error.errno, f"writing '{path}' failed: {reason}. {free} free on that disk{need}.{full} and "
                                   f"run the same command again.{(' ' + kept) if kept else ''}")
    out.path = str(path)  # not .filename: str() would repeat it
    return out


def abandon_video(writer, path, *, keep_partial: bool = False) -> Path | None:
    """A run that stopped: close ``writer`` as far as it got and remove its file, or with ``keep_partial`` keep it
    playable as ``<name>.partial<ext>`` (returned). A file that cannot even be closed (a full disk) is removed."""
    p = Path(path)
    try:
        writer.close(complete=False)
    except Exception:  # noqa: BLE001 - the disk may be full: nothing playable can be left
        keep_partial = False
    if keep_partial and p.exists():
        partial = p.with_name(f"{p.stem}.partial{p.suffix}")
        p.replace(partial)
        return partial
    p.unlink(missing_ok=True)
    return None
