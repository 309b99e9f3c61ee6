"""MEMO's networks held to the authors' code (github.com/memoavatar/memo a5aee30) on golden fixtures.

``tests/fixtures/memo/golden/`` is a tiny random MEMO model in the published folder layout (every block
type present) plus inputs and the reference code's outputs, made by ``scripts/make_memo_fixtures.py``.
Each test loads the folder with our loader and compares within 1e-4 (fp32).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from letstalk_core.diffusion.samplers import sample_euler
from letstalk_core.families.memo.diffusion_net import DiffusionNet, split_reference_features
from letstalk_core.families.memo.loading import open_memo_folder
from letstalk_core.families.memo.sampling import guided_conditions, guided_velocity, memo_schedule
from letstalk_core.memory.linear_state import LinearAttentionMemory

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "memo" / "golden"
TOL = 1e-4


@pytest.fixture(scope="module")
def io():
    return load_file(GOLDEN / "io.safetensors")


@pytest.fixture(scope="module")
def memo():
    torch.manual_seed(0)
    folder = open_memo_folder(GOLDEN)
    return folder, {name: folder.load(name) for name in folder.parts}


def _max_err(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _context(nets, io):
    face = nets["image_proj"](io["image_proj.in"])
    uncond = nets["image_proj"](torch.zeros_like(io["image_proj.in"]))
    return face, uncond


@torch.no_grad()
def test_small_parts_equal_reference(memo, io):
    _, nets = memo
    face, uncond = _context(nets, io)
    assert _max_err(face, io["image_proj.out"]) < TOL
    assert _max_err(uncond, io["image_proj.out_uncond"]) < TOL
    assert _max_err(nets["audio_proj"](io["audio_proj.in"]), io["audio_proj.out"]) < TOL
    probs = nets["audio_emotion_classifier"](io["emotion.in"])
    assert _max_err(probs, io["emotion.out"]) < 1e-6


@torch.no_grad()
def test_reference_net_equals_reference(memo, io):
    _, nets = memo
    face, uncond = _context(nets, io)
    feats = nets["reference_net"](io["clip0.ref_latents"].repeat(2, 1, 1, 1), torch.cat([uncond, face]), 0)
    keys = sorted(k[len("refnet."):] for k in io if k.startswith("refnet."))
    assert sorted(feats) == keys and len(keys) >= 8
    errs = {k: _max_err(feats[k], io[f"refnet.{k}"]) for k in keys}
    assert max(errs.values()) < TOL, errs


def test_sampling_grid_equals_diffusers(io):
    from letstalk_core.diffusion.flow import sampling_sigmas
    sig = sampling_sigmas(20, grid="diffusers")
    assert torch.equal(sig.float(), io["scheduler.sigmas20"].float())
    assert torch.equal((sig[:-1] * 1000).float(), io["scheduler.timesteps20"].float())


def _clip_inputs(nets, io, clip, frames, memory):
    face, uncond = _context(nets, io)
    feats = nets["reference_net"](io[f"clip{clip}.ref_latents"].repeat(2, 1, 1, 1), torch.cat([uncond, face]), 0)
    ref_tokens, past, p = split_reference_features(feats, 2)
    nets["diffusion_net"].update_memory(memory, past, p, new_video=clip == 0)
    audio = io["audio_proj.out"][:, clip * frames:(clip + 1) * frames]
    return guided_conditions(reference_tokens=ref_tokens, face_tokens=face, uncond_face_tokens=uncond,
                             audio_tokens=audio, emotion=int(io["emotions"][clip]))


def _pred(net, cond, memory, x, t):
    return net(torch.cat([x, x]), t.expand(2), reference_tokens=cond.reference_tokens, face_tokens=cond.face_tokens,
               audio_tokens=cond.audio_tokens, emotion=cond.emotion, memory=memory, uncond=cond.uncond)


@torch.no_grad()
def test_two_clips_through_the_memory_equal_reference(memo, io):
    """Every denoising step of two consecutive clips (clip 0: new video; clip 1: the memory decayed and
    updated once from new past frames), and the Euler sampler's result for each clip."""
    _, nets = memo
    net = nets["diffusion_net"]
    frames = 4
    noise = io["noise"]
    memory = LinearAttentionMemory()
    errs = {}
    for clip in range(2):
        cond = _clip_inputs(nets, io, clip, frames, memory)
        assert memory.clips == clip + 1
        x0 = noise[:, :, clip * frames:(clip + 1) * frames]
        x = x0
        for i in range(2):
            t = io[f"clip{clip}.step{i}.timestep"]
            errs[f"clip{clip}.step{i}.pred"] = _max_err(_pred(net, cond, memory, x, t), io[f"clip{clip}.step{i}.pred"])
            x = io[f"clip{clip}.step{i}.latents"]  # the reference's latents feed the next step
        out = sample_euler(guided_velocity(net, cond, memory), x0.clone(), memo_schedule(), steps=2)
        errs[f"clip{clip}.sampled"] = _max_err(out, io[f"clip{clip}.step1.latents"])
    assert max(errs.values()) < TOL, errs


