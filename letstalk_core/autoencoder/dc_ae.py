"""Deep compression autoencoder (DC-AE, arXiv 2410.10733), written from the reference implementations.

The network follows mit-han-lab/efficientvit ``efficientvit/models/efficientvit/dc_ae.py`` and is
laid out exactly like diffusers' ``AutoencoderDC`` (``models/autoencoders/autoencoder_dc.py``): module
and parameter names are diffusers', so a diffusers state dict loads with ``strict=True`` and that key
layout is this package's canonical one (``checkpoint.py`` converts the original layout).
Math details (RMSNorm over channels in fp32, ReLU linear attention with the pad-ones trick, the
quadratic path on small maps) are in components.md sections 1.3-1.4.

Public helpers work on frames ``[N, 3, H, W]`` in ``[-1, 1]``: ``encode_frames`` returns scaled latents
``E(x)·sf``; ``iter_decode`` / ``decode_latents`` return ``clamp(D(z/sf), -1, 1)`` chunk by chunk.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.linear_attention import relu_linear_attention
from ..validation import require_finite, require_positive, require_tensor
from .config import DCAEConfig

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
_RANGE_TOLERANCE = 1e-2


class RMSNorm2d(nn.Module):
    """Per-pixel RMS norm over channels with weight and bias, eps 1e-5 (efficientvit ``TritonRMSNorm2d``,
    diffusers ``RMSNorm(C, 1e-5, bias=True)`` on ``movedim(1, -1)``); computed in fp32, returned in the
    input dtype."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=1, keepdim=True) + self.eps)
        y = y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y.to(x.dtype)


def _norm(norm_type: str, channels: int) -> nn.Module:
    return RMSNorm2d(channels) if norm_type == "rms_norm" else nn.BatchNorm2d(channels, eps=1e-5)


class ResBlock(nn.Module):
    """``x + Norm(Conv3x3_nobias(Act(Conv3x3(x))))`` (components.md 1.3; diffusers ``ResBlock``)."""

    def __init__(self, channels: int, norm_type: str, act_fn: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.nonlinearity = _ACTIVATIONS[act_fn]()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm = _norm(norm_type, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(self.nonlinearity(self.conv1(x))))


class MultiscaleProjection(nn.Module):
    """Multi-scale qkv aggregation: depthwise ``k×k`` conv then a grouped 1×1 conv with ``3·heads`` groups
    (efficientvit ``LiteMLA.aggreg``; diffusers ``SanaMultiscaleAttentionProjection``)."""

    def __init__(self, inner_dim: int, heads: int, kernel_size: int) -> None:
        super().__init__()
        channels = 3 * inner_dim
        self.proj_in = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=3 * heads, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(x))


def relu_quadratic_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """The same function through the explicit ``N×N`` map ``A = kᵀq`` normalised over keys; used by the
    references when ``H·W <= head_dim`` (efficientvit ``relu_quadratic_att``)."""
    scores = k.transpose(-1, -2) @ q
    scores = scores / (scores.sum(dim=2, keepdim=True) + eps)
    return v @ scores


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention with post-norm and residual (efficientvit ``LiteMLA``; diffusers
    ``SanaMultiscaleLinearAttention``).

    ``to_q/to_k/to_v`` are the three thirds of efficientvit's fused qkv 1×1 conv, concatenated back in
    that order: channels are grouped per head as ``[q|k|v]`` (components.md 1.4, "channel layout pitfall").
    The attention itself runs in fp32 with autocast disabled, whatever the model dtype.
    """

    eps = 1e-15

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], norm_type: str) -> None:
        super().__init__()
        heads = channels // head_dim
        self.head_dim = head_dim
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(MultiscaleProjection(channels, heads, k) for k in kernel_sizes)
        self.to_out = nn.Linear(channels * (1 + len(kernel_sizes)), channels, bias=False)
        self.norm_out = _norm(norm_type, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        w_qkv = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
        qkv = F.conv2d(x, w_qkv[:, :, None, None])
        qkv = torch.cat([qkv, *(proj(qkv) for proj in self.to_qkv_multiscale)], dim=1)
        out = self._attend(qkv.reshape(b, -1, 3 * self.head_dim, h * w)).to(x.dtype)
        out = F.conv2d(out.reshape(b, -1, h, w), self.to_out.weight[:, :, None, None])
        return x + self.norm_out(out)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            q, k, v = qkv.float().chunk(3, dim=2)
            q, k = F.relu(q), F.relu(k)
            if q.shape[-1] > self.head_dim:  # channel-first [B, heads, d, N] → the shared token-first kernel
                t = lambda z: z.transpose(-1, -2)  # noqa: E731
                return t(relu_linear_attention(t(q), t(k), t(v), self.eps))
            return relu_quadratic_attention(q, k, v, self.eps)


class GLUMBConv(nn.Module):
    """Gated MBConv: ``1×1 C→8C + SiLU → DW3×3 → x·SiLU(gate) → 1×1 4C→C → RMSNorm``, plus residual
    (efficientvit ``GLUMBConv``; diffusers ``sana_transformer.GLUMBConv`` with expand ratio 4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = 4 * channels
        self.nonlinearity = nn.SiLU()
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = RMSNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_depth(self.nonlinearity(self.conv_inverted(x)))
        y, gate = y.chunk(2, dim=1)
        return x + self.norm(self.conv_point(y * self.nonlinearity(gate)))


class EfficientViTBlock(nn.Module):
    """``x += LiteMLA(x)`` then ``x += GLUMBConv(x)`` (components.md 1.3)."""

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], norm_type: str) -> None:
        super().__init__()
        self.attn = LiteMLA(channels, head_dim, kernel_sizes, norm_type)
        self.conv_out = GLUMBConv(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.attn(x))


