"""Multimodal guidance: the batched forward equals separately evaluated branches, and the
condition-dropout hook drops at the asked rates."""
import pytest
import torch

from letstalk_core.diffusion.guidance import GuidanceScales, combine_guidance, condition_dropout, guidance_branches
from letstalk_core.families.letstalk.config import get_preset
from letstalk_core.families.letstalk.guidance import guided_model_fn
from letstalk_core.families.letstalk.transformer import LetsTalkTransformer


def test_branch_selection():
    assert guidance_branches(GuidanceScales()) == [(True, True)]
    assert guidance_branches(GuidanceScales(audio=3.0)) == [(True, False), (True, True)]
    assert len(guidance_branches(GuidanceScales(portrait=2.0, audio=1.0))) == 3
    with pytest.raises(ValueError, match="audio guidance scale"):
        GuidanceScales(audio=float("nan"))


def _tiny_inputs():
    """A perturbed tiny transformer (so no branch is trivially equal) and one set of its inputs."""
    cfg = get_preset("tiny")
    model = LetsTalkTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    c, (h, w), frames = cfg.dit.in_channels, cfg.latent_size, cfg.video.clip_frames
    ap = cfg.audio_projector
    x, t = torch.randn(1, c, frames, h, w), torch.tensor([300.0])
    portrait, memory = torch.randn(1, c, h, w), torch.randn(1, c, 2, h, w)
    with torch.no_grad():
        tokens = model.project_audio(torch.randn(1, frames, ap.window, ap.layers, ap.channels))
    return model, c, x, t, portrait, memory, tokens


@pytest.mark.parametrize("scales", [GuidanceScales(), GuidanceScales(audio=3.5), GuidanceScales(portrait=2.0, audio=4.0)])
def test_batched_guidance_equals_separate_branches(scales):
    model, c, x, t, portrait, memory, tokens = _tiny_inputs()
    with torch.no_grad():
        fn = guided_model_fn(model, portrait=portrait, audio_tokens=tokens, memory=memory, scales=scales, eps_channels=c)
        out = fn(x, t)
        outs = [model(x, t, portrait=portrait, audio_tokens=tokens, memory=memory,
                      portrait_keep=torch.tensor([p]), audio_keep=torch.tensor([a]))
                for p, a in [(False, False), (True, False), (True, True)]]
    e0, ep, epa = (o[:, :c] for o in outs)
    expected = e0 + scales.portrait * (ep - e0) + scales.audio * (epa - ep)
    assert (out[:, :c] - expected).abs().max() < 1e-5
    assert (out[:, c:] - outs[2][:, c:]).abs().max() < 1e-5  # variance from the full-condition branch
    assert combine_guidance([epa], scales) is epa


def test_condition_dropout_rates():
    g = torch.Generator().manual_seed(0)
    pk, ak = condition_dropout(20000, p_portrait=0.1, p_audio=0.2, p_both=0.05, generator=g)
    both = (~pk & ~ak).float().mean().item()
    assert (~pk).float().mean().item() == pytest.approx(0.05 + 0.95 * 0.1, abs=0.01)
    assert (~ak).float().mean().item() == pytest.approx(0.05 + 0.95 * 0.2, abs=0.01)
    assert both == pytest.approx(0.05 + 0.95 * 0.02, abs=0.01)
    with pytest.raises(ValueError, match="p_audio must be a probability"):
        condition_dropout(4, p_portrait=0.1, p_audio=1.5, p_both=0.0)


@pytest.mark.parametrize("scales", [GuidanceScales(memory=2.0), GuidanceScales(audio=2.0, memory=1.5)])
def test_memory_guidance_equals_separate_branches(scales):
    """ε̂ = guided(m) + (s_m − 1)·(ε(p, a, m) − ε(p, a, m = portrait)), in one batched call; at clip 0
    (memory = the portrait) it is plain guidance."""
    model, c, x, t, portrait, memory, tokens = _tiny_inputs()
    no_history = portrait[:, :, None].repeat(1, 1, 2, 1, 1)
    with torch.no_grad():
        out = guided_model_fn(model, portrait=portrait, audio_tokens=tokens, memory=memory, scales=scales, eps_channels=c)(x, t)
        plain = GuidanceScales(portrait=scales.portrait, audio=scales.audio)
        base = guided_model_fn(model, portrait=portrait, audio_tokens=tokens, memory=memory, scales=plain, eps_channels=c)(x, t)
        full = model(x, t, portrait=portrait, audio_tokens=tokens, memory=memory)
        free = model(x, t, portrait=portrait, audio_tokens=tokens, memory=no_history)
        clip0 = guided_model_fn(model, portrait=portrait, audio_tokens=tokens, memory=no_history, scales=scales, eps_channels=c)(x, t)
        clip0_plain = guided_model_fn(model, portrait=portrait, audio_tokens=tokens, memory=no_history, scales=plain,
                                      eps_channels=c)(x, t)
    expected = base[:, :c] + (scales.memory - 1) * (full[:, :c] - free[:, :c])
    assert (out[:, :c] - expected).abs().max() < 1e-5
    assert (full[:, :c] - free[:, :c]).abs().max() > 1e-3  # the memory matters, so the test can fail
    assert torch.equal(clip0, clip0_plain)
