"""MEMO's memory-guided temporal module (arXiv 2412.04448 §3.2; code ``memo/models/motion_module.py``,
``MemoryLinearAttnTemporalModule``; reference/letstalk_memo.md §2.3), in every block of the Diffusion Net.

Per spatial location, along time: GroupNorm(32) → ``proj_in`` → one block of memory-guided linear
attention layers (pre-LN, residual; a sinusoidal position code is added to the current clip's tokens)
and a GEGLU feed-forward → ``proj_out`` → residual. The memory comes from the same layer's
Reference-Net features of the past frames, through the same norm, ``proj_in``, layer norm and
``to_k``/``to_v`` — it does not depend on the clip being denoised, so :meth:`past_contributions`
computes it once per clip, apart from the denoising steps. The state and its algebra live in
``memory/linear_state.py``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...layers.embeddings import sinusoidal_positions
from ...layers.feedforward import FeedForward
from ...memory.linear_state import LinearAttentionMemory, attend, past_contribution

TEMPORAL_GROUPS = 32  # hard-coded in the reference's TemporalLinearAttnTransformer


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_len, dim))  # persistent: in the published weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"A clip of {x.shape[1]} frames is longer than the temporal module's position "
                             f"table ({self.pe.shape[1]} frames); use at most that many frames per clip.")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class MemoryLinearAttention(nn.Module):
    """One memory-guided temporal linear attention layer (keys ``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
    ``pos_encoder.pe``). ``memory_key`` is its name in the network, under which its state is kept."""

    def __init__(self, dim: int, heads: int, dim_head: int, *, max_len: int | None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        self.pos_encoder = PositionalEncoding(dim, max_len) if max_len else None
        self.memory_key = ""

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, T, H·d] -> [M·H, T, d]`` (diffusers ``head_to_batch_dim``)."""
        m, t, c = x.shape
        return x.view(m, t, self.heads, c // self.heads).transpose(1, 2).reshape(m * self.heads, t, c // self.heads)

    def past_contribution(self, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``past [M, P, C]`` (normed past-frame tokens per location) → ``(KV_past, Z_past)``."""
        return past_contribution(*self.past_keys_values(past))

    def past_keys_values(self, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``past [M, P, C]`` → the past frames' keys and values per head ``[M·H, P, d]``."""
        return self._heads(self.to_k(past)), self._heads(self.to_v(past))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``x [M, F, C]`` normed tokens of the current clip per location (``M = B·L``)."""
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        m, f, _ = x.shape
        out = attend(self._heads(self.to_q(x)), self._heads(self.to_k(x)), self._heads(self.to_v(x)), state,
                     scale=self.scale)
        d = out.shape[-1]
        out = out.view(m, self.heads, f, d).transpose(1, 2).reshape(m, f, self.heads * d)
        return self.to_out[0](out)


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, layers: int, max_len: int | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [MemoryLinearAttention(dim, heads, dim_head, max_len=max_len) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, *, blocks: int, layers: int, max_len: int | None):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(TEMPORAL_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalBlock(inner, heads, dim_head, layers, max_len) for _ in range(blocks)])
        self.proj_out = nn.Linear(inner, channels)


def _per_location(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B·F, C, H, W] -> [B·H·W, F, C]`` (the reference's ``(b f) d c -> (b d) f c``)."""
    n, c, h, w = x.shape
    return x.view(n // frames, frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, frames, c)


class MemoryTemporalModule(nn.Module):
    """``MemoryLinearAttnTemporalModule``: keys ``temporal_transformer.*``."""

    def __init__(self, channels: int, *, heads: int, blocks: int, layers: int, max_len: int | None,
                 dim_div: int = 1):
        super().__init__()
        if channels % TEMPORAL_GROUPS:
            raise ValueError(f"The temporal module needs channels divisible by {TEMPORAL_GROUPS}; got {channels}.")
        self.temporal_transformer = TemporalTransformer(channels, heads, channels // heads // dim_div,
                                                        blocks=blocks, layers=layers, max_len=max_len)

    def _tokens(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        tt = self.temporal_transformer
        return tt.proj_in(_per_location(tt.norm(x), frames))

    def past_keys_values(self, past: torch.Tensor, frames: int):
        """``past [B·P, C, H, W]``: the Reference-Net features of ``P`` past frames per video →
        ``(layer name, keys, values)`` one layer at a time (each is folded into the state before the next
        is computed, :func:`~letstalk_core.memory.linear_state.fold_past`). Every layer sees the same
        (``proj_in``) tokens, normed by its own LayerNorm, as in the reference."""
        tokens = self._tokens(past, frames)
        for block in self.temporal_transformer.transformer_blocks:
            for attn, norm in zip(block.attention_blocks, block.norms):
                yield (attn.memory_key, *attn.past_keys_values(norm(tokens)))

    def past_contributions(self, past: torch.Tensor, frames: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer name: (KV_past, Z_past)}`` of :meth:`past_keys_values` (whole layers at once)."""
        return {name: past_contribution(k, v) for name, k, v in self.past_keys_values(past, frames)}

    def forward(self, x: torch.Tensor, frames: int, memory: LinearAttentionMemory) -> torch.Tensor:
        n, c, h, w = x.shape
        tt = self.temporal_transformer
        t = self._tokens(x, frames)
        for block in tt.transformer_blocks:
            for attn, norm in zip(block.attention_blocks, block.norms):
                t = t + attn(norm(t), memory.get(attn.memory_key, x.device))
            t = t + block.ff(block.ff_norm(t))
        t = tt.proj_out(t)  # [B·L, F, C]
        t = t.view(n // frames, h * w, frames, c).permute(0, 2, 3, 1).reshape(n, c, h, w)
        return t + x
