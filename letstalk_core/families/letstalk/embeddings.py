"""Embeddings of the LetsTalk transformer (letstalk_memo.md §1.5).

* fixed 2-D sin-cos spatial positions (MAE/DiT ``get_2d_sincos_pos_embed``), added to video, memory and
  portrait tokens;
* fixed 1-D sin-cos temporal positions of length f+F added to [memory; video], memory first;
* the 256-d sinusoidal timestep embedding → Linear → SiLU → Linear (DiT ``TimestepEmbedder``);
* a shared patch embedding (timm ``PatchEmbed``: a stride-p conv) for all latent streams.
"""
from __future__ import annotations

import torch
from torch import nn

from ...layers.embeddings import timestep_embedding


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE ``get_1d_sincos_pos_embed_from_grid``: ``[sin(p·ω_i), cos(p·ω_i)]``, ω_i = 10000^(−2i/dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """MAE/DiT ``get_2d_sincos_pos_embed`` for an ``height``×``width`` grid → ``[height·width, dim]``.

    Half the channels encode the column (w) and half the row (h), in DiT's order (``grid[0]`` is w)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dim must be divisible by 4, got {dim}.")
    gh, gw = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, gw), sincos_1d(dim // 2, gh)], dim=1)


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """DiT ``TimestepEmbedder.timestep_embedding``: ``[cos(t·f), sin(t·f)]``, f_i = max_period^(−i/half) —
    diffusers' timestep embedding with ``flip_sin_to_cos`` and no frequency shift."""
    return timestep_embedding(t, dim, flip_sin_to_cos=True, freq_shift=0.0, max_period=max_period)


class TimestepEmbedder(nn.Module):
    """256-d sinusoid → Linear → SiLU → Linear = c (the conditioning vector of every adaLN)."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_sinusoid(t, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class PatchEmbed(nn.Module):
    """Latent frames ``[N, C, h, w]`` → tokens ``[N, (h/p)·(w/p), D]`` (timm PatchEmbed, bias)."""

    def __init__(self, in_channels: int, hidden: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
