"""The GEGLU feed-forward of SD/diffusers (``diffusers.models.attention.FeedForward`` with
``activation_fn="geglu"``, mult 4): ``net.0.proj`` maps ``dim -> 2·4·dim``, the halves are
``h, gate``, the output is ``net.2(h · GELU(gate))``. Keys ``net.0.proj.*`` and ``net.2.*``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        # index 1 is diffusers' Dropout (no parameters); keep the index so the keys match
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))
