"""Input checks shared by the core. Every public function validates its inputs and raises
``ValueError``/``TypeError`` with a message a ComfyUI user can act on: what was given, what is
expected, what to do. Nothing is silently clamped."""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Mapping

import torch


def require_tensor(x, name: str, *, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor (with ``ndim`` dimensions, if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(x.shape)}."
            )
    return x


def require_finite(x: torch.Tensor, name: str, hint: str = "") -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values.

    NaN and ±inf propagate into a sum, so a finite sum proves the tensor finite without allocating a
    tensor-sized mask (which matters for minutes of audio); only a non-finite sum (or an overflow)
    takes the exact, element-wise check."""
    if x.numel() == 0 or not x.is_floating_point() or x.is_meta or torch.isfinite(x.sum()):
        return x  # (a meta tensor has no values: memory plans run the code on shapes alone)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or infinite values. {hint}".strip())
    return x


def require_file(path, what: str) -> Path:
    """Return ``path`` as a Path, raising ``FileNotFoundError`` with a clear message if it is missing."""
    if path is None or str(path) == "":
        raise ValueError(f"No {what} path was given.")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: '{p}'. Check the path (it is resolved from '{Path.cwd()}').")
    if p.is_dir():
        raise IsADirectoryError(f"{what} path '{p}' is a folder; give the file itself.")
    return p


_WRITE_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted (an immutable or protected folder)",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.ENOENT: "the folder does not accept new files",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def _refuse_file_in_path(what: str, path: Path, hint: str) -> None:
    """A folder of the path that exists as a file makes mkdir fail with a bare 'File exists'."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"Cannot write the {what} '{path}': '{parent}' is a file, not a folder. {hint}")
            return


def _write_error(what: str, path: Path, exc: OSError, hint: str) -> ValueError:
    reason = _WRITE_REASONS.get(exc.errno, exc.strerror or str(exc))
    return ValueError(f"Cannot write the {what} '{path}': {reason} ({exc.strerror or exc}). {hint}".strip())


def require_writable_folder(folder, what: str, hint: str = "Choose another folder.") -> Path:
    """Create ``folder`` (with its parents) and prove a file can be written in it, before any work.
    Raises ``ValueError`` naming the folder and the reason; the probe file is removed again."""
    import tempfile

    p = Path(folder).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"The {what} '{p}' is a file, not a folder. {hint}")
    _refuse_file_in_path(what, p, hint)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".letstalk-write-test-"):
            pass
    except OSError as exc:
        raise _write_error(what, p, exc, hint) from exc
    return p


def require_writable_file(path, what: str, hint: str = "Choose another output path.") -> Path:
    """Prove ``path`` can be created (its folder too) and written, before any work: the check opens
    it for appending (an existing file keeps its content) and removes it again if it did not exist.
    Raises ``ValueError`` naming the path and the reason (permission, read-only or immutable folder,
    a pseudo file system such as /proc, a full disk, ...)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"The {what} '{p}' is a folder; give a file name in it, e.g. '{p / 'video.mp4'}'.")
    _refuse_file_in_path(what, p, hint)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(what, p, exc, hint) from exc
    existed = p.exists()
    try:
        with open(p, "ab"):
            pass
    except OSError as exc:
        raise _write_error(what, p, exc, hint) from exc
    finally:
        if not existed:
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
    return p


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")
FILE_LIKE_SUFFIXES = VIDEO_SUFFIXES + (".safetensors", ".json", ".wav", ".flac", ".png", ".jpg")


def require_video_out(path, what: str = "output video") -> Path:
    """``--out`` of a command that makes a video: always the video file (``generate``, ``demo``, ...). A folder, or a
    name without a video extension, is refused with the file name to give instead; then as
    :func:`require_writable_file`."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"--out '{p}' is a folder, but --out is the video file in every letstalk command; give a file "
                         f"name, e.g. '{p / 'video.mp4'}'.")
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        example = p.with_suffix(".mp4") if p.suffix else p / "video.mp4"
        raise ValueError(f"--out '{p}' has no video extension ({', '.join(VIDEO_SUFFIXES)}); --out is the video file "
                         f"in every letstalk command, e.g. '{example}'.")
    return require_writable_file(p, what, "Choose another --out.")


def require_folder_out(path, what: str) -> Path:
    """``--out`` of a command that writes many files (``synth``, ``preprocess``): a folder. A name that looks like a
    file (``x.mp4``) is refused rather than made into a folder of that name; then as :func:`require_writable_folder`."""
    p = Path(path).expanduser()
    if not p.exists() and p.suffix.lower() in FILE_LIKE_SUFFIXES:
        raise ValueError(f"--out '{p}' looks like a file name, but this command writes a folder of files ({what}); "
                         f"give a folder, e.g. '{p.with_suffix('')}'.")
    return require_writable_folder(p, what, "Choose another --out.")


def require_positive(value, name: str, *, integer: bool = False):
    """Raise ``ValueError`` unless ``value`` is a positive number (an int if ``integer``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}.")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return value


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], source: str,
                     target: str = "its config", *, optional: tuple[str, ...] = (), hint: str = "") -> None:
    """``ValueError`` naming the first missing, unexpected and mis-shaped tensors (with both shapes).

    Keys ending in one of ``optional`` may be absent. Meta tensors work on both sides (only shapes count)."""
    missing = [k for k in expected if k not in given and not (optional and k.endswith(optional))]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"'{k}': expected {tuple(v.shape)}, file has {tuple(given[k].shape)}"
              for k, v in expected.items() if k in given and tuple(given[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:5]}")
    if shapes:
        problems.append(f"{len(shapes)} tensors with the wrong shape, e.g. {'; '.join(shapes[:5])}")
    if problems:
        raise ValueError(f"{source} does not match {target}: {'; '.join(problems)}. "
                         + (hint or "Is it the right file, and the right config/preset for it?"))
