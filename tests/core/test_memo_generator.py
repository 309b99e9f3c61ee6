"""MEMO in the shared long-video loop and the CLI, on a tiny random MEMO installation in the published
layout (tests/core/memo_tiny.py): the per-video reference features equal the reference's per-clip
layout, exact frame counts with sound, bit-identical resume (with and without overlap), emotion choices,
face analysis, and clear errors."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from letstalk_core.cli import main
from letstalk_core.io.audio_file import save_wav
from letstalk_core.io.image import load_image
from letstalk_core.io.video import probe_video
from letstalk_core.loop import GenerationSettings
from tests.core.helpers import assert_same_video
from tests.core.memo_tiny import GOLDEN, NO_FACE, PORTRAIT, SIZE, make_tiny_memo

pytest.importorskip("onnxruntime", reason="face analysis needs onnxruntime (in the test extra)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("memo")
    paths = make_tiny_memo(root)
    t = torch.arange(int(2.2 * 16000)) / 16000
    speech = 0.3 * torch.sin(2 * math.pi * 180 * t) * (1 + torch.sin(2 * math.pi * 3 * t)) / 2
    save_wav(root / "speech.wav", speech[None], 16000)
    paths["speech"] = root / "speech.wav"
    return paths


@pytest.fixture(scope="module")
def gen(tiny):
    from letstalk_core.families.memo.generator import load_memo_generator

    return load_memo_generator(tiny["memo"], vae=tiny["vae"], speech_encoder=tiny["wav2vec2"], device="cpu",
                               dtype="fp32", size=SIZE)


@pytest.fixture(scope="module")
def prepared(gen, tiny):
    from letstalk_core.families.memo.generator import portrait_face_embedding
    from letstalk_core.io.audio_file import load_audio

    wave, rate = load_audio(tiny["speech"])
    image = load_image(PORTRAIT)
    face = portrait_face_embedding(image, tiny["memo"])
    assert face.shape == (512,) and face.abs().max() > 0
    return gen.prepare(image, wave, rate, face_embedding=face, emotions=3)


@torch.no_grad()
def test_reference_features_once_per_video_equal_the_per_clip_layout():
    """The reference runs the Reference Net on [ref, past…] × 2 every clip (contexts paired i mod 2); we run
    the reference image once and the past frames alone, with the same pairing."""
    from letstalk_core.families.memo.conditions import (
        initial_past_features,
        past_features,
        reference_features,
        reference_tokens,
    )
    from letstalk_core.families.memo.diffusion_net import split_reference_features
    from letstalk_core.families.memo.loading import open_memo_folder

    io = load_file(GOLDEN / "io.safetensors")
    folder = open_memo_folder(GOLDEN)
    net, proj = folder.load("reference_net"), folder.load("image_proj")
    face, uncond = proj(io["image_proj.in"]), proj(torch.zeros_like(io["image_proj.in"]))
    for clip in (0, 1):
        latents = io[f"clip{clip}.ref_latents"]
        tokens, past, p = split_reference_features(net(latents.repeat(2, 1, 1, 1), torch.cat([uncond, face]), 0), 2)
        once = reference_features(net, latents[:1], face, uncond)
        ours_tokens = reference_tokens(once)
        ours_past = initial_past_features(once, p) if clip == 0 else past_features(net, latents[1:], face, uncond)
        assert sorted(ours_tokens) == sorted(tokens) and sorted(ours_past) == sorted(past)
        assert max((ours_tokens[k] - tokens[k]).abs().max().item() for k in tokens) < 1e-4
        assert max((ours_past[k] - past[k]).abs().max().item() for k in past) < 1e-4
    assert torch.equal(io["clip0.ref_latents"][1:], io["clip0.ref_latents"][:1].expand(p, -1, -1, -1))


def _run(gen, prepared, settings, state=None, replay=None, latents_out=None):
    frames, states = [], []
    for clip, latents, st in gen.iter_clips(prepared, settings, state=state, replay=replay):
        frames.append(torch.cat(list(gen.decode_clip(latents, clip, 4))))
        states.append(st)
        if latents_out is not None:
            latents_out.append(latents.clone())
    return frames, states


@pytest.mark.parametrize("overlap", [0, 4])
def test_loop_makes_exact_frames_and_resumes_bit_identically(gen, prepared, overlap, tmp_path):
    """The saved state holds no memory (MEMO's is rebuilt from the finished clips' latents): resumed
    after clip 2 from the file and the two clips' latents, the rest equals the uninterrupted run."""
    from letstalk_core.loop import GenerationState

    settings = GenerationSettings(steps=2, seed=5, overlap=overlap)
    latents = []
    frames, states = _run(gen, prepared, settings, latents_out=latents)
    assert sum(f.shape[0] for f in frames) == prepared.num_frames == math.ceil(2.2 * 30)
    assert all(torch.isfinite(f).all() and f.shape[1:] == (3, SIZE, SIZE) for f in frames)
    saved = states[1].save(tmp_path / "state.safetensors")  # interrupted after clip 2, restored from the file
    loaded = GenerationState.load(saved)
    assert loaded.memory is None and loaded.threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="latents"):
        next(iter(_run(gen, prepared, settings, state=loaded)))
    resumed, _ = _run(gen, prepared, settings, state=loaded, replay=iter(latents[:2]))
    assert len(resumed) == len(frames) - 2
    assert all(torch.equal(a, b) for a, b in zip(frames[2:], resumed))
    per_clip = states[1].nbytes() + latents[1].numel() * 4
    assert states[1].nbytes() <= (4 * 4 * (SIZE // 8) ** 2 * 4 if overlap else 0)  # at most the crossfade tail
    print(f"\nMEMO resume data per clip (tiny model, overlap {overlap}): {per_clip / 1e6:.3f} MB")


def test_memory_changes_the_video_and_emotion_is_a_condition(gen, prepared):
    import dataclasses

    base = GenerationSettings(steps=2, seed=5)
    a, _ = _run(gen, prepared, base)
    b, _ = _run(gen, prepared, dataclasses.replace(base, use_memory=False))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])  # clip 0 is the same; the memory acts after it
    sad = dataclasses.replace(prepared, emotions=torch.full_like(prepared.emotions, 6))
    c, _ = _run(gen, sad, base)
    assert not torch.equal(a[0], c[0])


