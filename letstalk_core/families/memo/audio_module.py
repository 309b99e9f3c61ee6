"""MEMO's emotion-aware audio module (arXiv 2412.04448 §3.3; code ``memo/models/attention.py::
JointAudioTemporalBasicTransformerBlock`` inside a ``Transformer3DModel`` with ``use_audio_module``;
reference/letstalk_memo.md §2.4).

A dual-stream block over the video tokens ``H`` (per frame) and that frame's audio tokens ``A``:
``H += SelfAttn(EmoAdaLN(H))``, ``A += SelfAttn_a(EmoAdaLN(A))``, then one joint softmax attention over
``[H; A]`` whose two outputs are added back to each stream, then GEGLU feed-forwards. The updated
audio tokens leave the module (plus the module's own residual, as the reference adds it twice) and
feed the next audio module, so the audio context evolves down → mid → up. The network's last audio
layer (``final``) has no audio outputs.

EmoAdaLN (``EmoAdaLayerNorm``): ``LN(x)·(1 + scale) + shift`` with ``[shift, scale] =
Linear(SiLU(Embedding(e)))`` over 9 emotion classes plus a null class (index 9, the unconditional
branch) when the model was trained with label dropout.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...layers.attention import Attention, JointAttention
from ...layers.feedforward import FeedForward

EMOTION_CLASSES = 9
NULL_EMOTION = EMOTION_CLASSES  # the unconditional class


class LabelEmbedding(nn.Module):
    def __init__(self, classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(classes, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class EmoAdaLayerNorm(nn.Module):
    def __init__(self, dim: int, *, with_null: bool):
        super().__init__()
        self.class_embedder = LabelEmbedding(EMOTION_CLASSES + int(with_null), dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        """``x [N, L, C]``; ``emotion [B]`` class indices with ``N`` a multiple of ``B`` (frames of one
        video share its label: row ``i`` of ``x`` takes label ``i // (N/B)``)."""
        shift, scale = self.adaLN_modulation(self.class_embedder(emotion)).chunk(2, dim=1)
        if shift.shape[0] != x.shape[0]:
            rep = x.shape[0] // shift.shape[0]
            shift, scale = shift.repeat_interleave(rep, dim=0), scale.repeat_interleave(rep, dim=0)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class JointAudioBlock(nn.Module):
    def __init__(self, dim: int, audio_dim: int, heads: int, *, with_null: bool, final: bool):
        super().__init__()
        head = dim // heads
        self.final = final
        self.norm1 = EmoAdaLayerNorm(dim, with_null=with_null)
        self.attn1 = Attention(dim, heads=heads, dim_head=head)
        self.audio_norm1 = EmoAdaLayerNorm(audio_dim, with_null=with_null)
        self.audio_attn1 = Attention(audio_dim, heads=heads, dim_head=head)
        self.norm2 = EmoAdaLayerNorm(dim, with_null=with_null)
        self.audio_norm2 = EmoAdaLayerNorm(audio_dim, with_null=with_null)
        self.attn2 = JointAttention(dim, audio_dim, heads=heads, dim_head=head, final=final)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)
        if not final:
            self.audio_ff = FeedForward(audio_dim)
            self.audio_norm3 = nn.LayerNorm(audio_dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.attn1(self.norm1(x, emotion))
        audio = audio + self.audio_attn1(self.audio_norm1(audio, emotion))
        joint_x, joint_audio = self.attn2(self.norm2(x, emotion), self.audio_norm2(audio, emotion))
        x = x + joint_x
        x = x + self.ff(self.norm3(x))
        if self.final:
            return x, None
        audio = audio + joint_audio
        return x, audio + self.audio_ff(self.audio_norm3(audio))


class AudioModule(nn.Module):
    """``Transformer3DModel(use_audio_module=True)`` on frames ``[B·F, C, H, W]`` and audio tokens
    ``[B·F, n, audio_dim]``. Its inner width ``inner`` is, in the reference, set by the *input* width of
    the UNet block it sits in (``in_channels // heads`` per head), so it can differ from ``C``."""

    def __init__(self, channels: int, inner: int, audio_dim: int, heads: int, *, groups: int, with_null: bool,
                 final: bool = False):
        super().__init__()
        self.final = final
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [JointAudioBlock(inner, audio_dim, heads, with_null=with_null, final=final)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, _, h, w = x.shape
        t = self.proj_in(self.norm(x))
        inner = t.shape[1]
        t = t.permute(0, 2, 3, 1).reshape(n, h * w, inner)
        t, new_audio = self.transformer_blocks[0](t, audio, emotion)
        out = self.proj_out(t.reshape(n, h, w, inner).permute(0, 3, 1, 2).contiguous()) + x
        return out, (None if self.final else new_audio + audio)