class DownBlock(nn.Module):
    """Halve H and W: a stride-2 3×3 conv (``conv``) or a 3×3 conv to ``out/4`` + ``pixel_unshuffle(2)``,
    plus optionally the channel-averaging shortcut (diffusers ``DCDownBlock2d``)."""

    def __init__(self, c_in: int, c_out: int, pixel_unshuffle: bool, shortcut: bool) -> None:
        super().__init__()
        self.pixel_unshuffle = pixel_unshuffle
        self.group_size = 4 * c_in // c_out if shortcut else 0
        conv_out = c_out // 4 if pixel_unshuffle else c_out
        self.conv = nn.Conv2d(c_in, conv_out, 3, stride=1 if pixel_unshuffle else 2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pixel_unshuffle:
            y = F.pixel_unshuffle(y, 2)
        if self.group_size:
            y = y + F.pixel_unshuffle(x, 2).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return y


class UpBlock(nn.Module):
    """Double H and W: nearest ×2 + 3×3 conv (``interpolate``) or a 3×3 conv to ``4·out`` +
    ``pixel_shuffle(2)``, plus optionally the channel-duplicating shortcut (diffusers ``DCUpBlock2d``)."""

    def __init__(self, c_in: int, c_out: int, interpolate: bool, shortcut: bool) -> None:
        super().__init__()
        self.interpolate = interpolate
        self.repeats = 4 * c_out // c_in if shortcut else 0
        self.conv = nn.Conv2d(c_in, c_out if interpolate else 4 * c_out, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpolate:
            y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        else:
            y = F.pixel_shuffle(self.conv(x), 2)
        if self.repeats:
            y = y + F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)
        return y


def _block(kind: str, channels: int, head_dim: int, norm: str, act: str, scales: tuple[int, ...]) -> nn.Module:
    if kind == "ResBlock":
        return ResBlock(channels, norm, act)
    return EfficientViTBlock(channels, head_dim, scales, norm)


class Encoder(nn.Module):
    """Stem, stages ``[blocks@C_i, ↓C_{i+1}]``, then ``Conv3x3(C_last→latent)`` + channel-average shortcut.
    A stage-0 depth of 0 (in/mix variants) moves the first downsampling into the stem."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        widths, depths = cfg.encoder_block_out_channels, cfg.encoder_layers_per_block
        unshuffle = cfg.downsample_block_type == "pixel_unshuffle"
        if depths[0] > 0:
            self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, 1, 1)
        else:
            self.conv_in = DownBlock(cfg.in_channels, widths[1], unshuffle, shortcut=False)
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [
                _block(cfg.encoder_block_types[i], width, cfg.attention_head_dim, "rms_norm", "silu",
                       cfg.encoder_qkv_multiscales[i])
                for _ in range(depth)
            ]
            if i < len(widths) - 1 and depth > 0:
                blocks.append(DownBlock(width, widths[i + 1], unshuffle, shortcut=True))
            stages.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = nn.Conv2d(widths[-1], cfg.latent_channels, 3, 1, 1)
        self.out_group = widths[-1] // cfg.latent_channels if cfg.encoder_out_shortcut else 0

    channels_last = False  # set by DCAE.use_channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(_layout(x, self.channels_last))
        for stage in self.down_blocks:
            x = stage(x)
        z = self.conv_out(x)
        if self.out_group:
            z = z + x.unflatten(1, (-1, self.out_group)).mean(dim=2)
        return z.contiguous()


class Decoder(nn.Module):
    """``Conv3x3(latent→C_last)`` + duplicating shortcut, stages ``[↑C_i, blocks@C_i]`` deepest first, then
    RMSNorm → act → 3×3 conv to RGB (or a pixel-shuffle head when stage 0 is empty)."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        widths, depths = cfg.decoder_block_out_channels, cfg.decoder_layers_per_block
        interpolate = cfg.upsample_block_type == "interpolate"
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[-1], 3, 1, 1)
        self.in_repeats = widths[-1] // cfg.latent_channels if cfg.decoder_in_shortcut else 0
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            has_up = i < len(widths) - 1 and depth > 0
            blocks = [UpBlock(widths[i + 1], width, interpolate, shortcut=True)] if has_up else []
            blocks += [
                _block(cfg.decoder_block_types[i], width, cfg.attention_head_dim, cfg.decoder_norm_types[i],
                       cfg.decoder_act_fns[i], cfg.decoder_qkv_multiscales[i])
                for _ in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
        self.up_blocks = nn.ModuleList(stages)
        head = widths[0] if depths[0] > 0 else widths[1]
        self.norm_out = RMSNorm2d(head)
        self.conv_act = _ACTIVATIONS[cfg.decoder_conv_act_fn]()
        if depths[0] > 0:
            self.conv_out = nn.Conv2d(head, cfg.in_channels, 3, 1, 1)
        else:
            self.conv_out = UpBlock(head, cfg.in_channels, interpolate, shortcut=False)

    channels_last = False  # set by DCAE.use_channels_last

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = _layout(z, self.channels_last)
        x = self.conv_in(z)
        if self.in_repeats:
            x = x + z.repeat_interleave(self.in_repeats, dim=1)
        for stage in reversed(self.up_blocks):
            x = stage(x)
        return self.conv_out(self.conv_act(self.norm_out(x))).contiguous()


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class DCAE(nn.Module):
    """DC-AE encoder + decoder. ``encode``/``decode`` are raw (no scaling factor); use ``encode_frames`` /
    ``decode_latents`` for scaled latents. Deterministic: no KL term, no sampling (components.md 1.1).
    Run in ``eval()`` (the in/mix decoders use BatchNorm running statistics)."""

    def __init__(self, config: DCAEConfig) -> None:
        super().__init__()
        if not isinstance(config, DCAEConfig):
            raise TypeError(f"DCAE needs a DCAEConfig, got {type(config).__name__}.")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def use_channels_last(self, enabled: bool = True) -> DCAE:
        """Run the convolutions in the channels-last (NHWC) layout: weights converted here, inputs on the
        way in, outputs returned in the usual layout. Same results to float rounding; the f32c32 decoder
        runs 1.19× faster so on this project's 2-core CPU at 256² (fp32), and NHWC is the layout GPU
        convolution kernels prefer in bf16/fp16. Used for inference (``load_dcae``, ``bundled_dcae``)."""
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.encoder.channels_last = self.decoder.channels_last = enabled
        return self

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, H, W]`` (H, W multiples of the compression) -> raw latents ``[N, C, H/f, W/f]``."""
        check_images(x, self.config)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[N, latent_channels, h, w]`` -> images ``[N, in_channels, h·f, w·f]`` (not clamped)."""
        check_latents(z, self.config)
        return self.decoder(z)


