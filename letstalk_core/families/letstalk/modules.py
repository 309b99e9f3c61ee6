"""The attention and feed-forward modules of a LetsTalk block (letstalk_memo.md §1.5).

The temporal and audio modules are pluggable: a block builds them by name from
``TEMPORAL_MODULES`` / ``AUDIO_MODULES``, so other variants (e.g. MEMO's memory-guided linear
temporal attention or its emotion-aware audio module) register here without touching the block.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.linear_attention import merge_heads, relu_linear_attention, softmax_attention, split_heads

NORM_EPS = 1e-6


def zero_init(layer: nn.Module) -> nn.Module:
    """Zero a layer's parameters and mark it, so the model's weight initialisation keeps it at zero
    (adaLN-Zero, the final layer and ``temporal_fc``)."""
    for p in layer.parameters():
        nn.init.zeros_(p)
    layer.zero_initialised = True
    return layer


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x·(1+scale) + shift`` (DiT eq.; shift/scale broadcast over tokens)."""
    return x * (1 + scale) + shift


class SoftmaxTemporalAttention(nn.Module):
    """Latte-style temporal self-attention over [memory; clip] at every spatial position:
    ``x_m ← x_m + temporal_fc(Attn(LN(x_m)))`` with affine LN and qkv bias, no modulation. This is the
    only place where the memory meets the clip; the memory tokens are updated and passed on.
    ``temporal_fc`` is zero-initialised, so a fresh block starts as the identity over time."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(hidden, eps=NORM_EPS)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.temporal_fc = zero_init(nn.Linear(hidden, hidden))

    def forward(self, video: torch.Tensor, memory: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """video ``[B, F, N, D]``, memory ``[B, f, N, D]`` or None → both updated."""
        b, frames, n, d = video.shape
        seq = video if memory is None else torch.cat([memory, video], dim=1)
        t = seq.shape[1]
        h = seq.permute(0, 2, 1, 3).reshape(b * n, t, d)  # one sequence per spatial position
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)
        attn = merge_heads(softmax_attention(split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)))
        h = h + self.temporal_fc(self.proj(attn))
        seq = h.view(b, n, t, d).permute(0, 2, 1, 3)
        if memory is None:
            return seq, None
        return seq[:, t - frames:], seq[:, : t - frames]


class CrossAttention(nn.Module):
    """Direct fusion (letstalk_memo.md §1.6a): tokens cross-attend to a condition that gives K/V only.
    ``x ← x + Out(Attn(q(LN(x)), k(c), v(c)))``, LN without affine, q/k/v without bias, output with bias."""

    def __init__(self, hidden: int, heads: int, context_dim: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(hidden, eps=NORM_EPS, elementwise_affine=False)
        self.to_q = nn.Linear(hidden, hidden, bias=False)
        self.to_k = nn.Linear(context_dim, hidden, bias=False)
        self.to_v = nn.Linear(context_dim, hidden, bias=False)
        self.to_out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x ``[B', N, D]``, context ``[B', M, C]`` → x updated (residual included)."""
        q = split_heads(self.to_q(self.norm(x)), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        return x + self.to_out(merge_heads(softmax_attention(q, k, v)))


class AudioCrossAttention(CrossAttention):
    """Per-frame audio attention: the N tokens of frame i attend to that frame's audio tokens."""

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """video ``[B, F, N, D]``, audio ``[B, F, A, C]`` → video updated."""
        b, frames, n, d = video.shape
        out = super().forward(video.reshape(b * frames, n, d), audio.reshape(b * frames, *audio.shape[2:]))
        return out.view(b, frames, n, d)


class LiteLinearAttention(nn.Module):
    """Sana's LiteLA (``sana_blocks.py``): ReLU linear attention, qkv Linear(D, 3D) without bias split
    into contiguous thirds, head dim 32, output projection with bias, fp32 accumulation.

    ``context`` (optional) supplies extra key/value tokens that are attended to but not updated
    (used by the Siamese fusion's reference features)."""

    def __init__(self, hidden: int, head_dim: int = 32):
        super().__init__()
        self.heads = hidden // head_dim
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if context is not None:
            _, kc, vc = self.qkv(context).chunk(3, dim=-1)
            k, v = torch.cat([k, kc], dim=1), torch.cat([v, vc], dim=1)
        out = relu_linear_attention(split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads))
        return self.proj(merge_heads(out))


class GLUMBConv(nn.Module):
    """Mix-FFN of Sana/LetsTalk (``basic_modules.py``): 1×1 conv D→2h (bias) + SiLU → 3×3 depthwise
    (bias) → split into value and gate → value·SiLU(gate) → 1×1 conv h→D (no bias), on the token grid."""

    def __init__(self, hidden: int, ffn_hidden: int):
        super().__init__()
        self.conv_inverted = nn.Conv2d(hidden, 2 * ffn_hidden, 1)
        self.conv_depth = nn.Conv2d(2 * ffn_hidden, 2 * ffn_hidden, 3, padding=1, groups=2 * ffn_hidden)
        self.conv_point = nn.Conv2d(ffn_hidden, hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x ``[B', N, D]`` with N = grid[0]·grid[1] → ``[B', N, D]``."""
        b, n, d = x.shape
        h = x.transpose(1, 2).reshape(b, d, *grid)
        h = self.conv_depth(F.silu(self.conv_inverted(h)))
        value, gate = h.chunk(2, dim=1)
        h = self.conv_point(value * F.silu(gate))
        return h.flatten(2).transpose(1, 2)


TEMPORAL_MODULES: dict[str, Callable[..., nn.Module]] = {
    "softmax": lambda cfg: SoftmaxTemporalAttention(cfg.hidden_size, cfg.temporal_heads),
}
AUDIO_MODULES: dict[str, Callable[..., nn.Module]] = {
    "cross_attention": lambda cfg: AudioCrossAttention(cfg.hidden_size, cfg.temporal_heads, cfg.audio_dim),
}


def build_module(registry: dict, name: str, kind: str, cfg) -> nn.Module:
    """Instantiate ``registry[name](cfg)`` with a clear error for an unknown name."""
    if name not in registry:
        raise ValueError(f"unknown {kind} module {name!r}; available: {', '.join(sorted(registry))}.")
    return registry[name](cfg)