def test_auto_emotion_uses_the_label_track(gen, tiny):
    from letstalk_core.audio.emotion2vec import Emotion2vecConfig, Emotion2vecEncoder
    from letstalk_core.families.memo.generator import emotion_source
    from letstalk_core.io.audio_file import load_audio

    torch.manual_seed(0)
    cfg = Emotion2vecConfig(depth=1, model_depth=1, prenet_depth=0, num_heads=4, num_alibi_heads=4,
                            conv_pos_depth=1, conv_pos_groups=4, feature_encoder_spec=((32, 10, 5),) + ((32, 3, 2),) * 4
                            + ((32, 2, 2),) * 2)
    path = tiny["memo"].parent / "e2v.pt"
    torch.save({"model": Emotion2vecEncoder(cfg).state_dict()}, path)
    source = emotion_source("auto", path, gen)
    wave, rate = load_audio(tiny["speech"])
    labels = source(wave[0], 80)
    assert labels.shape == (80,) and labels.dtype == torch.long and 0 <= int(labels.min()) <= int(labels.max()) < 9
    with pytest.raises(ValueError, match="emotion2vec"):
        emotion_source("auto", None, gen)
    assert emotion_source("Happy", None, gen) == 3


def _cli(tiny, out, *extra, image=PORTRAIT):
    return main(["generate", "--checkpoint", str(tiny["memo"]), "--vae", str(tiny["vae"]), "--speech-encoder",
                 str(tiny["wav2vec2"]), "--image", str(image), "--audio", str(tiny["speech"]), "--out", str(out),
                 "--size", str(SIZE), "--steps", "1", "--device", "cpu", *extra])


def test_cli_writes_the_video_with_sound(tiny, tmp_path, capsys):
    out = tmp_path / "memo.mp4"
    assert _cli(tiny, out, "--emotion", "neutral") == 0
    info = probe_video(out)
    assert info.frame_count == math.ceil(2.2 * 30) and info.has_audio and abs(info.audio_seconds - 2.2) < 1e-3
    assert (info.width, info.height) == (SIZE, SIZE) and abs(info.fps - 30) < 1e-6
    err = capsys.readouterr().err
    assert "5 clips of 16 sharing 0" in err and "1 euler steps" in err


