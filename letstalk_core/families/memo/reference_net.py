"""MEMO's Reference Net: an SD1.5 ``UNet2DConditionModel`` run at timestep 0 that returns, instead of a
noise prediction, the features the Diffusion Net attends to (arXiv 2412.04448 §3.1; code
``memo/models/unet_2d_condition.py``, ``unet_2d_blocks.py``, ``transformer_2d.py``;
reference/letstalk_memo.md §2.2).

Its input is the VAE latents of the reference image and the past frames (``[N, 4, h, w]``), its
cross-attention context the 4 face tokens. The features, keyed by the Diffusion Net layer that uses
them (``"down.i.j"``, ``"mid.0.j"``, ``"up.i.j"``):

* blocks with attention: the first LayerNorm output of their transformer, tokens ``[N, h·w, C]``;
* blocks without: the ResNet output, ``[N, C, h, w]``.

The network stops there: the last up block's transformer keeps only that LayerNorm and there is no
output convolution (the published weights have none).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...layers.embeddings import TimestepEmbedding, timestep_embedding
from ...layers.resnet import Downsample, ResnetBlock, Upsample
from ...validation import require_tensor
from .config import UNetConfig
from .spatial import SpatialTransformer

ReferenceFeatures = dict[str, torch.Tensor]


class UNetBlock(nn.Module):
    """A down/mid/up block's module lists, named as diffusers names them (``resnets``, ``attentions``, and
    for the Diffusion Net ``audio_modules``, ``motion_modules``, ``downsamplers``/``upsamplers``)."""

    def __init__(self):
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()


def up_channels(config: UNetConfig, i: int) -> tuple[int, int, int]:
    """``(prev_output, output, input)`` channels of up block ``i`` (diffusers' bookkeeping)."""
    rev = list(reversed(config.block_out_channels))
    n = len(rev)
    prev = rev[max(i - 1, 0)]
    return prev, rev[i], rev[min(i + 1, n - 1)]


def up_resnet_channels(config: UNetConfig, i: int, j: int) -> tuple[int, int]:
    """``(in, out)`` of ResNet ``j`` of up block ``i``, the skip connection included."""
    prev, out, inp = up_channels(config, i)
    skip = inp if j == config.layers_per_block else out
    return (prev if j == 0 else out) + skip, out


def down_resnet_channels(config: UNetConfig, i: int, j: int) -> tuple[int, int]:
    out = config.block_out_channels[i]
    inp = config.block_out_channels[max(i - 1, 0)]
    return (inp if j == 0 else out), out


def time_embedding(net: nn.Module, config: UNetConfig, timestep, batch: int, device, dtype) -> torch.Tensor:
    """``[batch, 4·C0]`` from a number or ``[batch]`` tensor of timesteps (diffusers ``Timesteps`` +
    ``TimestepEmbedding``)."""
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        t = t[None]
    t = t.expand(batch) if t.shape[0] == 1 else t
    if t.shape != (batch,):
        raise ValueError(f"timestep must be a number or a [{batch}] tensor; got shape {tuple(t.shape)}.")
    emb = timestep_embedding(t, config.block_out_channels[0], flip_sin_to_cos=config.flip_sin_to_cos,
                             freq_shift=config.freq_shift)
    return net.time_embedding(emb.to(dtype))


class ReferenceNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        if config.kind != "reference":
            raise ValueError(f"ReferenceNet needs a reference-net config; got a {config.kind!r} one.")
        self.config = c = config
        boc, g, eps, heads = c.block_out_channels, c.norm_num_groups, c.norm_eps, c.attention_head_dim
        temb = boc[0] * 4
        self.conv_in = nn.Conv2d(c.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        n = len(boc)
        self.down_blocks = nn.ModuleList()
        for i in range(n):
            block = UNetBlock()
            for j in range(c.layers_per_block):
                block.resnets.append(ResnetBlock(*down_resnet_channels(c, i, j), temb, groups=g, eps=eps))
                if c.has_cross_attention(i):
                    block.attentions.append(SpatialTransformer(boc[i], heads, c.cross_attention_dim, groups=g))
            if i < n - 1:
                block.downsamplers = nn.ModuleList([Downsample(boc[i])])
            self.down_blocks.append(block)
        self.mid_block = UNetBlock()
        for _ in range(2):
            self.mid_block.resnets.append(ResnetBlock(boc[-1], boc[-1], temb, groups=g, eps=eps))
        self.mid_block.attentions.append(SpatialTransformer(boc[-1], heads, c.cross_attention_dim, groups=g))
        self.up_blocks = nn.ModuleList()
        for i in range(n):
            block = UNetBlock()
            _, out, _ = up_channels(c, i)
            for j in range(c.layers_per_block + 1):
                block.resnets.append(ResnetBlock(*up_resnet_channels(c, i, j), temb, groups=g, eps=eps))
                if c.has_cross_attention(i, up=True):
                    final = i == n - 1 and j == c.layers_per_block
                    block.attentions.append(SpatialTransformer(out, heads, c.cross_attention_dim, groups=g,
                                                               final=final))
            if i < n - 1:
                block.upsamplers = nn.ModuleList([Upsample(out)])
            self.up_blocks.append(block)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, timestep=0) -> ReferenceFeatures:
        """``latents [N, 4, h, w]`` (VAE latents ×0.18215), ``context [b, n, c]`` face tokens with
        ``N`` a multiple of ``b`` (image ``i`` sees context ``i mod b``, the reference's ``repeat``)."""
        require_tensor(latents, "latents", ndim=4)
        require_tensor(context, "context", ndim=3)
        c = self.config
        if latents.shape[1] != c.in_channels:
            raise ValueError(f"The Reference Net takes {c.in_channels}-channel latents; got {latents.shape[1]}.")
        x = latents.to(self.conv_in.weight.dtype)
        if c.center_input_sample:
            x = 2 * x - 1.0
        context = context.to(x.dtype)
        temb = time_embedding(self, c, timestep, x.shape[0], x.device, x.dtype)
        x = self.conv_in(x)
        features: ReferenceFeatures = {}
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            for j, resnet in enumerate(block.resnets):
                x = resnet(x, temb)
                if len(block.attentions):
                    x, features[f"down.{i}.{j}"] = block.attentions[j](x, context)
                else:
                    features[f"down.{i}.{j}"] = x
                skips.append(x)
            if hasattr(block, "downsamplers"):
                x = block.downsamplers[0](x)
                skips.append(x)
        x = self.mid_block.resnets[0](x, temb)
        x, features["mid.0.0"] = self.mid_block.attentions[0](x, context)
        x = self.mid_block.resnets[1](x, temb)
        for i, block in enumerate(self.up_blocks):
            for j, resnet in enumerate(block.resnets):
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
                if len(block.attentions):
                    x, features[f"up.{i}.{j}"] = block.attentions[j](x, context)
                else:
                    features[f"up.{i}.{j}"] = x
            if hasattr(block, "upsamplers"):
                size = skips[-1].shape[-2:]
                x = block.upsamplers[0](x, None if tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]) else tuple(size))
        return features
