"""MEMO's Diffusion Net: the SD1.5 UNet inflated to video (arXiv 2412.04448 §3; code
``memo/models/unet_3d.py``, ``unet_3d_blocks.py``, ``transformer_3d.py``, ``motion_module.py``;
reference/letstalk_memo.md §2.2–2.4).

Each block with attention runs, per layer: ResNet → spatial transformer (self-attention with the
reference image's Reference-Net tokens as extra keys/values, cross-attention to the face tokens) →
emotion-aware audio module (joint video–audio attention; the audio tokens are carried from block to
block) → memory-guided temporal module. Blocks without attention run ResNet → temporal module. Video
travels as frames stacked in the batch, ``[B·F, C, h, w]``.

The memory is a :class:`~letstalk_core.memory.linear_state.LinearAttentionMemory`; it is *read* by
:meth:`DiffusionNet.forward` and *written* only by :meth:`DiffusionNet.update_memory`, which takes the
Reference-Net features of the past frames. The reference does the same update inside the forward of
the first denoising step of a clip (``update_past_memory = i == 0``) and resets it in every step of a
new video's first clip (``is_new_audio``); since the update depends on nothing but those features,
calling it once before the clip's steps is the same computation, done once.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers.embeddings import TimestepEmbedding
from ...layers.resnet import Downsample, ResnetBlock, Upsample, group_norm
from ...memory.linear_state import LinearAttentionMemory, fold_past
from ...validation import require_tensor
from .audio_module import AudioModule
from .config import UNetConfig
from .reference_net import (
    ReferenceFeatures,
    UNetBlock,
    down_resnet_channels,
    time_embedding,
    up_channels,
    up_resnet_channels,
)
from .spatial import SpatialTransformer3D, tile_context
from .temporal import MemoryTemporalModule


def split_reference_features(features: ReferenceFeatures, videos: int
                             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Reference-Net features of ``videos × (1 + P)`` images (per video: the reference image, then its
    ``P`` past frames, oldest first) → ``(reference tokens {layer: [videos, L, C]}, past features
    {layer: [videos·P, C, h, w] or [videos·P, C, L, 1]}, P)``. Only attention layers have reference tokens."""
    if not features:
        raise ValueError("No Reference-Net features were given.")
    ref_tokens, past = {}, {}
    for key, f in features.items():
        if f.shape[0] % videos:
            raise ValueError(f"Reference features '{key}' hold {f.shape[0]} images, not a multiple of {videos} videos.")
        per = f.shape[0] // videos
        if per < 2:
            raise ValueError("The Reference Net must see the reference image and at least one past frame per video.")
        g = f.view(videos, per, *f.shape[1:])
        if f.ndim == 3:  # tokens [N, L, C]: the temporal module only needs them per location
            ref_tokens[key] = g[:, 0]
            past[key] = g[:, 1:].reshape(videos * (per - 1), f.shape[1], f.shape[2]).transpose(1, 2)[..., None]
        else:
            past[key] = g[:, 1:].reshape(videos * (per - 1), *f.shape[1:])
    return ref_tokens, past, per - 1


class DiffusionNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        if config.kind != "diffusion":
            raise ValueError(f"DiffusionNet needs a diffusion-net config; got a {config.kind!r} one.")
        self.config = c = config
        boc, g, eps, heads = c.block_out_channels, c.norm_num_groups, c.norm_eps, c.attention_head_dim
        m = c.motion
        temb = boc[0] * 4
        with_null = c.emo_drop_rate > 0
        n = len(boc)

        def motion(ch):
            return MemoryTemporalModule(ch, heads=m.num_attention_heads, blocks=m.num_transformer_block,
                                        layers=len(m.attention_block_types), dim_div=m.temporal_attention_dim_div,
                                        max_len=m.temporal_position_encoding_max_len if m.temporal_position_encoding else None)

        def audio(ch, inner, final=False):
            return AudioModule(ch, inner, c.audio_attention_dim, heads, groups=g, with_null=with_null, final=final)

        self.conv_in = nn.Conv2d(c.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        self.down_blocks = nn.ModuleList()
        for i in range(n):
            block = UNetBlock()
            block.audio_modules, block.motion_modules = nn.ModuleList(), nn.ModuleList()
            for j in range(c.layers_per_block):
                cin, out = down_resnet_channels(c, i, j)
                block.resnets.append(ResnetBlock(cin, out, temb, groups=g, eps=eps))
                if c.has_cross_attention(i):
                    block.attentions.append(SpatialTransformer3D(out, heads, c.cross_attention_dim, groups=g))
                    block.audio_modules.append(audio(out, cin))
                if c.has_motion(2 ** i):
                    block.motion_modules.append(motion(out))
            if i < n - 1:
                block.downsamplers = nn.ModuleList([Downsample(boc[i])])
            self.down_blocks.append(block)
        self.mid_block = UNetBlock()
        self.mid_block.audio_modules, self.mid_block.motion_modules = nn.ModuleList(), nn.ModuleList()
        for _ in range(2):
            self.mid_block.resnets.append(ResnetBlock(boc[-1], boc[-1], temb, groups=g, eps=eps))
        self.mid_block.attentions.append(SpatialTransformer3D(boc[-1], heads, c.cross_attention_dim, groups=g))
        self.mid_block.audio_modules.append(audio(boc[-1], boc[-1]))
        self.mid_block.motion_modules.append(motion(boc[-1]))
        self.up_blocks = nn.ModuleList()
        for i in range(n):
            block = UNetBlock()
            block.audio_modules, block.motion_modules = nn.ModuleList(), nn.ModuleList()
            _, out, inp = up_channels(c, i)
            for j in range(c.layers_per_block + 1):
                block.resnets.append(ResnetBlock(*up_resnet_channels(c, i, j), temb, groups=g, eps=eps))
                if c.has_cross_attention(i, up=True):
                    block.attentions.append(SpatialTransformer3D(out, heads, c.cross_attention_dim, groups=g))
                    final = i == n - 1 and j == c.layers_per_block
                    block.audio_modules.append(audio(out, inp, final=final))
                if c.has_motion(2 ** (n - 1 - i)):
                    block.motion_modules.append(motion(out))
            if i < n - 1:
                block.upsamplers = nn.ModuleList([Upsample(out)])
            self.up_blocks.append(block)
        self.conv_norm_out = nn.GroupNorm(g, boc[0], eps=eps)
        self.conv_out = nn.Conv2d(boc[0], c.out_channels, 3, padding=1)
        for name, module in self.named_modules():
            if hasattr(module, "memory_key"):
                module.memory_key = name

    # -- memory ---------------------------------------------------------------------------------
    def _temporal_modules(self):
        for i, block in enumerate(self.down_blocks):
            for j, mm in enumerate(block.motion_modules):
                yield f"down.{i}.{j}", mm
        for j, mm in enumerate(self.mid_block.motion_modules):
            yield f"mid.0.{j}", mm
        for i, block in enumerate(self.up_blocks):
            for j, mm in enumerate(block.motion_modules):
                yield f"up.{i}.{j}", mm

    @torch.no_grad()
    def update_memory(self, memory: LinearAttentionMemory, past_features: dict[str, torch.Tensor], frames: int,
                      *, new_video: bool) -> None:
        """Fold ``frames`` past frames per video into ``memory`` (after a reset when ``new_video``).

        ``past_features`` is the second output of :func:`split_reference_features`."""
        if not isinstance(memory, LinearAttentionMemory):
            raise TypeError(f"memory must be a LinearAttentionMemory, got {type(memory).__name__}.")
        if new_video:
            memory.reset()
        dtype = self.conv_in.weight.dtype
        for key, module in self._temporal_modules():
            if key not in past_features:
                raise ValueError(f"The past-frame features lack layer '{key}': they must come from this model's "
                                 "Reference Net.")
            for name, keys, values in module.past_keys_values(past_features[key].to(dtype), frames):
                old = memory.find(name, keys.device)
                memory.put(name, *fold_past(old, keys, values, frames, dtype=memory.dtype, decay=memory.decay))
                del old
        memory.clips += 1

    # -- denoising ------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep, *, reference_tokens: dict[str, torch.Tensor],
                face_tokens: torch.Tensor, audio_tokens: torch.Tensor, emotion: torch.Tensor,
                memory: LinearAttentionMemory, uncond: torch.Tensor | None = None) -> torch.Tensor:
        """One denoising evaluation.

        Args:
            sample: ``[B, C, F, h, w]`` noisy latents (the batch holds the guidance branches).
            timestep: a number or ``[B]`` (``σ·1000`` for MEMO's rectified flow).
            reference_tokens: ``{layer: [B, L, C]}`` the reference image's Reference-Net tokens (first
                output of :func:`split_reference_features`). Frame ``k`` of the stacked ``B·F`` frames
                sees row ``k mod B``, exactly as the reference's ``ref_img_feature.repeat(F, 1, 1)``.
            face_tokens: ``[B, n, c]`` ImageProj output. audio_tokens: ``[B, F, m, a]`` audio projector
                output. emotion: ``[B]`` class indices (9 = none).
            memory: the state, updated for this clip by :meth:`update_memory`.
            uncond: bool ``[B]``: which rows are the unconditional branch (they do not attend to the
                reference tokens); None for none.
        Returns:
            ``[B, out_channels, F, h, w]``: the velocity.
        """
        require_tensor(sample, "sample", ndim=5)
        c = self.config
        b, ch, f, h, w = sample.shape
        if ch != c.in_channels:
            raise ValueError(f"The Diffusion Net takes {c.in_channels}-channel latents; got {ch}.")
        require_tensor(audio_tokens, "audio_tokens", ndim=4)
        if audio_tokens.shape[:2] != (b, f):
            raise ValueError(f"audio_tokens must be [B={b}, F={f}, tokens, dim]; got {tuple(audio_tokens.shape)}.")
        dtype = self.conv_in.weight.dtype
        x = sample.to(dtype).permute(0, 2, 1, 3, 4).reshape(b * f, ch, h, w)
        if c.center_input_sample:
            x = 2 * x - 1.0
        frames = None if c.use_inflated_groupnorm else f
        temb = time_embedding(self, c, timestep, b, x.device, dtype)
        face = face_tokens.to(dtype)
        face = face.repeat_interleave(f, dim=0) if face.shape[0] == b else tile_context(face, b * f)
        audio = audio_tokens.to(dtype).reshape(b * f, *audio_tokens.shape[2:])
        emotion = torch.as_tensor(emotion, device=x.device).reshape(-1)
        mask = None if uncond is None else torch.as_tensor(uncond).cpu().reshape(b).repeat_interleave(f)

        def attention_layer(block, j, key, x, audio):
            x = block.attentions[j](x, reference_tokens[key], face, mask)
            x, audio = block.audio_modules[j](x, audio, emotion)
            return x, audio

        x = self.conv_in(x)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            for j, resnet in enumerate(block.resnets):
                x = resnet(x, temb, frames)
                key = f"down.{i}.{j}"
                if len(block.attentions):
                    x, audio = attention_layer(block, j, key, x, audio)
                if len(block.motion_modules):
                    x = block.motion_modules[j](x, f, memory)
                skips.append(x)
            if hasattr(block, "downsamplers"):
                x = block.downsamplers[0](x)
                skips.append(x)
        mid = self.mid_block
        x = mid.resnets[0](x, temb, frames)
        x, audio = attention_layer(mid, 0, "mid.0.0", x, audio)
        x = mid.motion_modules[0](x, f, memory)
        x = mid.resnets[1](x, temb, frames)
        for i, block in enumerate(self.up_blocks):
            for j, resnet in enumerate(block.resnets):
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb, frames)
                key = f"up.{i}.{j}"
                if len(block.attentions):
                    x, audio = attention_layer(block, j, key, x, audio)
                if len(block.motion_modules):
                    x = block.motion_modules[j](x, f, memory)
            if hasattr(block, "upsamplers"):
                size = tuple(skips[-1].shape[-2:])
                x = block.upsamplers[0](x, None if size == (2 * x.shape[-2], 2 * x.shape[-1]) else size)
        x = self.conv_out(F.silu(group_norm(self.conv_norm_out, x, frames)))
        return x.view(b, f, -1, h, w).permute(0, 2, 1, 3, 4)
