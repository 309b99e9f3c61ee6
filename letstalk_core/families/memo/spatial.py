"""The spatial transformers of MEMO's UNets, in diffusers' key layout.

* :class:`SpatialTransformer` is the Reference Net's ``Transformer2DModel`` + ``BasicTransformerBlock``
  (``memo/models/transformer_2d.py``, ``attention.py``): GroupNorm → 1×1 ``proj_in`` → [LN → self-attn,
  LN → cross-attn to the face tokens, LN → GEGLU] → 1×1 ``proj_out`` → residual. It also returns the
  block's first LayerNorm output, the *reference feature* the Diffusion Net attends to. The network's
  last block is only needed for that feature, so it has ``norm1`` and nothing after it (``final``).
* :class:`SpatialTransformer3D` is the Diffusion Net's ``Transformer3DModel`` +
  ``TemporalBasicTransformerBlock``: the same layers, per frame, but self-attention takes the reference
  image's tokens as extra keys and values (reference/letstalk_memo.md §2.2). Under classifier-free
  guidance the unconditional half attends to its own tokens only (the reference's ``uc_mask``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...layers.attention import Attention
from ...layers.feedforward import FeedForward


def tile_context(context: torch.Tensor, batch: int) -> torch.Tensor:
    """``context`` (``[b, n, c]``) repeated to ``batch`` rows the way the reference does it,
    ``context.repeat(batch // b, 1, 1)``: row ``i`` takes context ``i mod b``."""
    if context.shape[0] == batch:
        return context
    if batch % context.shape[0]:
        raise ValueError(f"A context batch of {context.shape[0]} cannot be spread over {batch} rows.")
    return context.repeat(batch // context.shape[0], 1, 1)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, GEGLU, each pre-LN with a residual; ``final``: ``norm1`` only."""

    def __init__(self, dim: int, heads: int, context_dim: int, *, final: bool = False):
        super().__init__()
        self.final = final
        self.norm1 = nn.LayerNorm(dim)
        if not final:
            head = dim // heads
            self.attn1 = Attention(dim, heads=heads, dim_head=head)
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads=heads, dim_head=head, context_dim=context_dim)
            self.norm3 = nn.LayerNorm(dim)
            self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        feature = self.norm1(x)
        if self.final:
            return None, feature
        x = x + self.attn1(feature)
        x = x + self.attn2(self.norm2(x), tile_context(context, x.shape[0]))
        x = x + self.ff(self.norm3(x))
        return x, feature


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def _to_image(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n, _, c = t.shape
    return t.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


class SpatialTransformer(nn.Module):
    """Reference Net transformer: ``x [N, C, H, W]`` → ``(x', reference feature [N, H·W, C])``."""

    def __init__(self, channels: int, heads: int, context_dim: int, *, groups: int, final: bool = False):
        super().__init__()
        self.final = final
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_dim, final=final)])
        if not final:
            self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        _, _, h, w = x.shape
        tokens = _to_tokens(self.proj_in(self.norm(x)))
        tokens, feature = self.transformer_blocks[0](tokens, context)
        if self.final:
            return None, feature
        return self.proj_out(_to_image(tokens, h, w)) + x, feature


class ReferenceAttentionBlock(nn.Module):
    """``TemporalBasicTransformerBlock``: self-attention over ``[own tokens; reference tokens]``,
    cross-attention to the face tokens, GEGLU."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        head = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, dim_head=head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads=heads, dim_head=head, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, reference: torch.Tensor, context: torch.Tensor,
                uncond: torch.Tensor | None) -> torch.Tensor:
        """``x [N, L, C]`` (``N = B·F``), ``reference [b, L_r, C]`` (row ``i`` of ``x`` sees reference row
        ``i mod b``, as the reference's ``ref_img_feature.repeat(video_length, 1, 1)`` pairs them; see
        :func:`tile_context`), ``context [N, n, c]``, ``uncond`` a bool ``[N]`` of the rows that do not
        see the reference (or None).

        The reference tokens' keys and values are projected once per reference row, not once per frame
        as in the reference code (which projects ``[own; reference]`` for every frame): the same
        numbers, ``F`` times fewer FLOPs for that part."""
        normed = self.norm1(x)
        n, b = x.shape[0], reference.shape[0]
        if n % b:
            raise ValueError(f"A reference batch of {b} cannot be spread over {n} rows.")
        k, v = self.attn1.project_kv(reference.to(normed.dtype))
        uncond = None if uncond is None else torch.as_tensor(uncond).cpu()  # a host-side mask: no device sync
        if uncond is None or not bool(uncond.any()):  # every row sees the reference
            rows = torch.arange(n, device=x.device) % b
            attn = self.attn1(normed, extra_kv=(k[rows], v[rows]))
        else:
            own = uncond.nonzero().squeeze(1).to(x.device)
            sees = (~uncond).nonzero().squeeze(1)
            attn = torch.empty_like(x)
            attn[own] = self.attn1(normed[own])
            if sees.numel():
                rows = (sees % b).to(x.device)
                sees = sees.to(x.device)
                attn[sees] = self.attn1(normed[sees], extra_kv=(k[rows], v[rows]))
        x = x + attn
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer3D(nn.Module):
    """Diffusion Net spatial transformer on frames ``[B·F, C, H, W]``."""

    def __init__(self, channels: int, heads: int, context_dim: int, *, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([ReferenceAttentionBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, reference: torch.Tensor, context: torch.Tensor,
                uncond: torch.Tensor | None) -> torch.Tensor:
        """``reference [b, L_r, C]``: see :meth:`ReferenceAttentionBlock.forward`."""
        _, _, h, w = x.shape
        tokens = _to_tokens(self.proj_in(self.norm(x)))
        tokens = self.transformer_blocks[0](tokens, reference, context, uncond)
        return self.proj_out(_to_image(tokens, h, w)) + x
