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
                path = _video(comfy, comfy.wait(comfy.queue(api), timeout=900))
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
