"""Timestep embeddings in diffusers' layout (``Timesteps`` + ``TimestepEmbedding``, as in the SD1.5
UNet and MEMO's UNets) and the sinusoidal positional encoding of MEMO's temporal module."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(timesteps: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """diffusers ``get_timestep_embedding``: ``[sin(t·ω), cos(t·ω)]`` (or cos first when
    ``flip_sin_to_cos``), ``ω_i = max_period^(−i / (dim/2 − freq_shift))``; float32 ``[B, dim]``."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D [B]; got shape {tuple(timesteps.shape)}.")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_2(SiLU(linear_1(x)))`` (diffusers ``TimestepEmbedding``)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """``[1, max_len, dim]`` table: even channels ``sin(p·ω)``, odd ``cos(p·ω)``, ``ω = 10000^(−2i/dim)``
    (MEMO ``motion_module.py::PositionalEncoding``, the Transformer's encoding)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe
