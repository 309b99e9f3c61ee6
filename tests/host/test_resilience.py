"""Long runs in the real host survive what happens to servers (skipped without COMFYUI_PATH).

* The ComfyUI process SIGKILLed in the middle of a run with a ``resume_folder``: a new server given the same
  prompt resumes after the last finished clip (the finished clips are not made again) and its video equals an
  uninterrupted run's, frame for frame.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from letstalk_core.io.video import read_video_frames
from tests.host.conftest import start_comfy, stop_comfy
from tests.host.test_host import load_api, node_of, saved_video


def _uninterrupted_and_resumable(object_info, seed: int, name: str) -> tuple[dict, dict]:
    """The shipped long-video graph (4 steps a clip) twice: without a resume folder, and with
    ``letstalk/<name>_run`` as its resume folder; their videos are saved under different names."""
    api = load_api("letstalk_long_video", object_info)
    node_of(api, "LetsTalkMemoryBankLoop")["inputs"].update(steps=4, seed=seed, resume_folder="")
    node_of(api, "SaveVideo")["inputs"]["filename_prefix"] = f"letstalk/{name}_uninterrupted"
    resumable = copy.deepcopy(api)
    node_of(resumable, "LetsTalkMemoryBankLoop")["inputs"]["resume_folder"] = f"letstalk/{name}_run"
    node_of(resumable, "SaveVideo")["inputs"]["filename_prefix"] = f"letstalk/{name}_resumed"
    return api, resumable


def test_a_killed_server_resumes_after_the_last_finished_clip(object_info, tmp_path):
    work = tmp_path / "host"
    api, killed = _uninterrupted_and_resumable(object_info, 99, "killed")
    comfy = start_comfy(work, ["letstalk"])
    folder = comfy.dirs["output"] / "letstalk" / "killed_run"  # the resume folder
    try:
        reference = saved_video(comfy, comfy.wait(comfy.queue(api), timeout=900))
        comfy.queue(killed)
        t0 = time.time()
        while len(list(folder.glob("clip_*.npy"))) < 4:
            assert time.time() - t0 < 300, "the run made no clips"
            time.sleep(0.05)
        os.killpg(comfy.proc.pid, signal.SIGKILL)  # the server and anything it started, at once
        comfy.proc.wait(30)
    finally:
        if comfy.proc.poll() is None:
            stop_comfy(comfy)
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("clip_*.npy")}
    state_clips = len(kept)
    assert 4 <= state_clips, kept
    second = start_comfy(work, ["letstalk"], reuse=True)
    try:
        t1 = time.time()
        resumed = saved_video(second, second.wait(second.queue(killed), timeout=900))
        took = time.time() - t1
        log = second.log.read_text()
    finally:
        stop_comfy(second)
    unchanged = [n for n, t in kept.items() if (folder / n).exists() and (folder / n).stat().st_mtime_ns == t]
    print(f"\nkilled after {state_clips} clip files; the new server resumed in {took:.1f} s, "
          f"{len(unchanged)} of them untouched")
    # the clips the killed run finished (all but possibly the one being written when it died) are not made again
    assert len(unchanged) >= state_clips - 1, (len(unchanged), state_clips)
    assert torch.equal(read_video_frames(reference), read_video_frames(resumed))
    assert "Traceback" not in log, log[-3000:]


def _error_text(entry) -> str:
    """The exception message of a failed prompt's history entry."""
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors, entry["status"]
    return errors[0]["exception_message"]