def test_cli_errors_say_what_to_do(tiny, tmp_path, capsys):
    assert _cli(tiny, tmp_path / "a.mp4") == 2  # emotion auto without an emotion2vec file
    err = capsys.readouterr().err
    assert "emotion2vec" in err and "models/audio_encoders" in err
    assert _cli(tiny, tmp_path / "b.mp4", "--emotion", "happy", image=NO_FACE) == 2
    err = capsys.readouterr().err
    assert "no face found" in err and "Face Crop" in err
    assert _cli(tiny, tmp_path / "c.mp4", "--emotion", "happy", "--allow-no-face", image=NO_FACE) == 0
    assert main(["generate", "--checkpoint", str(tiny["memo"]), "--speech-encoder", str(tiny["wav2vec2"]),
                 "--image", str(PORTRAIT), "--audio", str(tiny["speech"]), "--out", str(tmp_path / "d.mp4"),
                 "--emotion", "happy"]) == 2
    assert "sd-vae-ft-mse" in capsys.readouterr().err
    assert _cli(tiny, tmp_path / "e.mp4", "--emotion", "happy", "--sampler", "ddim") == 2
    assert "Euler" in capsys.readouterr().err


def test_cli_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    """Interrupt during clip 3 (Ctrl-C in its memory update), run the same command again: the video
    equals the uninterrupted one frame for frame."""
    import letstalk_core.families.memo.generator as g

    full = tmp_path / "full.mp4"
    assert _cli(tiny, full, "--emotion", "happy") == 0
    original = g.MemoGenerator.remember
    calls = {"n": 0}

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    g.MemoGenerator.remember = interrupting
    try:
        assert _cli(tiny, tmp_path / "resumed.mp4", "--emotion", "happy", "--resume-dir", str(tmp_path / "run")) == 130
    finally:
        g.MemoGenerator.remember = original
    assert (tmp_path / "run" / "clip_00001.npy").is_file() and not (tmp_path / "run" / "clip_00002.npy").exists()
    assert _cli(tiny, tmp_path / "resumed.mp4", "--emotion", "happy", "--resume-dir", str(tmp_path / "run")) == 0
    assert_same_video(full, tmp_path / "resumed.mp4")
    assert not (tmp_path / "run").exists()


def test_info_describes_a_memo_folder(tiny, capsys):
    import json

    assert main(["info", str(tiny["memo"])]) == 0
    text = capsys.readouterr().out
    assert "MEMO folder" in text and "diffusion_net" in text and "scrfd_10g_bnkps.onnx present" in text
    assert "16 past frames" in text and "20 euler" in text
    assert main(["info", str(tiny["memo"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["parts"]) == {"reference_net", "diffusion_net", "image_proj", "audio_proj",
                                  "audio_emotion_classifier"}
    assert info["parts"]["image_proj"]["parameters"] > 0 and info["recipe"]["steps"] == 20
    assert info["machine"]["device"] and info["machine"]["dtype"] in ("fp32", "bf16")


def test_info_prints_the_memory_plan_of_each_tier(tiny, capsys):
    import json

    assert main(["info", str(tiny["memo"]), "--size", "128"]) == 0
    text = capsys.readouterr().out
    assert "memory plans at 128²" in text and all(f"tier {t}" in text for t in ("24gb", "16gb", "12gb"))
    assert main(["info", str(tiny["memo"]), "--size", "128", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)["memory_plans"]
    cuda = plans["cuda_bf16"]
    assert cuda["24gb"]["peak"] >= cuda["16gb"]["peak"] >= cuda["12gb"]["peak"] > 0
    assert plans["cpu"]["available_bytes"] > 0


def test_cli_refuses_a_run_that_does_not_fit_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    import letstalk_core.families.memo.generator as g
    import letstalk_core.families.memo.memory_plan as mp

    monkeypatch.setattr(mp, "free_memory", lambda device: 1 << 20)  # 1 MiB free
    monkeypatch.setattr(g.MemoGenerator, "prepare", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "x.mp4"
    assert _cli(tiny, out, "--emotion", "happy") == 2
    err = capsys.readouterr().err
    assert "needs" in err and "available RAM" in err and "memory tier" in err
    assert not out.exists()
    monkeypatch.undo()
    assert _cli(tiny, out, "--emotion", "happy", "--memory-tier", "12gb", "--state-dtype", "fp32") == 0
    assert "memory tier 12gb" in capsys.readouterr().err
