"""The three multimodal fusion schemes of LetsTalk (letstalk_memo.md §1.6).

* **Symbiotic** (deep): the condition's tokens are concatenated with the video tokens from the input on
  and carried through the backbone; the shared spatial linear attention updates both streams. Default
  for the portrait (repeated over the clip's frames) and selectable for the audio.
* **Siamese** (middle): a parallel transformer processes the portrait once (timestep-free, like a
  ReferenceNet run at t = 0); its per-block features are extra keys/values of the backbone's spatial
  attention. It depends on the portrait only, so it is computed once per clip and reused at every
  sampling step (see :meth:`LetsTalkTransformer.prepare_portrait`).
* **Direct** (shallow): cross-attention in every block, the condition giving keys/values only. Default
  for the audio, selectable for the portrait.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .modules import NORM_EPS, GLUMBConv, LiteLinearAttention


@dataclass
class PortraitContext:
    """The portrait as the backbone consumes it, for one batch: tokens ``[B, N, D]`` (with spatial
    positions; null tokens where the portrait is dropped) and, for Siamese fusion, one ``[B, N, D]``
    feature per backbone block that uses it."""

    tokens: torch.Tensor
    siamese_features: list[torch.Tensor] | None = None

    def repeat(self, n: int) -> "PortraitContext":
        """The context for a batch repeated ``n`` times (``torch.cat([batch]*n)``), e.g. for guidance."""
        feats = None if self.siamese_features is None else [f.repeat(n, 1, 1) for f in self.siamese_features]
        return PortraitContext(self.tokens.repeat(n, 1, 1), feats)


class SiameseBlock(nn.Module):
    """One block of the Siamese branch: pre-LN ReLU linear self-attention and Mix-FFN, no timestep.
    Its pre-attention LN output is the feature handed to the backbone (as MEMO's Reference Net hands
    on its LN1 outputs, letstalk_memo.md §2.2)."""

    def __init__(self, hidden: int, head_dim: int, ffn_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=NORM_EPS)
        self.attn = LiteLinearAttention(hidden, head_dim)
        self.norm2 = nn.LayerNorm(hidden, eps=NORM_EPS)
        self.ffn = GLUMBConv(hidden, ffn_hidden)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.norm1(x)
        x = x + self.attn(feature)
        x = x + self.ffn(self.norm2(x), grid)
        return x, feature


class SiameseBranch(nn.Module):
    """The parallel transformer of Siamese fusion: ``depth`` blocks, one feature per block."""

    def __init__(self, depth: int, hidden: int, head_dim: int, ffn_hidden: int):
        super().__init__()
        self.blocks = nn.ModuleList(SiameseBlock(hidden, head_dim, ffn_hidden) for _ in range(depth))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            tokens, feature = block(tokens, grid)
            features.append(feature)
        return features
