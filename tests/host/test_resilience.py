"""Long runs in the real host survive what happens to servers (skipped without COMFYUI_PATH).

* The ComfyUI process SIGKILLed in the middle of a run with a ``resume_folder``: a new server given the same
  prompt resumes after the last finished clip (the finished clips are not made again) and its video equals an
  uninterrupted run's, frame for frame.
"""
from __future__ import annotations

import copy
import os
import signal
import time

import pytest
import torch

from letstalk_core.io.video import read_video_frames
from tests.host.conftest import start_comfy, stop_comfy
from tests.host.test_host import load_api, node_of, outputs_of


def _video(comfy, entry):
    assert entry["status"]["status_str"] == "success", str(entry["status"])[:3000]
    v = outputs_of(entry, "images")
    assert len(v) == 1, entry["outputs"]
    return comfy.dirs["output"] / v[0]["subfolder"] / v[0]["filename"]


def test_a_killed_server_resumes_after_the_last_finished_clip(object_info, tmp_path):
    work = tmp_path / "host"
    api = load_api("letstalk_long_video", object_info)
    node_of(api, "LetsTalkMemoryBankLoop")["inputs"].update(steps=4, seed=99, resume_folder="")
    node_of(api, "SaveVideo")["inputs"]["filename_prefix"] = "letstalk/uninterrupted"
    killed = copy.deepcopy(api)
    node_of(killed, "LetsTalkMemoryBankLoop")["inputs"]["resume_folder"] = "letstalk/killed_run"
    node_of(killed, "SaveVideo")["inputs"]["filename_prefix"] = "letstalk/resumed"
    comfy = start_comfy(work, ["letstalk"])
    folder = comfy.dirs["output"] / "letstalk" / "killed_run"
    try:
        reference = _video(comfy, comfy.wait(comfy.queue(api), timeout=900))
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
        resumed = _video(second, second.wait(second.queue(killed), timeout=900))
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