def nearest_multiples(size: int, factor: int) -> tuple[int, ...]:
    """The valid sizes around ``size`` for a compression ``factor`` (the lower one only if > 0)."""
    lower, upper = (size // factor) * factor, -(-size // factor) * factor
    return tuple(s for s in dict.fromkeys((lower, upper)) if s > 0)


def check_images(x: torch.Tensor, config: DCAEConfig, name: str = "images") -> torch.Tensor:
    """Validate the shape of encoder input ``[N, C, H, W]``: channels and sides divisible by the factor."""
    require_tensor(x, name, ndim=4)
    if x.shape[1] != config.in_channels:
        hint = " Grayscale input? Repeat it to 3 channels: x.expand(-1, 3, -1, -1)." if x.shape[1] == 1 else ""
        raise ValueError(
            f"{name} must have {config.in_channels} channels in dimension 1 ([N, C, H, W]), got shape "
            f"{tuple(x.shape)}.{hint}"
        )
    f = config.spatial_compression
    h, w = x.shape[-2:]
    if h % f or w % f:
        raise ValueError(
            f"{name} size {h}x{w} (HxW) is not a multiple of the DC-AE compression factor {f}. Nearest valid "
            f"heights: {' or '.join(map(str, nearest_multiples(h, f)))}; widths: "
            f"{' or '.join(map(str, nearest_multiples(w, f)))}. Crop, pad or resize first, e.g. "
            f"fit_to_multiple(image, {f}, mode='center_crop' | 'pad' | 'resize')."
        )
    return x


def check_latents(z: torch.Tensor, config: DCAEConfig, name: str = "latents") -> torch.Tensor:
    """Validate the shape of decoder input ``[N, latent_channels, h, w]``."""
    require_tensor(z, name, ndim=4)
    if z.shape[1] != config.latent_channels:
        raise ValueError(
            f"{name} must have {config.latent_channels} channels for this DC-AE, got shape {tuple(z.shape)}; "
            "were they produced by a different autoencoder?"
        )
    return z


def _model_device_dtype(model: DCAE) -> tuple[torch.device, torch.dtype]:
    if not isinstance(model, DCAE):
        raise TypeError(f"model must be a DCAE, got {type(model).__name__}.")
    p = next(model.parameters())
    return p.device, p.dtype


def encode_frames(model: DCAE, frames: torch.Tensor, *, chunk_size: int = 8) -> torch.Tensor:
    """Encode frames ``[N, 3, H, W]`` in ``[-1, 1]`` to scaled latents ``E(x)·scaling_factor``
    (components.md 1.1), ``chunk_size`` frames at a time.

    Chunks are moved to the model's device and dtype; the result is float32 on the model's device,
    shape ``[N, latent_channels, H/f, W/f]``. Runs without autograd.
    """
    device, dtype = _model_device_dtype(model)
    require_positive(chunk_size, "chunk_size", integer=True)
    check_images(frames, model.config, "frames")
    require_finite(frames, "frames", "Check the image source (a failed decode or division by zero upstream).")
    lo, hi = float(frames.min()), float(frames.max())
    if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"frames must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]. Map [0, 1] images with x*2-1 and "
            "[0, 255] images with x/127.5-1."
        )
    sf = model.config.scaling_factor
    with torch.no_grad():
        chunks = [model.encoder(c.to(device, dtype)).float() * sf for c in frames.split(chunk_size)]
    return torch.cat(chunks)


