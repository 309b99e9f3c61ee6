"""Long runs at real resolution in flat memory, and the faults a user met in the real host
(see conftest.py; skipped without COMFYUI_PATH).

* The Memory Bank Loop's ``video`` output streams the frames into an mp4 as they are decoded: a
  3-minute run at 512² goes through /prompt to Save Video with the ComfyUI process's peak memory
  within 15 % of a 20-second run, exact frame count and the sound intact. Paste Back streams a video too.
* Two copies of the pack in custom_nodes/ must not stop ComfyUI from starting; previews are sent at
  the frames' own size and not at all under ``--preview-method none``.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import io as pyio
import json
import math
import time
import uuid

from tests.host.conftest import ASSETS, start_comfy, stop_comfy
from tests.host.test_host import audio_samples, load_api, node_of, outputs_of, probe_mp4

SECONDS_SHORT, SECONDS_LONG = 20, 180
FPS_512 = 10  # the tiny 512² checkpoint's frame rate: 1800 frames in 3 minutes, to keep the test affordable


def _tiny_512_checkpoint(path) -> None:
    """A tiny random LetsTalk model configured for 512² (a 6-stage DC-AE: 32× compression, 16² latents)."""
    import torch

    from letstalk_core.autoencoder.config import DCAEConfig
    from letstalk_core.autoencoder.dc_ae import DCAE
    from letstalk_core.families.letstalk.checkpoint import save_checkpoint
    from letstalk_core.families.letstalk.config import get_preset
    from letstalk_core.families.letstalk.transformer import LetsTalkTransformer

    torch.manual_seed(0)
    dcae = DCAEConfig(latent_channels=4, attention_head_dim=8,
                      encoder_block_types=("ResBlock",) * 6, decoder_block_types=("ResBlock",) * 6,
                      encoder_block_out_channels=(4, 4, 8, 8, 8, 16), decoder_block_out_channels=(4, 4, 8, 8, 8, 16),
                      encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
                      encoder_qkv_multiscales=((),) * 6, decoder_qkv_multiscales=((),) * 6,
                      upsample_block_type="interpolate", downsample_block_type="conv",
                      decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=1.0)
    tiny = get_preset("tiny")
    cfg = dataclasses.replace(tiny, dcae=dcae, dit=dataclasses.replace(tiny.dit, in_channels=4),
                              video=dataclasses.replace(tiny.video, height=512, width=512, fps=float(FPS_512)))
    save_checkpoint(path, cfg, LetsTalkTransformer(cfg), dcae=DCAE(cfg.dcae))


def _speech_wav(path, seconds: float) -> int:
    """The demo speech repeated to ``seconds`` (16 kHz mono wav); returns its sample count."""

    from letstalk_core.audio.waveform import resample
    from letstalk_core.io.audio_file import load_audio, save_wav

    wave, rate = load_audio(ASSETS / "letstalk_demo_speech.flac")
    mono = resample(wave.mean(0, keepdim=True), rate, 16000)
    n = int(seconds * 16000)
    reps = math.ceil(n / mono.shape[1])
    tiled = mono.repeat(1, reps)[:, :n]
    save_wav(path, tiled, 16000)
    return n


def _video_graph(object_info, audio: str, ckpt: str, prefix: str) -> dict:
    """Load Image + Load Audio + Model Loader → Memory Bank Loop → its *video* output → Save Video."""
    shipped = load_api("letstalk_long_video", object_info)
    save = copy.deepcopy(node_of(shipped, "SaveVideo"))
    save["inputs"].update(video=["4", 3], filename_prefix=prefix)
    loop = copy.deepcopy(node_of(shipped, "LetsTalkMemoryBankLoop"))
    loop["inputs"].update(model=["3", 0], portrait=["1", 0], audio=["2", 0], steps=1, seed=3, overlap=0,
                          decode_chunk=8, resume_folder="")
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "letstalk_demo_portrait.png"}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio}},
        "3": {"class_type": "LetsTalkModelLoader", "inputs": {"ckpt_name": ckpt, "weight_dtype": "fp32"}},
        "4": loop,
        "5": save,
    }


def test_long_run_at_512_streams_in_flat_memory(object_info, tmp_path):
    """On a server of its own, so the peaks measure these two runs and nothing left by other tests."""
    comfy = start_comfy(tmp_path / "host", ["letstalk"])
    try:
        _long_and_short_runs(comfy, object_info, tmp_path)
    finally:
        stop_comfy(comfy)


def _long_and_short_runs(comfy, object_info, tmp_path) -> None:
    _tiny_512_checkpoint(comfy.dirs["models"] / "letstalk" / "letstalk_test_tiny512.safetensors")
    results = {}
    for seconds in (SECONDS_SHORT, SECONDS_LONG):
        samples = _speech_wav(tmp_path / f"speech_{seconds}.wav", seconds)
        name = comfy.upload(tmp_path / f"speech_{seconds}.wav", f"letstalk_speech_{seconds}s.wav")
        api = _video_graph(object_info, name, "letstalk_test_tiny512.safetensors", f"letstalk/stream_{seconds}s")
        t0 = time.time()
        entry, peak = comfy.rss_peak(lambda: comfy.wait(comfy.queue(api), timeout=1800))
        took = time.time() - t0
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        videos = outputs_of(entry, "images")
        assert len(videos) == 1, entry["outputs"]
        path = comfy.dirs["output"] / videos[0]["subfolder"] / videos[0]["filename"]
        frames, w, h, has_audio = probe_mp4(path)
        want = math.ceil(samples * FPS_512 / 16000)
        assert (frames, w, h, has_audio) == (want, 512, 512, True)
        got_samples, rate = audio_samples(path)
        assert abs(got_samples / rate - want / FPS_512) < 0.05, (got_samples, rate)  # the sound covers the frames
        results[seconds] = (peak, took, frames)
        print(f"{seconds} s at 512²: {frames} frames, peak RSS {peak / 2**20:.0f} MiB, {took:.0f} s")
    short, long = results[SECONDS_SHORT][0], results[SECONDS_LONG][0]
    frames_gib = results[SECONDS_LONG][2] * 512 * 512 * 3 * 4 / 2**30
    print(f"peak RSS 3 min / 20 s = {long / short:.3f} (an IMAGE batch of the 3-minute run would hold {frames_gib:.1f} GiB)")
    assert long <= 1.15 * short, (long, short)
    temp = list(comfy.dirs["temp"].rglob("letstalk/letstalk_loop_*.mp4"))  # ComfyUI adds its own temp/ below
    assert temp, "the loop's streamed files live in ComfyUI's temp folder"


def test_images_and_video_outputs_give_the_same_frames(comfy, object_info, tmp_path):
    """With both outputs connected the IMAGE path (Create Video) and the streamed video hold the same frames."""
    _speech_wav(tmp_path / "speech_10.wav", 10)
    name = comfy.upload(tmp_path / "speech_10.wav", "letstalk_speech_10s.wav")
    api = _video_graph(object_info, name, "letstalk-demo.safetensors", "letstalk/images_and_video")
    node_of(api, "LetsTalkMemoryBankLoop")["inputs"]["steps"] = 1
    api["6"] = {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "audio": ["4", 1], "fps": ["4", 2]}}
    api["7"] = copy.deepcopy(api["5"])
    api["7"]["inputs"].update(video=["6", 0], filename_prefix="letstalk/images_path")
    entry = comfy.wait(comfy.queue(api), timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    files = outputs_of(entry, "images")
    assert len(files) == 2
    probes = [probe_mp4(comfy.dirs["output"] / f["subfolder"] / f["filename"]) for f in files]
    assert probes[0] == probes[1] and probes[0][0] == 250  # both paths: the same 250 frames with sound


def test_paste_back_streams_a_video(comfy, object_info):
    """Face Crop → loop video → Paste Back (video in, video out) → Save Video, into the wide photo."""
    shipped = load_api("letstalk_face_crop_paste_back", object_info)
    api = copy.deepcopy(shipped)
    loop_id = next(k for k, v in api.items() if v["class_type"] == "LetsTalkMemoryBankLoop")
    paste = node_of(api, "LetsTalkPasteBack")
    paste["inputs"].pop("frames", None)
    paste["inputs"]["video"] = [loop_id, 3]
    node_of(api, "LetsTalkMemoryBankLoop")["inputs"].update(steps=1, seed=5)
    paste_id = next(k for k, v in api.items() if v["class_type"] == "LetsTalkPasteBack")
    for k in [k for k, v in api.items() if v["class_type"] == "CreateVideo"]:
        del api[k]
    node_of(api, "SaveVideo")["inputs"].update(video=[paste_id, 1], filename_prefix="letstalk/paste_stream")
    entry = comfy.wait(comfy.queue(api), timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    v = outputs_of(entry, "images")[0]
    frames, w, h, has_audio = probe_mp4(comfy.dirs["output"] / v["subfolder"] / v["filename"])
    samples, rate = audio_samples(ASSETS / "letstalk_demo_speech.flac")
    assert (frames, w, h, has_audio) == (math.ceil(samples * 25 / rate), 384, 224, True)


async def _previews(comfy, prompt: dict) -> list[bytes]:
    """Queue ``prompt`` and collect the binary preview messages the server sends to this client."""
    import aiohttp

    client_id = f"letstalk-preview-{uuid.uuid4().hex[:6]}"
    previews = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(comfy.base.replace("http", "ws") + f"/ws?clientId={client_id}",
                                      max_msg_size=0) as ws:
            pid = await asyncio.to_thread(comfy.queue, prompt, client_id)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    previews.append(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    d = json.loads(msg.data)
                    if d["type"] in ("execution_success", "execution_error", "execution_interrupted") and \
                            d["data"].get("prompt_id") == pid:
                        break
    return previews


def _preview_size(message: bytes) -> tuple[int, int]:
    """The size of the JPEG in a binary preview message (event type, then image or metadata + image)."""
    from PIL import Image

    start = message.find(b"\xff\xd8")
    assert start >= 0, message[:64]
    return Image.open(pyio.BytesIO(message[start:])).size


def _short_loop(server, object_info, tmp_path, seed: int) -> dict:
    """The Memory Bank Loop (it sends decoded previews) with the demo model on 2 s of speech."""
    _speech_wav(tmp_path / "speech_2.wav", 2)
    name = server.upload(tmp_path / "speech_2.wav", "letstalk_speech_2s.wav")
    api = _video_graph(object_info, name, "letstalk-demo.safetensors", "letstalk/previews")
    node_of(api, "LetsTalkMemoryBankLoop")["inputs"].update(steps=2, seed=seed)
    # through the IMAGE output and Create Video: the graph every version of the pack runs
    api["6"] = {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "audio": ["4", 1], "fps": ["4", 2]}}
    api["5"]["inputs"]["video"] = ["6", 0]
    return api


def test_previews_have_the_frames_size(comfy, object_info, tmp_path):
    previews = asyncio.run(_previews(comfy, _short_loop(comfy, object_info, tmp_path, 4321)))
    assert previews, "no preview was sent with --preview-method auto"
    assert {_preview_size(p) for p in previews} == {(64, 64)}  # the demo model's frames, not 512 px


def test_two_copies_of_the_pack_start_and_serve(object_info, tmp_path):
    """Two folders with the pack in custom_nodes/ (a copy and a link, or the host tests' link next to
    the tree's): ComfyUI must start, serve the route once and run the pack. Started with
    ``--preview-method none``: then no preview is sent at all."""
    (tmp_path / "run").mkdir()
    server = start_comfy(tmp_path / "host", ["letstalk", "letstalk_second_copy"], ["--preview-method", "none"])
    try:
        log = server.log.read_text()
        assert "will never be executed" not in log and "IMPORT FAILED" not in log, log[-3000:]
        plan = server.get("/letstalk/plan?audio=letstalk_demo_speech.flac&ckpt=letstalk-demo.safetensors")
        assert plan["frames"] > 0 and plan["max_overlap"] == 7
        previews = asyncio.run(_previews(server, _short_loop(server, object_info, tmp_path / "run", 99)))
        assert previews == []
        assert server.alive()
    finally:
        stop_comfy(server)
