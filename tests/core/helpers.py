"""Shared builders for tests: tiny random models that exercise the real code paths."""
from __future__ import annotations

import math

import torch

from letstalk_core.audio.features import SpeechEncoder
from letstalk_core.autoencoder.dc_ae import DCAE
from letstalk_core.families.letstalk.config import get_preset
from letstalk_core.families.letstalk.generator import LetsTalkGenerator
from letstalk_core.families.letstalk.transformer import LetsTalkTransformer


def perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every weight (zero-initialised layers would make the model constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def tiny_parts(seed: int = 0, **dit):
    torch.manual_seed(seed)
    cfg = get_preset("tiny", **dit)
    return cfg, perturb(LetsTalkTransformer(cfg), seed=seed), DCAE(cfg.dcae).eval()


def tiny_generator(seed: int = 0, **dit) -> LetsTalkGenerator:
    cfg, model, dcae = tiny_parts(seed, **dit)
    return LetsTalkGenerator(cfg, model, dcae, SpeechEncoder(cfg.speech_encoder))


def speech_like(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """A syllable-rate amplitude-modulated harmonic tone, [channels, T]."""
    n = round(seconds * rate)
    t = torch.arange(n) / rate
    g = torch.Generator().manual_seed(seed)
    f0 = 120 + 30 * torch.rand(1, generator=g)
    env = (0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t)).clamp(min=0)
    wave = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6)) * env * 0.3
    return wave.expand(channels, n).clone()


def portrait(size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    face = ((xx**2 + yy**2) < 0.5).float()
    return torch.stack([face * 0.8 - 0.2, face * 0.4 - 0.3, -face * 0.5 + 0.1])


def assert_same_video(a, b) -> None:
    """Two mp4s hold the same video, frame for frame (same count, every pixel equal)."""
    from letstalk_core.io.video import read_video_frames

    x, y = read_video_frames(a), read_video_frames(b)
    assert x.shape == y.shape, (x.shape, y.shape)
    same = (x == y).flatten(1).all(1)
    assert bool(same.all()), f"frames {(~same).nonzero().flatten()[:8].tolist()} of {len(same)} differ"
