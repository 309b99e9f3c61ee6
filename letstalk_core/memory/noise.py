"""Noise regularisation of the memory in training (letstalk_memo.md §1.7, code ``train_pl.py``).

Generated memories are imperfect at inference, so the training memories are degraded on purpose:
1. pixel noise before encoding: ``x + ε·σ`` with ``σ = exp(N(μ, s²))`` per sample (μ = −3, s = 0.5);
2. latent forward diffusion ``m_t = √ᾱ_t m_0 + √(1−ᾱ_t) ε`` with ``t ~ U{0, …, 49}`` (t ≪ T);
3. a spatial mask, one H×W mask per batch shared over samples, frames and channels, zeroing about 25 %
   of the positions (keep where U(0, 1) > ratio).
All draws come from the given generator, so a training step is reproducible.
"""
from __future__ import annotations

import torch

from .bank import MemoryConfig


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _rand(shape, generator, like: torch.Tensor) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=dev, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def add_pixel_noise(images: torch.Tensor, cfg: MemoryConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images ``[B, ...]`` in [-1, 1] plus Gaussian noise of per-sample σ = exp(N(μ, s²)). Also applied
    to the reference image in the authors' code (``add_noise_to_image``)."""
    if not cfg.pixel_noise:
        return images
    b = images.shape[0]
    log_sigma = cfg.pixel_noise_log_mean + cfg.pixel_noise_log_std * _randn((b,), generator, images)
    sigma = log_sigma.exp().view(b, *([1] * (images.ndim - 1)))
    return images + sigma * _randn(images.shape, generator, images)


def add_latent_noise(memory: torch.Tensor, alphas_cumprod: torch.Tensor, cfg: MemoryConfig,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Forward diffusion of the memory latents ``[B, C, f, h, w]`` to a small per-sample t ∈ [0, max_t]."""
    if not cfg.latent_noise:
        return memory
    b = memory.shape[0]
    dev = generator.device if generator is not None else memory.device
    t = torch.randint(0, cfg.latent_noise_max_t + 1, (b,), generator=generator, device=dev).to(memory.device)
    a = alphas_cumprod.to(memory.device, torch.float64)[t].to(memory.dtype).view(b, 1, 1, 1, 1)
    return a.sqrt() * memory + (1 - a).sqrt() * _randn(memory.shape, generator, memory)


def spatial_mask(memory: torch.Tensor, cfg: MemoryConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero about ``mask_ratio`` of the h×w positions, one mask shared by the whole batch."""
    if not cfg.spatial_mask or cfg.mask_ratio == 0:
        return memory
    h, w = memory.shape[-2:]
    keep = (_rand((h, w), generator, memory) > cfg.mask_ratio).to(memory.dtype)
    return memory * keep


def regularise_memory(memory: torch.Tensor, alphas_cumprod: torch.Tensor, cfg: MemoryConfig,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Steps 2 and 3 on encoded memory latents (step 1 acts on pixels, before the encoder)."""
    return spatial_mask(add_latent_noise(memory, alphas_cumprod, cfg, generator), cfg, generator)