@torch.no_grad()
def test_groupnorm_over_all_frames_equals_reference(memo, io):
    """``use_inflated_groupnorm: false`` normalises each video over all its frames, as the reference."""
    folder, nets = memo
    from dataclasses import replace
    cfg = replace(folder.diffusion_config, use_inflated_groupnorm=False)
    with torch.device("meta"):
        other = DiffusionNet(cfg)
    other.load_state_dict(nets["diffusion_net"].state_dict(), assign=True)
    memory = LinearAttentionMemory()
    cond = _clip_inputs({**nets, "diffusion_net": other}, io, 0, 4, memory)
    pred = _pred(other, cond, memory, io["noise"][:, :, :4], io["clip0.step0.timestep"])
    assert _max_err(pred, io["clip0.step0.pred_not_inflated"]) < TOL
    inflated = _pred(nets["diffusion_net"], cond, memory, io["noise"][:, :, :4], io["clip0.step0.timestep"])
    assert _max_err(inflated, pred) > 1e-3  # the two norms really differ on this input


@torch.no_grad()
def test_memory_state_saves_and_restores_exactly(memo, io, tmp_path):
    """A resumed run equals an uninterrupted one bit for bit: the state round-trips through a file."""
    _, nets = memo
    net = nets["diffusion_net"]
    memory = LinearAttentionMemory()
    _clip_inputs(nets, io, 0, 4, memory)
    save_file(memory.state_dict(), tmp_path / "memory.safetensors")
    restored = LinearAttentionMemory()
    restored.load_state_dict(load_file(tmp_path / "memory.safetensors"))
    assert restored.clips == 1 and restored.nbytes() == memory.nbytes() > 0
    cond_a = _clip_inputs(nets, io, 1, 4, memory)
    cond_b = _clip_inputs(nets, io, 1, 4, restored)
    x, t = io["noise"][:, :, 4:8], io["clip1.step0.timestep"]
    assert torch.equal(_pred(net, cond_a, memory, x, t), _pred(net, cond_b, restored, x, t))
    for name, (kv, z) in memory.layers.items():
        assert torch.equal(kv, restored.layers[name][0]) and torch.equal(z, restored.layers[name][1])


@torch.no_grad()
def test_memory_decays_and_updates_once_per_clip(memo, io):
    """The state after clip 1 is γ^P·state(clip 0) + the new past frames' contribution, and reading it
    during the steps does not change it."""
    _, nets = memo
    a, b = LinearAttentionMemory(), LinearAttentionMemory()
    _clip_inputs(nets, io, 0, 4, a)
    first = {k: (kv.clone(), z.clone()) for k, (kv, z) in a.layers.items()}
    cond = _clip_inputs(nets, io, 1, 4, a)
    _clip_inputs(nets, io, 1, 4, b)  # clip 1's past frames alone (a new video)
    for name, (kv, z) in a.layers.items():
        torch.testing.assert_close(kv, 0.9 ** 4 * first[name][0] + b.layers[name][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z, 0.9 ** 4 * first[name][1] + b.layers[name][1], rtol=1e-5, atol=1e-6)
    before = {k: kv.clone() for k, (kv, _) in a.layers.items()}
    _pred(nets["diffusion_net"], cond, a, io["noise"][:, :, 4:8], io["clip1.step0.timestep"])
    assert all(torch.equal(before[k], a.layers[k][0]) for k in before)
