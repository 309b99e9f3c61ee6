"""One LetsTalk block (letstalk_memo.md §1.5, figure: Temp Attention → Adapt Integra → Audio Attention →
Spatial Attention → Mix-FFN).

1. temporal attention over [memory; clip] per spatial position (pluggable, softmax by default);
2. audio fusion: Direct cross-attention per frame (pluggable) — or, with Symbiotic audio, the audio
   tokens join step 3;
3. portrait fusion: Direct cross-attention here; Symbiotic/Siamese inside step 3;
4. spatial ReLU linear attention per frame over [clip; portrait; audio] tokens (the ones the fusion
   schemes put there), adaLN-Zero modulated: ``x ← x + g·LiteLA(LN(x)(1+s)+b)``;
5. Mix-FFN on the clip tokens only, adaLN-Zero modulated.
The adaLN-Zero projection ``SiLU → Linear(D, 6D)`` is zero-initialised (DiT), so a fresh block is the
identity in steps 4–5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import DiTConfig
from .modules import (
    AUDIO_MODULES,
    NORM_EPS,
    TEMPORAL_MODULES,
    CrossAttention,
    GLUMBConv,
    LiteLinearAttention,
    build_module,
    modulate,
    zero_init,
)


@dataclass
class BlockState:
    """The token streams flowing through the blocks, each ``[B, frames, tokens, D]`` (or None):
    the clip, the memory, the Symbiotic portrait and the Symbiotic audio streams."""

    video: torch.Tensor
    memory: torch.Tensor | None = None
    portrait: torch.Tensor | None = None
    audio: torch.Tensor | None = None


class LetsTalkBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.cfg = cfg
        self.temporal = build_module(TEMPORAL_MODULES, cfg.temporal_module, "temporal", cfg)
        self.audio_attn = build_module(AUDIO_MODULES, cfg.audio_module, "audio", cfg) if cfg.audio_fusion == "direct" else None
        self.portrait_attn = CrossAttention(d, cfg.temporal_heads, d) if cfg.portrait_fusion == "direct" else None
        self.norm1 = nn.LayerNorm(d, eps=NORM_EPS, elementwise_affine=False)
        self.attn = LiteLinearAttention(d, cfg.linear_head_dim)
        self.norm2 = nn.LayerNorm(d, eps=NORM_EPS, elementwise_affine=False)
        self.ffn = GLUMBConv(d, cfg.ffn_hidden)
        self.adaLN = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(d, 6 * d)))

    def forward(self, s: BlockState, c: torch.Tensor, grid: tuple[int, int], *, audio_context: torch.Tensor | None,
                portrait_tokens: torch.Tensor | None, siamese_feature: torch.Tensor | None) -> BlockState:
        """``c``: ``[B, D]`` timestep conditioning; ``audio_context``: ``[B, F, A, C]`` for Direct audio;
        ``portrait_tokens``: ``[B, N, D]`` for Direct portrait; ``siamese_feature``: ``[B, N, D]``."""
        b, frames, n, d = s.video.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)[:, None, None].chunk(6, dim=-1)

        video, memory = self.temporal(s.video, s.memory)
        if self.audio_attn is not None:
            video = self.audio_attn(video, audio_context)
        if self.portrait_attn is not None:
            ctx = portrait_tokens[:, None].expand(b, frames, -1, -1).reshape(b * frames, -1, d)
            video = self.portrait_attn(video.reshape(b * frames, n, d), ctx).view(b, frames, n, d)

        streams = [video] + [t for t in (s.portrait, s.audio) if t is not None]
        sizes = [t.shape[2] for t in streams]
        tokens = torch.cat(streams, dim=2)  # per frame: [clip; portrait; audio]
        h = modulate(self.norm1(tokens), shift1, scale1).reshape(b * frames, -1, d)
        context = None
        if siamese_feature is not None:
            context = siamese_feature[:, None].expand(b, frames, -1, -1).reshape(b * frames, -1, d)
        tokens = tokens + gate1 * self.attn(h, context).view(b, frames, -1, d)
        parts = list(tokens.split(sizes, dim=2))
        video = parts.pop(0)
        portrait = parts.pop(0) if s.portrait is not None else None
        audio = parts.pop(0) if s.audio is not None else None

        ffn_in = modulate(self.norm2(video), shift2, scale2).reshape(b * frames, n, d)
        video = video + gate2 * self.ffn(ffn_in, grid).view(b, frames, n, d)
        return BlockState(video, memory, portrait, audio)
