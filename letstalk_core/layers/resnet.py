"""ResNet blocks and resamplers in diffusers' layout (``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``),
shared by the SD VAE (no time embedding) and MEMO's UNets, whose "inflated" 3D forms
(``memo/models/resnet.py``) are these 2D layers applied to frames.

Video tensors travel through the Diffusion Net as frames stacked in the batch, ``[B·F, C, H, W]``
(batch-major, the reference's ``(b f)``), so convolutions and resampling are the 2D ones. Only the
GroupNorm differs: MEMO's ``InflatedGroupNorm`` normalises each frame (``frames=None`` here), while a
config with ``use_inflated_groupnorm: false`` normalises each video over all its frames at once
(``frames=F``), as ``torch.nn.GroupNorm`` on ``[B, C, F, H, W]`` does in the reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """``norm`` per image of ``[N, C, H, W]``, or per video of ``frames`` images when ``frames`` is set."""
    if frames is None:
        return norm(x)
    n, c, h, w = x.shape
    v = x.view(n // frames, frames, c, h, w).transpose(1, 2)  # [B, C, F, H, W]
    return norm(v).transpose(1, 2).reshape(n, c, h, w)


class ResnetBlock(nn.Module):
    """``(x + conv2(SiLU(GN(conv1(SiLU(GN(x))) + proj(SiLU(temb)))))) / output_scale`` with a 1×1
    ``conv_shortcut`` when the width changes (diffusers ``ResnetBlock2D``, "default" time embedding)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, *, groups: int, eps: float,
                 output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None, frames: int | None = None) -> torch.Tensor:
        """``x [N, C, H, W]``; ``temb [N, T]`` (one row per image) or ``[N/F, T]`` with ``frames=F`` rows
        repeated over each video's frames; None for a block built without a time embedding (the VAE)."""
        h = self.conv1(F.silu(group_norm(self.norm1, x, frames)))
        if self.time_emb_proj is not None:
            t = self.time_emb_proj(F.silu(temb))
            if t.shape[0] != h.shape[0]:
                t = t.repeat_interleave(h.shape[0] // t.shape[0], dim=0)
            h = h + t[:, :, None, None]
        h = self.conv2(F.silu(group_norm(self.norm2, h, frames)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Downsample(nn.Module):
    """Stride-2 3×3 convolution with padding 1 (key ``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


_BF16_NEAREST_NEEDS_FP32 = torch.__version__ < "2.1"  # upsample_nearest2d lacks bf16 before torch 2.1


def upsample_nearest(x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Nearest ×2 (or to ``size``) as diffusers' ``Upsample2D``: bf16 goes through fp32 on torch < 2.1
    (pytorch#86679), and large or big-batch inputs are made contiguous first (diffusers#984)."""
    dtype = x.dtype
    if dtype == torch.bfloat16 and _BF16_NEAREST_NEEDS_FP32:
        x = x.float()
    if x.shape[0] >= 64 or x.numel() * 2 > 2**31:
        x = x.contiguous()
    x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else \
        F.interpolate(x, size=size, mode="nearest")
    return x.to(dtype)


class Upsample(nn.Module):
    """Nearest ×2 (or to ``size``), then a 3×3 convolution (key ``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.conv(upsample_nearest(x, size))
