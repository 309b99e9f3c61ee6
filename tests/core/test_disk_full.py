"""A full disk never loses work (issue: 37 clips sampled, then `[Errno 28]` and a broken mp4).

On a small tmpfs (mounted here when the process may mount, as root on Linux): a run that cannot fit is
refused before any work, saying by how much; a run whose video outgrows the disk stops within one clip
with the path, the free space and what the rest needs, removes its partial video (or keeps it playable as
``.partial.mp4`` when asked), keeps its finished clips in the resume folder, and a rerun after freeing
space continues and equals an uninterrupted run. Where no tmpfs can be mounted, the same faults come from
a writer that fails like a full disk (``ENOSPC``) after a given number of bytes.
"""
from __future__ import annotations

import errno
import math
import subprocess
import time
from pathlib import Path

import pytest

from letstalk_core.cli import main
from letstalk_core.io.video import read_video_frames
from tests.core.helpers import assert_same_video, portrait, speech_like, tiny_parts


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    from letstalk_core.families.letstalk.checkpoint import save_checkpoint
    from letstalk_core.io.audio_file import save_wav

    d = tmp_path_factory.mktemp("disk")
    cfg, model, dcae = tiny_parts()
    ckpt = save_checkpoint(d / "tiny.safetensors", cfg, model, dcae=dcae)
    Image.fromarray(((portrait(48).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(d / "face.png")
    save_wav(d / "speech.wav", speech_like(20.0, rate=16000), 16000)  # 500 frames: 83 clips of 8 sharing 2
    full = d / "full.mp4"
    assert _generate(d, ckpt, full) == 0
    return d, ckpt, full


def _generate(d, ckpt, out, *extra):
    return main(["generate", "--checkpoint", str(ckpt), "--image", str(d / "face.png"), "--audio", str(d / "speech.wav"),
                 "--out", str(out), "--steps", "1", "--device", "cpu", "--dtype", "fp32",
                 "--threads", "1", *extra])


class SmallDisk:
    """A folder whose file system holds ``size`` bytes: a real tmpfs, or a simulated one."""

    def __init__(self, path: Path, size: int, monkeypatch):
        self.path, self.size, self.real = path, size, False
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if r.returncode == 0:
            self.real = True
            return
        self._simulate(monkeypatch)

    def _simulate(self, monkeypatch):
        """No mount here: the video writer's file fails with ENOSPC past ``size`` bytes, and the free space
        reported for the folder is what is left of ``size``."""
        import letstalk_core.io.space as space
        from letstalk_core.io.video import VideoWriter

        folder, size = self.path.resolve(), self.size
        used = lambda: sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())  # noqa: E731
        real_free = space.free_bytes
        monkeypatch.setattr(space, "free_bytes", lambda p: max(0, size - used()) if folder in
                            [Path(p).resolve(), *Path(p).resolve().parents] else real_free(p))
        write = VideoWriter.write

        def failing(self, frames):
            write(self, frames)
            if Path(self.path).resolve().parent == folder and used() > size:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

        monkeypatch.setattr(VideoWriter, "write", failing)

    def free(self) -> int:
        import shutil

        return shutil.disk_usage(self.path).free if self.real else self.size

    def close(self):
        if self.real:
            subprocess.run(["umount", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    disks = []

    def make(size: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size, monkeypatch))
        return disks[-1]

    yield make
    for disk in disks:
        disk.close()


def test_a_run_that_cannot_fit_is_refused_before_any_work(files, small_disk, capsys):
    d, ckpt, full = files
    disk = small_disk(40 * 1024)
    t0 = time.perf_counter()
    assert _generate(d, ckpt, disk.path / "v.mp4") == 2
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert "needs about" in err and "short" in err and str(disk.path) in err, err
    assert "clips of" not in err  # refused before the run started
    assert list(disk.path.iterdir()) == []
    with capsys.disabled():
        print(f"\n[{'tmpfs' if disk.real else 'simulated'}] refused in {took:.2f} s; {err.strip().splitlines()[-1]}")


@pytest.mark.parametrize("keep_partial", [False, True])
def test_a_full_disk_stops_within_a_clip_keeps_the_clips_and_a_rerun_continues(files, small_disk, tmp_path, capsys,
                                                                                keep_partial):
    """The video's disk holds more than the estimate but less than this noise-like video takes: the run stops
    (the projection after a clip, or the failed write itself) within one clip, with the path, the free space
    and what the rest needs; the resume folder (on another disk) keeps every finished clip; after freeing space
    (here: another --out) the same command continues, and the video equals an uninterrupted run's."""
    d, ckpt, full = files
    real = full.stat().st_size
    from letstalk_core.io.space import estimate_video_bytes

    estimate = estimate_video_bytes(500, 32, 32, audio_seconds=20.0)
    assert estimate < real  # random weights make noise: the case the estimate cannot foresee
    disk = small_disk(max(estimate + 8192, real // 2))
    run = tmp_path / "run"
    extra = ["--resume-dir", str(run)] + (["--keep-partial"] if keep_partial else [])
    t0 = time.perf_counter()
    assert _generate(d, ckpt, disk.path / "v.mp4", *extra) == 2
    err = capsys.readouterr().err
    assert str(disk.path / "v.mp4") in err and "free on that disk" in err and "the rest of the run needs" in err, err
    clips = sorted(run.glob("clip_*.npy"))
    assert 0 < len(clips) < 83
    partial = disk.path / "v.partial.mp4"
    if keep_partial and partial.exists():  # a full disk may leave no room to finish the file: then it is removed
        assert read_video_frames(partial).shape[0] > 0
    assert not (disk.path / "v.mp4").exists()
    with capsys.disabled():
        print(f"\n[{'tmpfs' if disk.real else 'simulated'}] stopped after {len(clips)} of 83 clips in "
              f"{time.perf_counter() - t0:.1f} s, {sum(c.stat().st_size for c in run.glob('clip_*'))} B of clips kept; "
              f"estimate {estimate} B, real {real} B; partial kept: {(disk.path / 'v.partial.mp4').exists()}; "
              f"{err.strip().splitlines()[-1][:400]}")
    out = tmp_path / "again.mp4"
    assert _generate(d, ckpt, out, "--resume-dir", str(run)) == 0
    assert f"resuming after clip {len(clips)}" in capsys.readouterr().err
    assert_same_video(out, full)


def test_estimate_against_the_real_size(files):
    from letstalk_core.io.space import estimate_video_bytes

    d, ckpt, full = files
    estimate = estimate_video_bytes(500, 32, 32, audio_seconds=20.0)
    ratio = full.stat().st_size / estimate
    print(f"tiny random model: real {full.stat().st_size} B, estimate {estimate} B, ratio {ratio:.2f}")
    assert 0.2 < ratio < 5
    assert math.isfinite(ratio)


def _resume_run(d, ckpt, out, run, capsys):
    assert _generate(d, ckpt, out, "--resume-dir", str(run), "--keep-resume-dir") == 0
    return capsys.readouterr().err


@pytest.mark.parametrize("fault", ["truncated state", "missing clip", "truncated clip"])
def test_a_broken_resume_folder_starts_afresh_with_a_warning_and_gives_the_right_video(files, tmp_path, capsys, fault):
    import numpy as np

    d, ckpt, full = files
    run = tmp_path / "run"
    _resume_run(d, ckpt, tmp_path / "first.mp4", run, capsys)
    state = run / "state.safetensors"
    if fault == "truncated state":
        state.write_bytes(state.read_bytes()[:40])
    elif fault == "missing clip":
        (run / "clip_00003.npy").unlink()
    else:
        clip = run / "clip_00003.npy"
        clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    # the state says the run finished all clips; make it look interrupted after clip 5
    if fault != "truncated state":
        from letstalk_core.loop import GenerationState

        s = GenerationState.load(state)
        assert s.next_clip == 83
    err = _resume_run(d, ckpt, tmp_path / "again.mp4", run, capsys)
    assert "could not be used" in err and "starting afresh" in err, err
    assert_same_video(tmp_path / "again.mp4", full)
    assert np.load(run / "clip_00003.npy").shape[-1] == 3


def test_a_folder_of_another_run_is_refused_and_left_as_it_is(files, tmp_path, capsys):
    d, ckpt, full = files
    run = tmp_path / "run"
    _resume_run(d, ckpt, tmp_path / "first.mp4", run, capsys)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert _generate(d, ckpt, tmp_path / "other.mp4", "--resume-dir", str(run), "--seed", "5") == 2
    err = capsys.readouterr().err
    assert "different inputs, settings or model" in err and "would overwrite it" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_a_folder_another_run_is_writing_is_refused(files, tmp_path, capsys):
    from letstalk_core.resume import ClipStore

    d, ckpt, full = files
    run = tmp_path / "run"
    holder = ClipStore(run)  # another run, alive, holding the folder
    try:
        assert _generate(d, ckpt, tmp_path / "v.mp4", "--resume-dir", str(run)) == 2
        err = capsys.readouterr().err
        assert "another run is writing the resume folder" in err and "pid" in err, err
    finally:
        holder.close()
    assert _generate(d, ckpt, tmp_path / "v.mp4", "--resume-dir", str(run)) == 0  # free again once it ends


def _fill(folder: Path, size: int) -> Path:
    """Fill ``folder``'s disk (real, or simulated as ``size`` bytes) to the last byte; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush into a full disk at close
        for block in (65536, 4096, 1):
            try:
                while fh.write(b"\0" * block) and filler.stat().st_size <= size:  # a simulated disk never fills
                    pass
            except OSError:
                pass
    return filler


def test_paste_back_on_a_full_disk_refuses_or_stops_and_removes_its_file(small_disk, tmp_path):
    """Paste Back's streamed output: a disk too small is refused before any frame; a disk that fills during the
    run stops it within one chunk, with the path and the free space, and no unfinished file is left."""
    import torch

    from letstalk_core.compose import manual_box, paste_back_video
    from letstalk_core.io import VideoWriter
    from letstalk_core.io.space import WriteFailed

    g = torch.Generator().manual_seed(1)
    faces = torch.nn.functional.avg_pool2d(torch.rand(96, 3, 48, 48, generator=g) * 2 - 1, 3, 1, 1)
    source = tmp_path / "faces.mp4"
    with VideoWriter(source, 25, audio=speech_like(96 / 25, rate=16000), audio_rate=16000) as w:
        w.write(faces)
    photo = torch.rand(1, 3, 160, 200, generator=g) * 2 - 1
    box = manual_box(0.5, 0.5, 0.4, 200, 160)
    tiny = small_disk(8 * 1024)
    with pytest.raises(ValueError, match="needs about .* short"):
        paste_back_video(source, tiny.path / "out.mp4", photo, box)
    assert list(tiny.path.iterdir()) == []

    disk = small_disk(4 * 2**20)
    chunks = {"n": 0}

    def fill_after_two_chunks():
        chunks["n"] += 1
        if chunks["n"] == 3:
            chunks["filler"] = _fill(disk.path, disk.size)

    t0 = time.perf_counter()
    with pytest.raises(WriteFailed, match="free on that disk") as e:
        paste_back_video(source, disk.path / "out.mp4", photo, box, chunk=16, should_stop=fill_after_two_chunks)
    print(f"\n[{'tmpfs' if disk.real else 'simulated'}] paste back stopped {time.perf_counter() - t0:.2f} s into the "
          f"run after chunk {chunks['n']}: {e.value}")
    assert str(disk.path / "out.mp4") in str(e.value) and chunks["n"] <= 4
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler.bin"]
