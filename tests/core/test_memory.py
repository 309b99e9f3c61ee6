"""The memory bank: FIFO semantics and the three noise regularisers with their distributions."""
import math

import pytest
import torch

from letstalk_core.diffusion.schedule import DiffusionConfig, make_schedule
from letstalk_core.memory import (
    add_latent_noise,
    add_pixel_noise,
    anchor_memory,
    initial_memory,
    regularise_memory,
    spatial_mask,
    update_memory,
)
from letstalk_core.memory.bank import MemoryConfig


def test_initial_memory_repeats_the_portrait():
    p = torch.randn(1, 4, 3, 3)
    m = initial_memory(p, 2)
    assert m.shape == (1, 4, 2, 3, 3) and torch.equal(m[:, :, 0], p) and torch.equal(m[:, :, 1], p)
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        initial_memory(torch.randn(4, 3, 3), 2)


def test_fifo_keeps_last_clean_frames_of_valid_part():
    mem = torch.zeros(1, 1, 3, 1, 1)
    clip = torch.arange(1.0, 9.0).view(1, 1, 8, 1, 1)
    assert update_memory(mem, clip).flatten().tolist() == [6, 7, 8]
    assert update_memory(mem, clip, valid_frames=5).flatten().tolist() == [3, 4, 5]
    # a clip shorter than the memory keeps the older frames
    mem2 = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1)
    assert update_memory(mem2, clip[:, :, :1] * 10).flatten().tolist() == [2, 3, 10]


def test_pixel_noise_sigma_is_lognormal():
    cfg = MemoryConfig()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4000, 1, 32, 32)
    sigma = add_pixel_noise(x, cfg, g).flatten(1).std(dim=1)
    log_sigma = sigma.log()
    assert abs(log_sigma.mean().item() - (-3.0)) < 0.05
    assert abs(log_sigma.std().item() - 0.5) < 0.05
    assert torch.equal(add_pixel_noise(x[:2], MemoryConfig(pixel_noise=False), g), x[:2])


def test_latent_noise_uses_small_timesteps():
    sched = make_schedule(DiffusionConfig())
    cfg = MemoryConfig(spatial_mask=False)
    ones = torch.ones(3000, 1, 1, 4, 4)
    g = torch.Generator().manual_seed(1)
    out = add_latent_noise(ones, sched.alphas_cumprod, cfg, g)
    # E[out] = sqrt(abar_t) over the sample; abar_49 ≈ 0.94 at the end of t in [0, 49]
    per_sample = out.flatten(1).mean(1)
    abar = sched.alphas_cumprod[:50].float()
    assert per_sample.mean().item() == pytest.approx(abar.sqrt().mean().item(), abs=0.01)
    noise_std = (out - out.flatten(1).mean(1).view(-1, 1, 1, 1, 1)).flatten(1).std(1)
    assert noise_std.max().item() < math.sqrt(1 - abar[-1].item()) * 1.8  # never a large t


def test_spatial_mask_shared_and_about_a_quarter():
    cfg = MemoryConfig()
    m = torch.ones(3, 4, 2, 64, 64)
    out = spatial_mask(m, cfg, torch.Generator().manual_seed(2))
    zero = out == 0
    assert zero.float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.equal(zero, zero[:1, :1, :1].expand_as(zero))  # one mask over samples, channels, frames


def test_regularise_is_deterministic_given_generator():
    sched = make_schedule(DiffusionConfig())
    m = torch.randn(2, 4, 2, 8, 8)
    a = regularise_memory(m, sched.alphas_cumprod, MemoryConfig(), torch.Generator().manual_seed(3))
    b = regularise_memory(m, sched.alphas_cumprod, MemoryConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, m)
    off = MemoryConfig(latent_noise=False, spatial_mask=False)
    assert torch.equal(regularise_memory(m, sched.alphas_cumprod, off), m)


def test_anchor_memory_mixes_in_the_portrait_and_bounds_a_random_walk():
    portrait = initial_memory(torch.zeros(1, 4, 2, 2), 2)
    memory = torch.ones(1, 4, 2, 2, 2)
    assert anchor_memory(memory, portrait, 0.0) is memory  # the paper: the memory as it is
    assert torch.allclose(anchor_memory(memory, portrait, 0.25), torch.full_like(memory, 0.75))
    g = torch.Generator().manual_seed(0)
    free, anchored = torch.zeros(4000), torch.zeros(4000)
    for k in range(1, 4000):  # each clip adds its own small error to what its memory carried
        e = torch.randn((), generator=g)
        free[k] = free[k - 1] + e
        anchored[k] = anchor_memory(anchored[k - 1].view(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1), 0.3).item() + e
    assert free.abs().max() > 30 and anchored.abs().max() < 6