def iter_decode(model: DCAE, latents: torch.Tensor, *, chunk_size: int = 8) -> Iterator[torch.Tensor]:
    """Decode scaled latents ``[N, C, h, w]`` chunk by chunk: yields ``clamp(D(z/sf), -1, 1)`` as float32
    tensors ``[n, 3, h·f, w·f]`` on the model's device (n <= ``chunk_size``). Inputs are validated when
    this is called, before the first chunk. Peak memory is one chunk's, whatever ``N``."""
    device, dtype = _model_device_dtype(model)
    require_positive(chunk_size, "chunk_size", integer=True)
    check_latents(latents, model.config)
    require_finite(latents, "latents", "The sampler diverged; try fewer steps, a lower guidance scale or fp32.")
    return _decode_chunks(model, latents, chunk_size, device, dtype)


def _decode_chunks(model: DCAE, latents: torch.Tensor, chunk_size: int, device, dtype) -> Iterator[torch.Tensor]:
    sf = model.config.scaling_factor
    for chunk in latents.split(chunk_size):
        with torch.no_grad():
            images = model.decoder((chunk.to(device, torch.float32) / sf).to(dtype))
        yield images.float().clamp_(-1.0, 1.0)


def decode_latents(model: DCAE, latents: torch.Tensor, *, chunk_size: int = 8) -> torch.Tensor:
    """All of ``iter_decode`` concatenated: ``[N, 3, h·f, w·f]`` in ``[-1, 1]``."""
    return torch.cat(list(iter_decode(model, latents, chunk_size=chunk_size)))


def fit_to_multiple(image: torch.Tensor, factor: int, mode: str = "center_crop") -> torch.Tensor:
    """Make an image's sides multiples of ``factor`` (the DC-AE compression, e.g. 32).

    ``image``: ``[C, H, W]`` or ``[N, C, H, W]``. Modes: ``center_crop`` (down to the multiple below,
    centred), ``pad`` (up to the multiple above, edge-replicated evenly on both sides) and ``resize``
    (bilinear with antialiasing to the nearest multiple, at least ``factor``). Same ndim as the input.
    """
    require_tensor(image, "image", ndim=(3, 4))
    require_positive(factor, "factor", integer=True)
    modes = ("center_crop", "pad", "resize")
    if mode not in modes:
        raise ValueError(f"mode must be one of {list(modes)}, got {mode!r}.")
    x = image if image.ndim == 4 else image[None]
    h, w = x.shape[-2:]
    if mode == "center_crop":
        th, tw = (h // factor) * factor, (w // factor) * factor
        if th == 0 or tw == 0:
            raise ValueError(f"image {h}x{w} is smaller than {factor} on a side; use mode='pad' or 'resize'.")
        top, left = (h - th) // 2, (w - tw) // 2
        x = x[..., top:top + th, left:left + tw]
    elif mode == "pad":
        ph, pw = -h % factor, -w % factor
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    else:
        th, tw = (max(factor, round(s / factor) * factor) for s in (h, w))
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    return x if image.ndim == 4 else x[0]
