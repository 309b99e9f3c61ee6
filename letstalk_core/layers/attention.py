"""Softmax attention layers with diffusers' parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
and for joint attention ``add_q_proj``, ``add_k_proj``, ``add_v_proj``, ``to_add_out``), on torch SDPA.

The math is diffusers' ``Attention`` with ``AttnProcessor2_0`` / ``XFormersAttnProcessor`` (the two
compute the same ``softmax(q·kᵀ/√d)·v``) and MEMO's ``JointAttnProcessor2_0``
(``memo/models/attention_processor.py``): no bias on q/k/v unless asked, a bias on the output
projection, dropout 0 at inference, no residual inside the layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, H·d] -> [B, H, N, d]``."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, d] -> [B, N, H·d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Multi-head softmax attention ``to_out(SDPA(to_q(x), to_k(c), to_v(c)))`` with ``c = context or x``.

    ``query_dim`` is the width of ``x``, ``context_dim`` that of the context (default ``query_dim``),
    ``heads × dim_head`` the inner width and ``out_dim`` the output width (default ``query_dim``).
    """

    def __init__(self, query_dim: int, *, heads: int, dim_head: int, context_dim: int | None = None,
                 out_dim: int | None = None, bias: bool = False, out_bias: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, out_dim or query_dim, bias=out_bias)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``extra_kv``: keys and values (``[B, M, H·d]``, from :meth:`project_kv`) appended to those of
        the context: the same as appending their tokens to the context, without projecting them again
        for every row that shares them."""
        c = x if context is None else context
        h = self.heads
        k, v = self.to_k(c), self.to_v(c)
        if extra_kv is not None:
            k, v = torch.cat([k, extra_kv[0]], dim=1), torch.cat([v, extra_kv[1]], dim=1)
        out = F.scaled_dot_product_attention(split_heads(self.to_q(x), h), split_heads(k, h), split_heads(v, h))
        return self.to_out[0](merge_heads(out))

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(to_k(context), to_v(context))``, for ``extra_kv``."""
        return self.to_k(context), self.to_v(context)


class JointAttention(nn.Module):
    """MM-DiT joint attention of two streams (MEMO ``JointAttnProcessor2_0``; SD3 §2.3).

    Queries, keys and values of the video tokens (``to_q/k/v``) and of the audio tokens
    (``add_q/k/v_proj``) are concatenated along the token axis, attended together with one softmax, and
    split again: the video part goes through ``to_out.0``, the audio part through ``to_add_out`` unless
    this is the network's last audio layer (``final``), which has no ``to_add_out`` and returns ``None``.
    """

    def __init__(self, dim: int, context_dim: int, *, heads: int, dim_head: int, final: bool = False,
                 bias: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.final = final
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.add_k_proj = nn.Linear(context_dim, inner)
        self.add_v_proj = nn.Linear(context_dim, inner)
        self.add_q_proj = nn.Linear(context_dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        if not final:
            self.to_add_out = nn.Linear(inner, context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = x.shape[1]
        h = self.heads
        q = torch.cat([self.to_q(x), self.add_q_proj(context)], dim=1)
        k = torch.cat([self.to_k(x), self.add_k_proj(context)], dim=1)
        v = torch.cat([self.to_v(x), self.add_v_proj(context)], dim=1)
        out = merge_heads(F.scaled_dot_product_attention(split_heads(q, h), split_heads(k, h), split_heads(v, h)))
        video = self.to_out[0](out[:, :n])
        audio = None if self.final else self.to_add_out(out[:, n:])
        return video, audio
