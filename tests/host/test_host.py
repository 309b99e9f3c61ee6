"""The pack inside a real headless ComfyUI (see conftest.py; skipped without COMFYUI_PATH).

Checks what a user meets: every node and input documented in /object_info, every shipped workflow
running as shipped through /prompt (the long one's mp4 has sound and exactly ceil(seconds × fps)
frames), Cancel honoured within one sampling step with the next run fine, and bad inputs ending as a
clear node error in /history while the server keeps serving.
"""
from __future__ import annotations

import asyncio
import copy
import json
import math
import time
import wave
from pathlib import Path

import pytest

from tests.host.conftest import ASSETS, REPO
from tests.host.ui_to_api import ui_to_api

NODE_IDS = ["LetsTalkModelLoader", "LetsTalkDCAELoader", "LetsTalkSpeechEncoderLoader", "LetsTalkAudioEncoder",
            "LetsTalkDCAEEncode", "LetsTalkDCAEDecode", "LetsTalkSampler", "LetsTalkMemoryBankLoop",
            "LetsTalkFaceCrop", "LetsTalkPasteBack", "LetsTalkConversationAudio"]
WORKFLOWS = sorted((REPO / "workflows").glob("letstalk_*.json"))  # memo_*.json need MEMO files: tests/host/test_memo.py
SPEECH = ASSETS / "letstalk_demo_speech.flac"


def load_api(name: str, object_info: dict) -> dict:
    return ui_to_api(json.loads((REPO / "workflows" / f"{name}.json").read_text()), object_info)


def node_of(api: dict, class_type: str) -> dict:
    return next(n for n in api.values() if n["class_type"] == class_type)