def test_a_full_temp_disk_stops_the_loop_within_a_clip_and_a_rerun_continues(object_info, tmp_path):
    """The loop's ``video`` output is written into ComfyUI's temp folder as it is made. That folder on a small
    tmpfs: a disk too small is refused before any clip; a disk that fills in the middle of a run stops it within a
    clip with the path and the free space, removes the unfinished video and keeps the finished clips in the
    resume folder; after freeing the space the same prompt continues and its video equals an uninterrupted run's."""
    import subprocess

    disk = tmp_path / "tempdisk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs for ComfyUI's temp folder needs root on Linux")
    api, resumable = _uninterrupted_and_resumable(object_info, 5, "full_disk")
    comfy = start_comfy(tmp_path / "host", ["letstalk"], ["--temp-directory", str(disk)])
    temp = disk / "temp"
    folder = comfy.dirs["output"] / "letstalk" / "full_disk_run"
    filler = disk / "filler.bin"
    try:
        reference = saved_video(comfy, comfy.wait(comfy.queue(api), timeout=900))
        # too small before any work: the disk filled but for 64 KB
        with open(filler, "wb") as fh:
            fh.write(b"\0" * (shutil.disk_usage(disk).free - 64 * 1024))
        t0 = time.time()
        refusal = _error_text(comfy.wait(comfy.queue(resumable), timeout=300))
        refused = time.time() - t0
        assert "needs about" in refusal and "short" in refusal and str(temp) in refusal, refusal
        assert not list(folder.glob("clip_*.npy"))  # refused before the first clip
        filler.unlink()
        # the disk fills after the second finished clip
        prompt = comfy.queue(resumable)
        t0 = time.time()
        while len(list(folder.glob("clip_*.npy"))) < 2:
            assert time.time() - t0 < 300, "the run made no clips"
            time.sleep(0.02)
        with open(filler, "wb", buffering=0) as fh:  # to the last byte
            for block in (2**20, 4096, 1):
                try:
                    while fh.write(b"\0" * block):
                        pass
                except OSError:
                    pass
        filled_at, clips_then = time.time(), len(list(folder.glob("clip_*.npy")))
        entry = comfy.wait(prompt, timeout=300)
        stopped = time.time() - filled_at
        message = _error_text(entry)
        kept = sorted(folder.glob("clip_*.npy"))
        assert "[Errno 28]" in message and "free on that disk" in message and str(temp) in message, message
        assert "Finished clips are kept" in message, message
        assert len(kept) <= clips_then + 1, (len(kept), clips_then)  # stopped within one clip
        unfinished = Path(re.search(r"writing '([^']+)'", message).group(1))
        assert unfinished.parent.parent == temp and not unfinished.exists()  # the unfinished video removed
        assert comfy.alive()
        filler.unlink()
        resumed = saved_video(comfy, comfy.wait(comfy.queue(resumable), timeout=900))
    finally:
        stop_comfy(comfy)
        subprocess.run(["umount", str(disk)], check=False)
    print(f"\nrefused in {refused:.2f} s: {refusal}\nstopped {stopped:.2f} s after the disk filled ({clips_then} "
          f"clips then, {len(kept)} kept, {sum(k.stat().st_size for k in kept)} B): {message}")
    assert torch.equal(read_video_frames(reference), read_video_frames(resumed))


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_day_of_prompts_in_one_server(object_info, tmp_path):
    """10 runs back to back in one server, alternating the demo model and a tiny MEMO installation, two of them
    cancelled: every finished run gives the right frame count with sound, the server's RSS after run 10 is within
    10 % of its RSS after run 2, and no video of an earlier run is left in the temp folder."""
    import asyncio

    from tests.host.test_host import _run_and_cancel, probe_mp4
    from tests.host.test_memo import install_tiny_memo, memo_graph
    from tests.host.test_streaming import _speech_wav

    comfy = start_comfy(tmp_path / "host", ["letstalk"])
    try:
        install_tiny_memo(comfy, tmp_path)
        _speech_wav(tmp_path / "speech_3.wav", 3)
        audio = comfy.upload(tmp_path / "speech_3.wav", "letstalk_day_speech_3s.wav")
        rss, log = {}, []
        for run in range(1, 11):
            memo = run % 2 == 0
            if memo:
                api = memo_graph(object_info, audio=audio, steps=1, prefix=f"letstalk/day_{run}")
                node_of(api, "LetsTalkMemoryBankLoop")["inputs"]["seed"] = run
            else:
                api = load_api("letstalk_long_video", object_info)
                node_of(api, "LoadAudio")["inputs"]["audio"] = audio
                node_of(api, "LetsTalkMemoryBankLoop")["inputs"].update(steps=2, seed=run)
                node_of(api, "SaveVideo")["inputs"]["filename_prefix"] = f"letstalk/day_{run}"
            if run in (3, 6):
                res = asyncio.run(_run_and_cancel(comfy, api, cancel_after=3))
                assert res["event"] == "execution_interrupted", res
                outcome = "cancelled"
            else:
                path = saved_video(comfy, comfy.wait(comfy.queue(api), timeout=900))
                frames, w, h, has_audio = probe_mp4(path)
                assert frames == (90 if memo else 75) and has_audio, (run, frames)  # 3 s at 30 / 25 fps
                outcome = f"{frames} frames"
            rss[run] = _rss(comfy.proc.pid)
            temp = sorted(p.name for p in (comfy.dirs["temp"]).rglob("*.mp4"))
            log.append(f"run {run} ({'MEMO' if memo else 'demo'}): {outcome}, RSS {rss[run] / 2**20:.0f} MiB, "
                       f"temp videos {len(temp)}")
        print("\n" + "\n".join(log))
        assert abs(rss[10] - rss[2]) <= 0.10 * rss[2], (rss[2], rss[10])
        # what ComfyUI still holds (the last prompt's outputs) may stay; nothing of the runs before it
        assert len(list(comfy.dirs["temp"].rglob("*.mp4"))) <= 2, sorted(comfy.dirs["temp"].rglob("*.mp4"))
    finally:
        stop_comfy(comfy)
