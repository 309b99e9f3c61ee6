"""MEMO in the real host (skipped without COMFYUI_PATH): the shipped workflow memo_long_video.json with
a tiny random MEMO installation in the published layout (tests/core/memo_tiny.py) under models/memo,
models/vae and models/audio_encoders.

* the workflow as shipped (photo → Face Crop with MEMO's SCRFD → loop → Paste Back → Save Video) with
  only the file names, the size and the emotion changed for the tiny files: exact frames with sound;
* 90 s against 10 s through /prompt on a server of its own: exact frame counts, peak memory within 15 %;
* cancel within one step, and a resumed run's video equal to an uninterrupted run's, frame for frame.
"""
from __future__ import annotations

import asyncio
import copy
import math
import shutil

import pytest

from tests.core.memo_tiny import PORTRAIT, SIZE, make_tiny_memo
from tests.host.conftest import start_comfy, stop_comfy
from tests.host.test_host import _run_and_cancel, audio_samples, load_api, node_of, probe_mp4, saved_video
from tests.host.test_streaming import _speech_wav

pytest.importorskip("onnxruntime", reason="MEMO's face analysis needs onnxruntime")
MEMO_NAME, VAE_NAME, W2V_NAME = "memo-tiny", "letstalk_test_sdvae.safetensors", "letstalk_test_w2v_memo.safetensors"
FPS = 10  # the tiny runs' frame rate (a loader setting): 900 frames for 90 s, to keep the test affordable


def install_tiny_memo(comfy, tmp_path) -> None:
    models = comfy.dirs["models"]
    if (models / "memo" / MEMO_NAME).is_dir():
        return
    paths = make_tiny_memo(tmp_path / "tiny_memo")
    shutil.copytree(paths["memo"], models / "memo" / MEMO_NAME)
    shutil.copy(paths["vae"] / "diffusion_pytorch_model.safetensors", models / "vae" / VAE_NAME)
    shutil.copy(paths["wav2vec2"], models / "audio_encoders" / W2V_NAME)
    comfy.upload(PORTRAIT, "letstalk_test_face.png")


def memo_graph(object_info, *, audio: str = "letstalk_demo_speech.flac", fps: float = 30.0, steps: int = 1,
               resume: str = "", prefix: str = "letstalk/memo_test") -> dict:
    """The shipped workflow with the tiny files: names, size, a fixed emotion (no emotion2vec file)."""
    api = load_api("memo_long_video", object_info)
    node_of(api, "LoadImage")["inputs"]["image"] = "letstalk_test_face.png"
    node_of(api, "LoadAudio")["inputs"]["audio"] = audio
    node_of(api, "LetsTalkMemoLoader")["inputs"].update(memo_folder=MEMO_NAME, vae_name=VAE_NAME, encoder_name=W2V_NAME,
                                                        emotion2vec="(none: pick an emotion below)",
                                                        weight_dtype="fp32", fps=fps, size=SIZE, emotion="happy")
    node_of(api, "LetsTalkFaceCrop")["inputs"].update(size=SIZE)
    node_of(api, "LetsTalkMemoryBankLoop")["inputs"].update(steps=steps, seed=7, resume_folder=resume)
    node_of(api, "SaveVideo")["inputs"]["filename_prefix"] = prefix
    return api


def test_memo_workflow_runs_as_shipped(comfy, object_info, tmp_path):
    install_tiny_memo(comfy, tmp_path)
    fresh = comfy.get("/object_info/LetsTalkMemoLoader")["LetsTalkMemoLoader"]["input"]["required"]
    assert MEMO_NAME in fresh["memo_folder"][1]["options"]  # listed once the folder is there (page refresh)
    from PIL import Image

    entry = comfy.wait(comfy.queue(memo_graph(object_info)), timeout=1200)
    path = saved_video(comfy, entry)
    samples, rate = audio_samples(comfy.dirs["input"] / "letstalk_demo_speech.flac")
    frames, w, h, has_audio = probe_mp4(path)
    photo_w, photo_h = Image.open(PORTRAIT).size
    assert (frames, w, h, has_audio) == (math.ceil(samples * 30 / rate), photo_w, photo_h, True)
    plan = comfy.get("/letstalk/plan?audio=letstalk_demo_speech.flac&memo_fps=30")
    assert plan["frames"] == frames and plan["clip_frames"] == 16 and plan["memory_frames"] == 16


def test_memo_cancel_within_one_step_and_resume_equals_an_uninterrupted_run(comfy, object_info, tmp_path):
    install_tiny_memo(comfy, tmp_path)
    _speech_wav(tmp_path / "speech_4.wav", 4)
    audio = comfy.upload(tmp_path / "speech_4.wav", "letstalk_memo_speech_4s.wav")  # 120 frames: 8 clips
    full = saved_video(comfy, comfy.wait(comfy.queue(memo_graph(object_info, audio=audio, steps=3,
                                                           prefix="letstalk/memo_full")), timeout=1200))
    api = memo_graph(object_info, audio=audio, steps=3, resume="letstalk/memo_resume", prefix="letstalk/memo_resumed")
    res = asyncio.run(_run_and_cancel(comfy, copy.deepcopy(api), cancel_after=3 * 4 + 2))  # inside clip 5
    print(f"MEMO cancel: {res}")
    assert res["event"] == "execution_interrupted", res
    assert res["steps_after"] <= 1 and res["stop_s"] <= res["step_s"] + 1.0, res
    stored = sorted((comfy.dirs["output"] / "letstalk" / "memo_resume").glob("clip_*.npy"))
    assert len(stored) == 4, stored
    resumed = saved_video(comfy, comfy.wait(comfy.queue(api), timeout=1200))
    import torch

    from letstalk_core.io.video import read_video_frames

    assert torch.equal(read_video_frames(full), read_video_frames(resumed))


def test_memo_90_seconds_in_flat_memory(object_info, tmp_path):
    """On a server of its own: 10 s and 90 s at 10 fps through /prompt, exact frames with sound, peak
    memory of the 90 s run within 15 % of the 10 s run's."""
    comfy = start_comfy(tmp_path / "host", ["letstalk"])
    try:
        install_tiny_memo(comfy, tmp_path)
        peaks = {}
        for seconds in (10, 90):
            samples = _speech_wav(tmp_path / f"speech_{seconds}.wav", seconds)
            name = comfy.upload(tmp_path / f"speech_{seconds}.wav", f"letstalk_memo_speech_{seconds}s.wav")
            api = memo_graph(object_info, audio=name, fps=FPS, prefix=f"letstalk/memo_{seconds}s")
            entry, peak = comfy.rss_peak(lambda: comfy.wait(comfy.queue(api), timeout=1800))
            frames, w, h, has_audio = probe_mp4(saved_video(comfy, entry))
            assert frames == math.ceil(samples * FPS / 16000) and has_audio
            peaks[seconds] = peak
            print(f"MEMO {seconds} s at {FPS} fps: {frames} frames, peak RSS {peak / 2**20:.0f} MiB")
        print(f"MEMO peak RSS 90 s / 10 s = {peaks[90] / peaks[10]:.3f}")
        assert peaks[90] <= 1.15 * peaks[10], peaks
    finally:
        stop_comfy(comfy)
