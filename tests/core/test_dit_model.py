"""The LetsTalk transformer: shapes, zero-initialisation, every fusion scheme actually uses its
condition, the memory reaches the clip only through temporal attention, parameter counts."""
import itertools

import pytest
import torch

from letstalk_core.families.letstalk.config import DIT_PRESETS, get_preset
from letstalk_core.families.letstalk.transformer import LetsTalkTransformer, count_parameters


def _perturb(model, std=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model.eval()


def _inputs(cfg, b=2, frames=None, f=None):
    frames = frames or cfg.video.clip_frames
    f = cfg.memory.frames if f is None else f
    h, w = cfg.latent_size
    c = cfg.dit.in_channels
    ap = cfg.audio_projector
    return dict(
        x=torch.randn(b, c, frames, h, w),
        t=torch.tensor([10.0, 500.0][:b]),
        portrait=torch.randn(b, c, h, w),
        memory=torch.randn(b, c, f, h, w),
        windows=torch.randn(b, frames, ap.window, ap.layers, ap.channels),
    )


def _run(model, inp, **kw):
    tokens = model.project_audio(inp["windows"])
    return model(inp["x"], inp["t"], portrait=inp["portrait"], audio_tokens=tokens, memory=inp["memory"], **kw)


FUSIONS = list(itertools.product(["symbiotic", "siamese", "direct"], ["direct", "symbiotic"]))


@pytest.mark.parametrize("portrait_fusion,audio_fusion", FUSIONS)
def test_every_fusion_scheme_uses_its_conditions(portrait_fusion, audio_fusion):
    cfg = get_preset("tiny", portrait_fusion=portrait_fusion, audio_fusion=audio_fusion)
    model = _perturb(LetsTalkTransformer(cfg))
    inp = _inputs(cfg)
    with torch.no_grad():
        out = _run(model, inp)
        assert out.shape == (2, 2 * cfg.dit.in_channels, cfg.video.clip_frames, *cfg.latent_size)
        assert torch.isfinite(out).all()
        for key in ("portrait", "windows", "memory"):
            changed = dict(inp, **{key: torch.randn_like(inp[key])})
            delta = (_run(model, changed) - out).abs().mean().item()
            assert delta > 1e-4, f"{key} has no effect with {portrait_fusion}/{audio_fusion}"
        # the conditions are per sample: changing sample 1's audio leaves sample 0 untouched
        w = inp["windows"].clone()
        w[1] = torch.randn_like(w[1])
        out2 = _run(model, dict(inp, windows=w))
        assert (out2[0] - out[0]).abs().max() < 1e-5 and (out2[1] - out[1]).abs().max() > 1e-4


def test_fresh_model_is_zero_initialised():
    cfg = get_preset("tiny")
    model = LetsTalkTransformer(cfg).eval()
    with torch.no_grad():
        assert _run(model, _inputs(cfg)).abs().max() == 0  # adaLN-Zero final layer


def test_dropped_conditions_match_their_definitions():
    cfg = get_preset("tiny")
    model = _perturb(LetsTalkTransformer(cfg))
    inp = _inputs(cfg)
    keep = torch.tensor([False, True])
    with torch.no_grad():
        tokens = model.project_audio(inp["windows"])
        dropped = model(inp["x"], inp["t"], portrait=inp["portrait"], audio_tokens=tokens, memory=inp["memory"], audio_keep=keep)
        zero_audio = tokens.clone()
        zero_audio[0] = 0
        manual = model(inp["x"], inp["t"], portrait=inp["portrait"], audio_tokens=zero_audio, memory=inp["memory"])
        assert (dropped - manual).abs().max() < 1e-6
        # a dropped portrait gives the same output whatever the portrait was
        a = _run(model, inp, portrait_keep=keep)
        b = _run(model, dict(inp, portrait=torch.randn_like(inp["portrait"])), portrait_keep=keep)
        assert (a[0] - b[0]).abs().max() < 1e-6 and (a[1] - b[1]).abs().max() > 1e-4


def test_prepared_portrait_context_equals_raw_portrait():
    cfg = get_preset("tiny", portrait_fusion="siamese")
    model = _perturb(LetsTalkTransformer(cfg))
    inp = _inputs(cfg)
    with torch.no_grad():
        ctx = model.prepare_portrait(inp["portrait"])
        tokens = model.project_audio(inp["windows"])
        a = model(inp["x"], inp["t"], portrait=ctx, audio_tokens=tokens, memory=inp["memory"])
        b = model(inp["x"], inp["t"], portrait=inp["portrait"], audio_tokens=tokens, memory=inp["memory"])
    assert (a - b).abs().max() < 1e-6


def test_no_memory_and_other_clip_lengths_and_patch_size():
    cfg = get_preset("tiny", patch_size=2)
    model = _perturb(LetsTalkTransformer(cfg))
    inp = _inputs(cfg, frames=5, f=0)
    with torch.no_grad():
        out = _run(model, inp)
    assert out.shape == (2, 2 * cfg.dit.in_channels, 5, *cfg.latent_size)


def test_bf16_autocast_forward_is_close_to_fp32():
    cfg = get_preset("tiny")
    model = _perturb(LetsTalkTransformer(cfg))
    inp = _inputs(cfg)
    with torch.no_grad():
        ref = _run(model, inp)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _run(model, inp)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel


def test_unknown_modules_and_fusions_are_refused():
    with pytest.raises(ValueError, match="portrait_fusion must be one of"):
        get_preset("tiny", portrait_fusion="early")
    with pytest.raises(ValueError, match="unknown temporal module 'memo'"):
        LetsTalkTransformer(get_preset("tiny", temporal_module="memo"))
    with pytest.raises(ValueError, match="unknown preset 'letstalk-xxl'.*letstalk-b"):
        get_preset("letstalk-xxl")


def test_preset_parameter_counts():
    """Counted on the meta device. The released code's Lite-B/L backbones have 223 M / 774 M
    (letstalk_memo.md §1.10); ours adds only the null portrait token."""
    counts = {}
    for name in DIT_PRESETS:
        with torch.device("meta"):
            model = LetsTalkTransformer(get_preset(name))
        counts[name] = (count_parameters(model) - count_parameters(model.audio_projector), count_parameters(model))
    assert abs(counts["letstalk-b"][0] / 1e6 - 223) < 0.02 * 223, counts
    assert abs(counts["letstalk-l"][0] / 1e6 - 774) < 0.02 * 774, counts
    assert counts["letstalk-s"][0] < counts["letstalk-b"][0] < counts["letstalk-l"][0] < counts["letstalk-xl"][0]