def error_of(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", f"expected a node error, got {entry['status']}"
    return next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")


def outputs_of(entry: dict, kind: str) -> list[dict]:
    return [f for out in entry["outputs"].values() for f in out.get(kind, [])]


def saved_video(comfy, entry: dict) -> Path:
    """The one video a successful prompt saved (Save Video reports its file under "images")."""
    assert entry["status"]["status_str"] == "success", str(entry["status"])[:3000]
    v = outputs_of(entry, "images")
    assert len(v) == 1, entry["outputs"]
    return comfy.dirs["output"] / v[0]["subfolder"] / v[0]["filename"]


def audio_samples(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as c:
        n = sum(f.samples for f in c.decode(audio=0))
        return n, c.streams.audio[0].rate


def probe_mp4(path: Path) -> tuple[int, int, int, bool]:
    """(frames, width, height, has audio) of a video file, frames counted by decoding."""
    import av

    with av.open(str(path)) as c:
        has_audio = len(c.streams.audio) > 0
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        return frames, v.codec_context.width, v.codec_context.height, has_audio


def test_every_node_is_listed_with_tooltips(object_info):
    missing = [n for n in NODE_IDS if n not in object_info]
    assert not missing, f"nodes missing from /object_info: {missing}"
    for nid in NODE_IDS:
        info = object_info[nid]
        assert info["category"].startswith("LetsTalk"), nid
        assert info["description"], nid
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        assert specs, nid
        for name, spec in specs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{nid}.{name} has no tooltip"
        assert all(info.get("output_tooltips") or []), f"{nid} has outputs without tooltips"
    assert "letstalk-demo.safetensors" in object_info["LetsTalkModelLoader"]["input"]["required"]["ckpt_name"][1]["options"]


def test_workflows_are_listed_as_templates(comfy):
    templates = comfy.get("/workflow_templates")
    assert sorted(templates.get(comfy.pack_name, [])) == sorted(p.stem for p in (REPO / "workflows").glob("*.json"))  # under the folder's name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_as_shipped(comfy, object_info, path):
    api = ui_to_api(json.loads(path.read_text()), object_info)
    t0 = time.time()
    entry = comfy.wait(comfy.queue(api), timeout=1200)
    took = time.time() - t0
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    samples, rate = audio_samples(SPEECH)
    want = math.ceil(samples * 25 / rate)  # the demo model runs at 25 fps
    if path.stem == "letstalk_single_clip":
        images = outputs_of(entry, "images")
        assert len(images) == 16, images  # one clip of the demo model
    else:
        videos = outputs_of(entry, "images")  # SaveVideo reports its file under "images"
        assert len(videos) == 1
        v = videos[0]
        frames, w, h, has_audio = probe_mp4(comfy.dirs["output"] / v["subfolder"] / v["filename"])
        assert has_audio
        assert frames == want, f"{frames} frames for {samples / rate:.3f} s at 25 fps, want {want}"
        assert (w, h) == ((384, 224) if "face" in path.stem else (64, 64))
    print(f"{path.stem}: ok in {took:.1f} s")


async def _run_and_cancel(comfy, prompt: dict, cancel_after: int) -> dict:
    """Queue ``prompt``, POST /interrupt after ``cancel_after`` sampling steps (counted from the pack's
    per-step websocket events), and time how long the run goes on."""
    import aiohttp

    client_id = "letstalk-cancel-test"
    ws_url = comfy.base.replace("http", "ws") + f"/ws?clientId={client_id}"
    stamps, after, result = [], 0, {}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:
            pid = await asyncio.to_thread(comfy.queue, prompt, client_id)
            t_int = None
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                d = json.loads(msg.data)
                if d["type"] == "letstalk.progress" and d["data"].get("steps"):
                    stamps.append(time.perf_counter())
                    if t_int is not None:
                        after += 1
                    elif len(stamps) >= cancel_after:
                        t_int = time.perf_counter()
                        await asyncio.to_thread(comfy.post, "/interrupt", None)
                elif d["type"] in ("execution_interrupted", "execution_error", "execution_success") and \
                        d["data"].get("prompt_id") == pid:
                    result = {"event": d["type"], "stop_s": time.perf_counter() - t_int if t_int else None,
                              "steps_after": after, "step_s": (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)}
                    break
    return result


def test_cancel_stops_within_one_step_and_next_run_succeeds(comfy, object_info):
    api = load_api("letstalk_long_video", object_info)
    loop = node_of(api, "LetsTalkMemoryBankLoop")
    loop["inputs"].update(steps=40, seed=12345)  # long enough to cancel mid-clip
    res = asyncio.run(_run_and_cancel(comfy, api, cancel_after=25))
    print(f"cancel: {res}")
    assert res["event"] == "execution_interrupted", res
    assert res["steps_after"] <= 1, res
    assert res["stop_s"] <= res["step_s"] + 1.0, res
    assert comfy.alive()
    single = load_api("letstalk_single_clip", object_info)
    node_of(single, "LetsTalkSampler")["inputs"]["seed"] = 777
    entry = comfy.wait(comfy.queue(single))
    assert entry["status"]["status_str"] == "success", entry["status"]


def _write_wav(path: Path, samples: int, rate: int = 16000, value: int = 0) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(int(value).to_bytes(2, "little", signed=True) * samples)
    return path


def _bad_run(comfy, object_info, mutate) -> dict:
    api = load_api("letstalk_long_video", object_info)
    mutate(api)
    entry = comfy.wait(comfy.queue(api), timeout=300)
    err = error_of(entry)
    assert comfy.alive(), "the server stopped serving after a bad input"
    return err


def test_missing_model_file_is_a_clear_node_error(comfy, object_info):
    err = _bad_run(comfy, object_info,
                   lambda api: node_of(api, "LetsTalkModelLoader")["inputs"].update(ckpt_name="gone.safetensors"))
    assert err["node_type"] == "LetsTalkModelLoader"
    assert "'gone.safetensors' was not found" in err["exception_message"]
    assert "letstalk" in err["exception_message"]  # says which folder to put it in


def test_silent_audio_runs_as_a_listening_clip_with_a_warning(comfy, object_info, tmp_path):
    """A silent track is legitimate (a listening face), as in the CLI: the loop runs, and both the plan
    (shown in the web panel before the run) and the node's result carry the warning."""
    name = comfy.upload(_write_wav(tmp_path / "letstalk_silence.wav", 16000))  # 1 s at 16 kHz
    plan = comfy.get(f"/letstalk/plan?audio={name}&ckpt=letstalk-demo.safetensors")
    assert plan["frames"] == 25 and any("silent" in w for w in plan["warnings"]), plan
    api = load_api("letstalk_long_video", object_info)
    node_of(api, "LoadAudio")["inputs"].update(audio=name)
    entry = comfy.wait(comfy.queue(api), timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    texts = [t for out in entry["outputs"].values() for t in out.get("letstalk", [])]
    assert any("25 frames" in t and "silent" in t for t in texts), texts


def test_zero_length_audio_is_a_clear_node_error(comfy, object_info, tmp_path):
    name = comfy.upload(_write_wav(tmp_path / "letstalk_empty.wav", 0))
    err = _bad_run(comfy, object_info, lambda api: node_of(api, "LoadAudio")["inputs"].update(audio=name))
    print(f"zero-length audio: {err['node_type']}: {err['exception_message']}")
    assert err["node_type"] in ("LoadAudio", "LetsTalkMemoryBankLoop")
    assert any(w in err["exception_message"].lower() for w in ("empty", "0 samples", "no audio", "no samples"))
    # ComfyUI's Load Audio refuses a file with no samples itself; a few samples reach our node:
    name = comfy.upload(_write_wav(tmp_path / "letstalk_blip.wav", 5, value=8000))
    err = _bad_run(comfy, object_info, lambda api: node_of(api, "LoadAudio")["inputs"].update(audio=name))
    print(f"5-sample audio: {err['node_type']}: {err['exception_message']}")
    assert err["node_type"] == "LetsTalkMemoryBankLoop" and "too short" in err["exception_message"]


def test_huge_image_is_a_clear_node_error(comfy, object_info):
    def huge(api):
        api["90"] = {"class_type": "EmptyImage", "inputs": {"width": 9000, "height": 9000, "batch_size": 1, "color": 0}}
        node_of(api, "LetsTalkMemoryBankLoop")["inputs"]["portrait"] = ["90", 0]

    err = _bad_run(comfy, object_info, huge)
    assert err["node_type"] == "LetsTalkMemoryBankLoop"
    assert "9000×9000" in err["exception_message"] and "8192" in err["exception_message"]


def test_resume_folder_resumes_after_an_interrupted_run(comfy, object_info):
    api = load_api("letstalk_long_video", object_info)
    loop = node_of(api, "LetsTalkMemoryBankLoop")
    loop["inputs"].update(steps=4, seed=4242, resume_folder="letstalk/resume_test")
    res = asyncio.run(_run_and_cancel(comfy, copy.deepcopy(api), cancel_after=4 * 10 + 2))  # inside clip 11
    assert res["event"] == "execution_interrupted", res
    folder = comfy.dirs["output"] / "letstalk" / "resume_test"
    stored = sorted(folder.glob("clip_*.npy"))
    assert len(stored) == 10, stored
    t0 = time.time()
    entry = comfy.wait(comfy.queue(api))
    assert entry["status"]["status_str"] == "success", entry["status"]
    plan = comfy.get(f"/letstalk/plan?audio={SPEECH.name}&ckpt=letstalk-demo.safetensors&overlap={loop['inputs']['overlap']}")
    assert len(sorted(folder.glob("clip_*.npy"))) == plan["clips"]  # every clip of the plan, none more
    print(f"resumed run finished in {time.time() - t0:.1f} s")


def test_plan_route_matches_the_audio(comfy):
    plan = comfy.get("/letstalk/plan?audio=letstalk_demo_speech.flac&ckpt=letstalk-demo.safetensors")
    samples, rate = audio_samples(SPEECH)
    assert plan["frames"] == math.ceil(samples * 25 / rate)
    assert plan["clips"] == math.ceil(plan["frames"] / 16) and plan["overlap"] == 0
    assert abs(plan["seconds"] - samples / rate) < 1e-9
    shared = comfy.get("/letstalk/plan?audio=letstalk_demo_speech.flac&ckpt=letstalk-demo.safetensors&overlap=2")
    assert shared["clips"] == 1 + math.ceil((plan["frames"] - 16) / 14) and shared["overlap"] == 2
    bad = comfy.get("/letstalk/plan?audio=letstalk_demo_speech.flac&ckpt=letstalk-demo.safetensors&overlap=8", expect=400)
    assert "from 0 to 7" in bad["error"], bad


def test_loop_defaults_are_the_core_recommendation(object_info):
    from letstalk_core.families.letstalk.generator import RECOMMENDED_MEMORY_ANCHOR
    from letstalk_core.loop import recommended_overlap

    optional = object_info["LetsTalkMemoryBankLoop"]["input"]["optional"] | object_info["LetsTalkMemoryBankLoop"]["input"]["required"]
    assert optional["overlap"][1]["default"] == recommended_overlap(16)  # the demo model's clips
    assert optional["memory_anchor"][1]["default"] == RECOMMENDED_MEMORY_ANCHOR


def test_nothing_written_outside_output_and_temp(comfy):
    """After all the runs above: no new files in the pack folder or the input folder."""
    import subprocess

    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                            capture_output=True, text=True).stdout.splitlines()
    new = [s for s in status if s.startswith("??") and "__pycache__" not in s and not s[3:].startswith("outputs/")]
    assert not new, f"files appeared in the pack folder: {new}"
    inputs = {p.name for p in comfy.dirs["input"].iterdir() if p.is_file()}  # ComfyUI makes its own folders (3d/)
    assert inputs <= {p.name for p in ASSETS.iterdir()} | {"letstalk_silence.wav", "letstalk_empty.wav",
                                                                  "letstalk_blip.wav"}, inputs


def test_dcae_loader_file_and_batch_round_trip(comfy):
    """A DC-AE file in models/vae (the demo model's own autoencoder, saved by the core) loads through
    LetsTalk DC-AE Loader, and a batch of 3 RGB images goes through DC-AE Encode → Decode."""
    from letstalk_core.autoencoder.checkpoint import save_dcae
    from letstalk_core.families.letstalk.checkpoint import read_checkpoint
    from letstalk_core.families.letstalk.loading import bundled_dcae

    config, groups, _ = read_checkpoint(REPO / "letstalk_core" / "models" / "letstalk-demo.safetensors")
    save_dcae(bundled_dcae(config, groups["dcae"]), config.dcae, comfy.dirs["models"] / "vae" / "letstalk_test_dcae.safetensors")
    api = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 3, "color": 0x8040C0}},
        "2": {"class_type": "LetsTalkDCAELoader", "inputs": {"dcae_name": "letstalk_test_dcae.safetensors"}},
        "3": {"class_type": "LetsTalkDCAEEncode", "inputs": {"dcae": ["2", 0], "image": ["1", 0], "size": 0, "chunk": 2}},
        "4": {"class_type": "LetsTalkDCAEDecode", "inputs": {"dcae": ["2", 0], "latent": ["3", 0], "chunk": 2}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "letstalk/dcae_round_trip"}},
    }
    entry = comfy.wait(comfy.queue(api))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    images = outputs_of(entry, "images")
    assert len(images) == 3
    from PIL import Image

    img = Image.open(comfy.dirs["output"] / images[0]["subfolder"] / images[0]["filename"])
    assert img.size == (96, 64)


def test_native_audio_encoder_equals_the_packs_speech_encoder_loader(comfy, tmp_path):
    """ComfyUI's own Load Audio Encoder output is accepted as the speech encoder: its wav2vec2 weights
    go through the LetsTalk/Hallo feature recipe, so a clip sampled with it equals one sampled with
    LetsTalk Speech Encoder Loader on the same file (random wav2vec2-base weights in the HF layout,
    positional conv as weight-norm parametrisation, and an untrained wav2vec2-conditioned tiny model)."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from letstalk_core.audio.features import SpeechEncoderConfig
    from letstalk_core.audio.wav2vec2 import WAV2VEC2_PRESETS, Wav2Vec2Encoder
    from letstalk_core.autoencoder.dc_ae import DCAE
    from letstalk_core.families.letstalk.checkpoint import save_checkpoint
    from letstalk_core.families.letstalk.config import get_preset
    from letstalk_core.families.letstalk.transformer import LetsTalkTransformer

    torch.manual_seed(0)
    w2v = Wav2Vec2Encoder(WAV2VEC2_PRESETS["wav2vec2-base"])
    sd = {k: v.detach().clone().half() for k, v in w2v.state_dict().items()}
    weight = sd.pop("encoder.pos_conv_embed.conv.weight").float()
    g = weight.norm(dim=(0, 1), keepdim=True)
    sd["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = g.half()
    sd["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = weight.half()
    sd["masked_spec_embed"] = torch.zeros(768, dtype=torch.float16)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(comfy.dirs["models"] / "audio_encoders" / "letstalk_test_w2v.safetensors"))
    other = {k: (v + 0.05 * torch.randn_like(v.float()).half()) if v.ndim > 1 else v for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in other.items()}, str(comfy.dirs["models"] / "audio_encoders" / "letstalk_test_w2v_other.safetensors"))

    tiny = get_preset("tiny")
    cfg = dataclasses.replace(tiny, speech_encoder=SpeechEncoderConfig(kind="wav2vec2"), audio_projector=None)
    model = LetsTalkTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(comfy.dirs["models"] / "letstalk" / "letstalk_test_w2v_tiny.safetensors", cfg, model, dcae=DCAE(cfg.dcae))

    def graph(speech_node: dict, prefix: str) -> dict:
        return {
            "1": {"class_type": "LoadImage", "inputs": {"image": "letstalk_demo_portrait.png"}},
            "2": {"class_type": "LoadAudio", "inputs": {"audio": "letstalk_demo_speech.flac"}},
            "3": {"class_type": "TrimAudioDuration", "inputs": {"audio": ["2", 0], "start_index": 1.0, "duration": 1.5}},
            "4": {"class_type": "LetsTalkModelLoader", "inputs": {"ckpt_name": "letstalk_test_w2v_tiny.safetensors",
                                                                    "weight_dtype": "fp32"}},
            "5": speech_node,
            "6": {"class_type": "LetsTalkDCAEEncode", "inputs": {"dcae": ["4", 1], "image": ["1", 0], "size": 32, "chunk": 8}},
            "7": {"class_type": "LetsTalkAudioEncoder", "inputs": {"model": ["4", 0], "audio": ["3", 0], "fps": 0.0,
                                                                     "speech_encoder": ["5", 0]}},
            "8": {"class_type": "LetsTalkSampler", "inputs": {"model": ["4", 0], "portrait": ["6", 0], "audio_features": ["7", 0],
                                                                "clip_index": 1, "sampler": "auto", "steps": 3, "seed": 5,
                                                                "portrait_guidance": 1.0, "audio_guidance": 1.0}},
            "9": {"class_type": "LetsTalkDCAEDecode", "inputs": {"dcae": ["4", 1], "latent": ["8", 0], "chunk": 8}},
            "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": prefix}},
        }

    import numpy as np
    from PIL import Image

    frames = {}
    for prefix, node in (("letstalk/w2v_native", {"class_type": "AudioEncoderLoader",
                                                  "inputs": {"audio_encoder_name": "letstalk_test_w2v.safetensors"}}),
                         ("letstalk/w2v_pack", {"class_type": "LetsTalkSpeechEncoderLoader",
                                                "inputs": {"encoder_name": "letstalk_test_w2v.safetensors"}}),
                         ("letstalk/w2v_other", {"class_type": "LetsTalkSpeechEncoderLoader",
                                                 "inputs": {"encoder_name": "letstalk_test_w2v_other.safetensors"}})):
        entry = comfy.wait(comfy.queue(graph(node, prefix)))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        images = outputs_of(entry, "images")
        assert len(images) == 8  # clip 1 of the tiny model (8-frame clips)
        frames[prefix] = np.stack([np.asarray(Image.open(comfy.dirs["output"] / i["subfolder"] / i["filename"]))
                                   for i in images]).astype(np.int16)
    diff = np.abs(frames["letstalk/w2v_native"] - frames["letstalk/w2v_pack"]).max()
    assert diff <= 1, f"native audio encoder and the pack's loader disagree by {diff} levels"
    # ...while other speech-encoder weights change the frames, so the comparison can fail
    moved = np.abs(frames["letstalk/w2v_other"] - frames["letstalk/w2v_pack"]).max()
    print(f"native vs pack loader: max {diff} levels; other weights: max {moved} levels")
    assert moved > 4


def test_a_prompt_that_times_out_is_cancelled(comfy, object_info):
    """Comfy.wait gives up after its timeout and takes the prompt off the server, so one slow test
    does not block the ones after it."""
    api = load_api("letstalk_long_video", object_info)
    node_of(api, "LetsTalkMemoryBankLoop")["inputs"].update(steps=40, seed=2468)
    pid = comfy.queue(api)
    with pytest.raises(AssertionError, match="cancelled"):
        comfy.wait(pid, timeout=3)
    queue = comfy.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"], queue
    entry = comfy.get(f"/history/{pid}").get(pid)
    assert entry is None or entry["status"]["status_str"] != "success"
