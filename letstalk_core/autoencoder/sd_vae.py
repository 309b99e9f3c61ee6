"""Stable Diffusion VAE (the KL autoencoder of Rombach et al., arXiv 2112.10752), MEMO's image autoencoder.

Written from diffusers' ``AutoencoderKL`` (``models/autoencoders/autoencoder_kl.py`` and ``vae.py``, with
``resnet.ResnetBlock2D``, ``downsampling.Downsample2D``, ``upsampling.Upsample2D`` and the
``attention_processor.Attention`` that ``unet_2d_blocks.UNetMidBlock2D`` builds): module and parameter
names are diffusers', so a diffusers state dict loads with ``strict=True``; torch and safetensors only.

MEMO (reference: letstalk_memo.md) uses ``stabilityai/sd-vae-ft-mse`` with scaling factor 0.18215 and
encodes with ``latent_dist.mean`` (no sampling). So ``SDVAE.encode`` returns ``mean · scaling_factor``
and ``SDVAE.decode`` returns ``D(z / scaling_factor)``, both chunk by chunk.

Weights load with ``load_sd_vae`` from either layout users have, detected from the key names:

* ``diffusers``: a folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or a bare file with
  diffusers keys; the pre-0.14 attention names (``query/key/value/proj_attn``, still in the published
  ``sd-vae-ft-mse`` files) are renamed as diffusers does on load;
* ``ldm``: the original CompVis/LDM names of ComfyUI's ``models/vae`` files
  (``vae-ft-mse-840000-ema-pruned.safetensors``), optionally inside a full SD checkpoint under
  ``first_stage_model.`` (or ``vae.``); see ``ldm_vae_key_to_diffusers`` for the table.

``.ckpt``/``.pt``/``.pth``/``.bin`` files load through ``torch.load(weights_only=True)`` (no pickled code
runs); a file that needs more than that is refused with a request for safetensors.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import Attention
from ..layers.resnet import ResnetBlock, Upsample
from ..validation import check_state_dict as check_tensors, require_finite, require_positive, require_tensor

# ------------------------------------------------------------------------------------------------ config

_SHAPE_FIELDS = (
    "in_channels",
    "out_channels",
    "latent_channels",
    "block_out_channels",
    "layers_per_block",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
)
# diffusers AutoencoderKL.__init__ arguments that do not change the network (or match ours when default).
_DIFFUSERS_DEFAULTS = {
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "act_fn": "silu",
    "down_block_types": None,  # None: "DownEncoderBlock2D" for every level
    "up_block_types": None,  # None: "UpDecoderBlock2D" for every level
    "sample_size": 32,  # tiling size only: ignored
    "force_upcast": True,  # a pipeline hint: ignored (choose the dtype when loading)
    "latents_mean": None,
    "latents_std": None,
}
_DIFFUSERS_FIELDS = frozenset(_SHAPE_FIELDS) | frozenset(_DIFFUSERS_DEFAULTS)


@dataclass(frozen=True)
class SDVAEConfig:
    """Architecture and latent scale of a diffusers ``AutoencoderKL``.

    The defaults are Stable Diffusion 1.x/2.x's VAE (``sd-vae-ft-mse``: widths 128-256-512-512, 2 resnets
    per level, 32 norm groups, 4 latent channels, ×0.18215), not the signature defaults of diffusers'
    class (which are a one-level toy). Latents are ``(mean - shift_factor) · scaling_factor``; SD has no
    shift (``None``), SD3/Flux-style VAEs do.
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        widths = self.block_out_channels
        if not isinstance(widths, (list, tuple)) or not widths or not all(_is_int(w) and w > 0 for w in widths):
            raise ValueError(
                f"SDVAEConfig.block_out_channels must be a non-empty list of positive integers, got {widths!r}."
            )
        object.__setattr__(self, "block_out_channels", tuple(widths))
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"SDVAEConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SDVAEConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        bad = [w for w in self.block_out_channels if w % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"SDVAEConfig.block_out_channels {list(self.block_out_channels)} must all be multiples of "
                f"norm_num_groups={self.norm_num_groups} (GroupNorm); {bad} are not."
            )
        sf = self.scaling_factor
        if isinstance(sf, bool) or not isinstance(sf, (int, float)) or not (math.isfinite(sf) and sf > 0):
            raise ValueError(f"SDVAEConfig.scaling_factor must be a finite number > 0, got {sf!r}.")
        object.__setattr__(self, "scaling_factor", float(sf))
        shift = self.shift_factor
        if shift is not None:
            if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift):
                raise ValueError(f"SDVAEConfig.shift_factor must be a finite number or None, got {shift!r}.")
            object.__setattr__(self, "shift_factor", float(shift))

    @property
    def spatial_compression(self) -> int:
        """Down-sampling factor of the encoder: ``2 ** (levels - 1)`` (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists); ``from_dict`` inverts it."""
        data = dataclasses.asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SDVAEConfig":
        """Build a config from ``to_dict()`` output; unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"SDVAEConfig.from_dict expects a dict, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SD VAE config keys {unknown}; valid keys are {sorted(known)}.")
        return cls(**data)

    @classmethod
    def from_diffusers_config(
        cls, data: Mapping[str, Any], source: str = "config.json", *, inferred: Mapping[str, Any] | None = None
    ) -> "SDVAEConfig":
        """Map a diffusers ``AutoencoderKL`` ``config.json`` (already parsed) to ``SDVAEConfig``.

        * Keys starting with ``_`` are metadata; ``_class_name``, if present, must be ``AutoencoderKL``.
        * Any other key that is not an ``AutoencoderKL`` argument is refused (a newer option could build a
          different network); so are unsupported values: block types other than ``DownEncoderBlock2D`` /
          ``UpDecoderBlock2D``, ``act_fn`` other than ``silu``, per-channel ``latents_mean``/``latents_std``.
        * Shape-defining fields (``_SHAPE_FIELDS``: channels, widths, depth, the optional quant convs and mid
          attention) come from the file, else from ``inferred`` (what the weights show, see
          ``infer_sd_vae_shape``); diffusers' defaults for them are not SD's, so they are never assumed.
          Old configs (e.g. ``sd-vae-ft-mse``, diffusers 0.4) lack ``use_quant_conv`` etc.: the weights decide.
        * The rest take diffusers' defaults (``norm_num_groups`` 32, ``scaling_factor`` 0.18215, no shift);
          ``sample_size`` and ``force_upcast`` are accepted and ignored.

        ``source`` names the file in error messages.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"{source}: a diffusers config must be a JSON object, got {type(data).__name__}.")
        class_name = data.get("_class_name", "AutoencoderKL")
        if class_name != "AutoencoderKL":
            raise ValueError(
                f"{source} describes a {class_name!r}, not a Stable Diffusion VAE ('AutoencoderKL'). Point to the "
                "VAE's own folder (the 'vae' subfolder of a pipeline) or to a VAE .safetensors file."
            )
        fields = {k: v for k, v in data.items() if not str(k).startswith("_")}
        unknown = sorted(set(fields) - _DIFFUSERS_FIELDS)
        if unknown:
            raise ValueError(
                f"{source}: unknown AutoencoderKL field(s) {unknown}. Supported fields: {sorted(_DIFFUSERS_FIELDS)}. "
                "This VAE variant is not supported; use a Stable Diffusion VAE (e.g. sd-vae-ft-mse)."
            )
        kwargs: dict[str, Any] = {}
        for name in _SHAPE_FIELDS:
            if name in fields:
                kwargs[name] = fields[name]
            elif inferred is not None and name in inferred:
                kwargs[name] = inferred[name]
            else:
                raise ValueError(
                    f"{source} has no '{name}' and there are no weights to infer it from; add the field or load "
                    "the folder with its weights."
                )
        for name in ("norm_num_groups", "scaling_factor", "shift_factor"):
            if name in fields:
                kwargs[name] = fields[name]
        if fields.get("act_fn", "silu") != "silu":
            raise ValueError(
                f"{source}: act_fn={fields['act_fn']!r} is not supported (Stable Diffusion VAEs use 'silu')."
            )
        for name in ("latents_mean", "latents_std"):
            if fields.get(name) is not None:
                raise ValueError(
                    f"{source}: {name} is set; VAEs with per-channel latent normalisation are not supported "
                    "(Stable Diffusion VAEs use scaling_factor only)."
                )
        widths = kwargs["block_out_channels"]
        levels = len(widths) if isinstance(widths, (list, tuple)) else None
        for name, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = fields.get(name)
            if types is None:
                continue
            if not isinstance(types, (list, tuple)) or len(types) != levels or any(t != want for t in types):
                raise ValueError(
                    f"{source}: {name}={types!r} is not supported; expected {want!r} once per entry of "
                    f"block_out_channels ({levels} levels), as in Stable Diffusion's VAE."
                )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{source}: {err}") from err


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------ network

def vae_resnet(c_in: int, c_out: int, groups: int) -> ResnetBlock:
    """diffusers ``ResnetBlock2D`` as the VAE builds it: no time embedding, GroupNorm eps 1e-6, output scale 1."""
    return ResnetBlock(c_in, c_out, None, groups=groups, eps=1e-6)


class Downsample2D(nn.Module):
    """Pad right and bottom by one, then a stride-2 3×3 conv with no padding (diffusers ``Downsample2D`` with
    ``padding=0``, the LDM ``Downsample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class MidAttention(Attention):
    """Single-head self-attention over the ``H·W`` positions with a GroupNorm in front (eps 1e-6), biases on
    all projections and a residual connection (diffusers ``Attention`` as built by ``UNetMidBlock2D`` with
    ``attention_head_dim = C``): the shared SDPA layer with one head of width ``C``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(channels, heads=1, dim_head=channels, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        return super().forward(tokens).transpose(1, 2).reshape(b, c, h, w) + x


class DownEncoderBlock2D(nn.Module):
    """``layers`` resnets, then (except at the last level) a ``Downsample2D`` (diffusers ``DownEncoderBlock2D``)."""

    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(vae_resnet(c_in if i == 0 else c_out, c_out, groups) for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample2D(c_out)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(nn.Module):
    """``layers`` resnets, then (except at the last level) an ``Upsample2D`` (diffusers ``UpDecoderBlock2D``)."""

    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(vae_resnet(c_in if i == 0 else c_out, c_out, groups) for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsample(c_out)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class UNetMidBlock2D(nn.Module):
    """resnet → attention (optional) → resnet at the deepest width (diffusers ``UNetMidBlock2D``)."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([vae_resnet(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([MidAttention(channels, groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """conv_in → down blocks → mid block → GroupNorm → SiLU → conv_out to ``2·latent`` moments (diffusers
    ``vae.Encoder`` with ``double_z=True``)."""

    def __init__(self, cfg: SDVAEConfig) -> None:
        super().__init__()
        widths, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, 1, 1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(widths[max(i - 1, 0)], w, cfg.layers_per_block, groups, i < len(widths) - 1)
            for i, w in enumerate(widths)
        )
        self.mid_block = UNetMidBlock2D(widths[-1], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """conv_in → mid block → up blocks (deepest width first, ``layers + 1`` resnets each) → GroupNorm → SiLU →
    conv_out (diffusers ``vae.Decoder``)."""

    def __init__(self, cfg: SDVAEConfig) -> None:
        super().__init__()
        widths, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, 1, 1)
        self.mid_block = UNetMidBlock2D(widths[0], groups, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(widths[max(i - 1, 0)], w, cfg.layers_per_block + 1, groups, i < len(widths) - 1)
            for i, w in enumerate(widths)
        )
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


_RANGE_TOLERANCE = 1e-2


class SDVAE(nn.Module):
    """Stable Diffusion VAE with diffusers' ``AutoencoderKL`` state-dict layout.

    ``encode``/``decode``/``iter_decode`` are the validated, chunked, no-grad entry points working on
    scaled latents; ``latent_mean``/``decode_raw`` are the bare differentiable maps (no scaling, no checks).
    Any dtype (fp32/fp16/bf16) and ``channels_last`` work; results come back as float32.
    """

    def __init__(self, config: SDVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, SDVAEConfig):
            raise TypeError(f"SDVAE needs an SDVAEConfig, got {type(config).__name__}.")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        latent = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if config.use_post_quant_conv else None

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    # -- bare maps -----------------------------------------------------------------------------------------
    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the posterior (``AutoencoderKL.encode(x).latent_dist.mean``), unscaled."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[:, : self.config.latent_channels]

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """``AutoencoderKL.decode(z).sample`` for unscaled latents (not clamped)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    # -- validated, chunked entry points ------------------------------------------------------------------
    def encode(self, images: torch.Tensor, *, chunk_size: int = 4) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[-1, 1]`` (H, W multiples of 8) → latents ``[B, 4, H/8, W/8]`` =
        ``(posterior mean - shift) · scaling_factor``, float32 on the model's device.

        Uses the posterior mean, not a sample, as MEMO does (``latent_dist.mean``), so it is deterministic.
        ``chunk_size`` images are encoded at a time, which bounds peak memory whatever ``B``.
        """
        require_positive(chunk_size, "chunk_size", integer=True)
        self._check_images(images)
        device, dtype = self._device_dtype()
        sf, shift = self.config.scaling_factor, self.config.shift_factor
        out = []
        with torch.no_grad():
            for chunk in images.split(chunk_size):
                mean = self.latent_mean(chunk.to(device=device, dtype=dtype)).float()
                out.append((mean if shift is None else mean - shift) * sf)
        return torch.cat(out).contiguous()

    def iter_decode(self, latents: torch.Tensor, *, chunk_size: int = 4, clamp: bool = True) -> Iterator[torch.Tensor]:
        """Decode scaled latents ``[B, 4, h, w]`` chunk by chunk: yields ``D(z / scaling_factor + shift)`` as
        float32 ``[n, 3, 8h, 8w]`` on the model's device (n <= ``chunk_size``), clamped to ``[-1, 1]`` unless
        ``clamp=False``. Inputs are validated when this is called; peak memory is one chunk's."""
        require_positive(chunk_size, "chunk_size", integer=True)
        self._check_latents(latents)
        return self._decode_chunks(latents, chunk_size, clamp)

    def decode(self, latents: torch.Tensor, *, chunk_size: int = 4, clamp: bool = True) -> torch.Tensor:
        """All of ``iter_decode`` concatenated: images ``[B, 3, 8h, 8w]`` (in ``[-1, 1]`` when ``clamp``)."""
        return torch.cat(list(self.iter_decode(latents, chunk_size=chunk_size, clamp=clamp)))

    def _decode_chunks(self, latents: torch.Tensor, chunk_size: int, clamp: bool) -> Iterator[torch.Tensor]:
        device, dtype = self._device_dtype()
        sf, shift = self.config.scaling_factor, self.config.shift_factor
        for chunk in latents.split(chunk_size):
            z = chunk.to(device=device, dtype=torch.float32) / sf
            if shift is not None:
                z = z + shift
            with torch.no_grad():
                images = self.decode_raw(z.to(dtype)).float().contiguous()
            yield images.clamp_(-1.0, 1.0) if clamp else images

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = self.encoder.conv_in.weight
        return p.device, p.dtype

    def _check_images(self, x: torch.Tensor, name: str = "images") -> None:
        require_tensor(x, name)
        if x.ndim != 4:
            hint = " Add a batch dimension: images[None]." if x.ndim == 3 else ""
            raise ValueError(f"{name} must be [B, C, H, W], got shape {tuple(x.shape)}.{hint}")
        if not x.is_floating_point():
            raise TypeError(
                f"{name} must be a float tensor in [-1, 1], got {x.dtype}. Convert 0-255 images with "
                "x.float() / 127.5 - 1."
            )
        c = self.config.in_channels
        if x.shape[1] != c:
            hint = " Channels last ([B, H, W, C])? Use images.permute(0, 3, 1, 2)." if x.shape[-1] == c else ""
            raise ValueError(
                f"{name} must have {c} channels in dimension 1 ([B, C, H, W]), got shape {tuple(x.shape)}.{hint}"
            )
        f = self.spatial_compression
        h, w = x.shape[-2:]
        if h % f or w % f:
            raise ValueError(
                f"{name} size {h}x{w} (HxW) is not a multiple of {f}, which the SD VAE needs. Crop, pad or resize to "
                f"e.g. {max(f, h // f * f)}x{max(f, w // f * f)} first."
            )
        require_finite(x, name, "Check the image source.")
        if x.numel() and not x.is_meta:
            lo, hi = float(x.min()), float(x.max())
            if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
                raise ValueError(
                    f"{name} must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]. Map [0, 1] images with x*2-1 and "
                    "[0, 255] images with x/127.5-1."
                )

    def _check_latents(self, z: torch.Tensor, name: str = "latents") -> None:
        require_tensor(z, name)
        c = self.config.latent_channels
        if z.ndim != 4 or z.shape[1] != c:
            raise ValueError(
                f"{name} must be [B, {c}, h, w] for this SD VAE, got shape {tuple(z.shape)}; were they produced by a "
                "different autoencoder (a DC-AE has 32 channels)?"
            )
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {z.dtype}.")
        require_finite(z, name, "The sampler diverged; try fewer steps, a lower guidance scale or fp32.")


# ------------------------------------------------------------------------------------------------ key layouts

_LDM_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LINEAR_WEIGHT = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")
_VAE_PREFIXES = ("first_stage_model.", "vae.")


def ldm_vae_key_to_diffusers(key: str, num_levels: int) -> str | None:
    """Rename one LDM/CompVis VAE key to diffusers' ``AutoencoderKL`` name; ``None`` if it is not a VAE key.

    ``num_levels`` is the number of resolution levels (4 for SD); ``n`` below. As diffusers'
    ``convert_ldm_vae_checkpoint`` (``loaders/single_file_utils.py``):

    ===============================================  ==========================================================
    LDM / CompVis (ComfyUI ``models/vae``)            diffusers ``AutoencoderKL``
    ===============================================  ==========================================================
    ``encoder.down.{i}.block.{j}.*``                  ``encoder.down_blocks.{i}.resnets.{j}.*``
    ``encoder.down.{i}.downsample.conv.*``            ``encoder.down_blocks.{i}.downsamplers.0.conv.*``
    ``decoder.up.{i}.block.{j}.*``                    ``decoder.up_blocks.{n-1-i}.resnets.{j}.*`` (reversed)
    ``decoder.up.{i}.upsample.conv.*``                ``decoder.up_blocks.{n-1-i}.upsamplers.0.conv.*``
    ``{en,de}coder.mid.block_1`` / ``block_2``        ``{en,de}coder.mid_block.resnets.0`` / ``.1``
    ``{en,de}coder.mid.attn_1.norm|q|k|v|proj_out``   ``….mid_block.attentions.0.group_norm|to_q|to_k|to_v|to_out.0``
    ``{en,de}coder.norm_out``                         ``{en,de}coder.conv_norm_out``
    ``….nin_shortcut``                                ``….conv_shortcut``
    ``conv_in``, ``conv_out``, ``quant_conv``,        unchanged
    ``post_quant_conv``, ``norm1/2``, ``conv1/2``
    ===============================================  ==========================================================

    The LDM attention projections are 1×1 convolutions ``[C, C, 1, 1]``; ``as_linear_weight`` makes them
    ``[C, C]``.
    """
    m = re.match(r"^(encoder\.down|decoder\.up)\.(\d+)\.(block\.(\d+)|downsample\.conv|upsample\.conv)\.(.+)$", key)
    if m:
        part, level, inner, index, rest = m.groups()
        level = int(level)
        if level >= num_levels:
            return None
        if part == "decoder.up":
            level = num_levels - 1 - level
        if inner.startswith("block."):
            return f"{part}_blocks.{level}.resnets.{index}.{_shortcut(rest)}"
        if (part == "encoder.down") != inner.startswith("downsample"):
            return None
        return f"{part}_blocks.{level}.{'downsamplers' if part == 'encoder.down' else 'upsamplers'}.0.conv.{rest}"
    m = re.match(r"^(encoder|decoder)\.mid\.block_([12])\.(.+)$", key)
    if m:
        return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_shortcut(m[3])}"
    m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", key)
    if m:
        return f"{m[1]}.mid_block.attentions.0.{_LDM_ATTENTION[m[2]]}.{m[3]}"
    m = re.match(r"^(encoder|decoder)\.norm_out\.(weight|bias)$", key)
    if m:
        return f"{m[1]}.conv_norm_out.{m[2]}"
    if re.match(r"^((encoder|decoder)\.(conv_in|conv_out)|quant_conv|post_quant_conv)\.(weight|bias)$", key):
        return key
    return None


def _shortcut(rest: str) -> str:
    return "conv_shortcut" + rest[len("nin_shortcut"):] if rest.startswith("nin_shortcut") else rest


def _diffusers_key(key: str) -> str:
    """Rename diffusers' pre-0.14 attention names (``query/key/value/proj_attn``) as diffusers does on load."""
    m = re.match(r"^((?:encoder|decoder)\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)$", key)
    return f"{m[1]}.{_DEPRECATED_ATTENTION[m[2]]}.{m[3]}" if m else key


def as_linear_weight(tensor: torch.Tensor) -> torch.Tensor:
    """A 1×1 conv weight ``[C_out, C_in, 1, 1]`` (or conv1d ``[C_out, C_in, 1]``) as a linear ``[C_out, C_in]``
    (a view; other shapes are returned unchanged and caught by the shape check)."""
    if tensor.ndim in (3, 4) and all(s == 1 for s in tensor.shape[2:]):
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor


def _linear_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if _LINEAR_WEIGHT.match(key) and len(shape) in (3, 4) and all(s == 1 for s in shape[2:]):
        return tuple(shape[:2])
    return tuple(shape)


def strip_vae_prefix(keys: list[str]) -> tuple[str, list[str]]:
    """``(prefix, keys)``: if any key starts with ``first_stage_model.`` (a full SD checkpoint) or ``vae.``,
    only those keys are kept, prefix removed — everything else in such a file (UNet, text encoder,
    ``model_ema.*``, ``loss.*``) is ignored. Otherwise ``("", keys)``: the file must be the VAE alone."""
    for prefix in _VAE_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return prefix, [k[len(prefix):] for k in keys if k.startswith(prefix)]
    return "", list(keys)


def detect_sd_vae_layout(keys, source: str = "the checkpoint") -> str:
    """``"diffusers"`` or ``"ldm"`` from the (prefix-stripped) key names; ``ValueError`` naming what the file
    seems to be otherwise (a DC-AE, a diffusion model, a text encoder, ...)."""
    keys = list(keys)
    if any(k.startswith(("encoder.down_blocks.", "encoder.mid_block.")) and (".resnets." in k or ".attentions." in k)
           for k in keys):
        return "diffusers"
    ldm = re.compile(r"^(encoder\.down\.\d+\.block\.|encoder\.mid\.block_[12]\.|decoder\.up\.\d+\.block\.)")
    if any(ldm.match(k) for k in keys):
        return "ldm"
    raise ValueError(
        f"{source} is not a Stable Diffusion VAE: it looks like {_describe(keys)}. Expected AutoencoderKL weights "
        "with diffusers keys such as 'encoder.down_blocks.0.resnets.0.conv1.weight' or LDM keys such as "
        "'encoder.down.0.block.0.conv1.weight' (e.g. vae-ft-mse-840000-ema-pruned.safetensors in ComfyUI's "
        f"models/vae, or the 'vae' folder of sd-vae-ft-mse). First keys found: {keys[:5]}."
    )


def _describe(keys: list[str]) -> str:
    def has(*fragments: str) -> bool:
        return any(f in k for k in keys for f in fragments)

    if has("project_in.", ".op_list.", "project_out.") or any(
        re.match(r"^(encoder\.down_blocks|decoder\.up_blocks)\.\d+\.\d+\.", k) for k in keys
    ):
        return "a DC-AE (deep compression autoencoder, LetsTalk's latent space; load it with load_dcae)"
    if has("model.diffusion_model.", "input_blocks.", "time_embed", "transformer_blocks.", "double_blocks."):
        return "a diffusion model (UNet/transformer) with no VAE inside"
    if has("text_model.", "cond_stage_model.", "transformer.resblocks.", "shared.weight"):
        return "a text encoder"
    if has("time_mix", "temporal", ".conv3d", "time_conv"):
        return "a video VAE"
    if not keys:
        return "an empty file"
    return "an unrecognised model"


def _plan_keys(keys: list[str], source: str) -> tuple[str, str, dict[str, str], list[str]]:
    """``(layout, prefix, {diffusers key: file key}, unknown file keys)`` for a checkpoint's key names."""
    prefix, stripped = strip_vae_prefix(list(keys))
    layout = detect_sd_vae_layout(stripped, source)
    if layout == "ldm":
        levels = [int(m[1]) for k in stripped if (m := re.match(r"^decoder\.up\.(\d+)\.", k))]
        levels = levels or [int(m[1]) for k in stripped if (m := re.match(r"^encoder\.down\.(\d+)\.", k))]
        num_levels = max(levels) + 1 if levels else 0
        rename = lambda k: ldm_vae_key_to_diffusers(k, num_levels)  # noqa: E731
    else:
        rename = _diffusers_key
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for key in stripped:
        new = rename(key)
        if new is None or new in mapping:
            unknown.append(prefix + key)
        else:
            mapping[new] = prefix + key
    return layout, prefix, mapping, unknown


def convert_ldm_vae_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an LDM/CompVis SD VAE state dict (optionally under ``first_stage_model.``) to diffusers' layout
    (``ldm_vae_key_to_diffusers``) and turn the attention 1×1 conv weights into linear ones. Pure: the
    input is not modified; tensors are shared (views). ``ValueError`` lists keys that are not VAE keys."""
    layout, _, mapping, unknown = _plan_keys(list(state_dict), "the state dict")
    if layout != "ldm":
        raise ValueError("the state dict already uses diffusers' key names; nothing to convert.")
    if unknown:
        raise ValueError(f"{len(unknown)} keys are not SD VAE (LDM) keys, e.g. {unknown[:5]}.")
    return {
        new: as_linear_weight(state_dict[old]) if _LINEAR_WEIGHT.match(new) else state_dict[old]
        for new, old in mapping.items()
    }


def infer_sd_vae_shape(shapes: Mapping[str, tuple[int, ...]], source: str = "the checkpoint") -> dict[str, Any]:
    """The shape-defining config fields (``_SHAPE_FIELDS``) read off diffusers-named tensor shapes.
    ``norm_num_groups`` and ``scaling_factor`` cannot be seen in weights; they stay SD's (32, 0.18215)."""

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ValueError(
                f"{source} lacks '{key}', which every SD VAE has: the file is incomplete or not a full SD VAE "
                "(an encoder-only or decoder-only file?). Download it again or pick the right file."
            )
        return tuple(shapes[key])

    levels = sorted({int(m[1]) for k in shapes if (m := re.match(r"^encoder\.down_blocks\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"{source}: encoder levels {levels} are not 0..n-1; the file is incomplete or not an SD VAE.")
    resnets = {int(m[1]) for k in shapes if (m := re.match(r"^encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))}
    return {
        "in_channels": need("encoder.conv_in.weight")[1],
        "out_channels": need("decoder.conv_out.weight")[0],
        "latent_channels": need("decoder.conv_in.weight")[1],
        "block_out_channels": tuple(need(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in levels),
        "layers_per_block": max(resnets) + 1 if resnets else 0,
        "use_quant_conv": any(k.startswith("quant_conv.") for k in shapes),
        "use_post_quant_conv": any(k.startswith("post_quant_conv.") for k in shapes),
        "mid_block_add_attention": any(".mid_block.attentions." in k for k in shapes),
    }


# ------------------------------------------------------------------------------------------------ loading

_SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
_TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _DictSource:
    """Tensors already in memory (a state dict, or a ``torch.load`` result)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], name: str) -> None:
        self.tensors, self.name = tensors, name

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]


class _SafetensorsSource:
    """A memory-mapped safetensors file read one tensor at a time (``safe_open``), so loading never holds a
    second full copy of the weights."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.name = f"'{path.name}'"
        self.path = path
        self._handle = self._guard(lambda: safe_open(str(path), framework="pt", device="cpu"))
        self._handle.__enter__()

    def _guard(self, read):
        try:
            return read()
        except Exception as err:  # safetensors raises SafetensorError (a bare Exception subclass) or OSError
            if type(err).__name__ != "SafetensorError" and not isinstance(err, OSError):
                raise
            raise ValueError(
                f"{self.name} is incomplete or corrupt and cannot be read as safetensors ({err}). The download was "
                f"probably interrupted: download it again ('{self.path}')."
            ) from err

    def close(self) -> None:
        self._handle.__exit__(None, None, None)

    def keys(self) -> list[str]:
        return list(self._handle.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._guard(lambda: self._handle.get_slice(key).get_shape()))

    def get(self, key: str) -> torch.Tensor:
        return self._guard(lambda: self._handle.get_tensor(key))


def _torch_source(path: Path) -> _DictSource:
    """``torch.load(weights_only=True)`` (memory-mapped when the file is a zip archive); a file whose pickle
    needs more than tensors and plain containers is refused with a request for safetensors."""
    from .checkpoint import unwrap_state_dict

    def load(mmap: bool):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = load(mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            obj = load(mmap=False)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"'{path.name}' contains Python objects besides tensors and was not loaded (no pickled code is ever "
            f"run). Use the .safetensors version of this VAE instead ({err})."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"'{path.name}' is incomplete or corrupt ({err}); download it again ('{path}').") from err
    return _DictSource(unwrap_state_dict(obj), f"'{path.name}'")


def _resolve(path: str | Path) -> tuple[Path, Path | None]:
    """The weights file and the ``config.json`` that describes it (``None`` if there is none)."""
    if path is None or str(path) == "":
        raise ValueError("No SD VAE path was given.")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"SD VAE not found: '{p}'. Check the path (it is resolved from '{Path.cwd()}').")
    if p.is_dir():
        if not any((p / n).is_file() for n in _DIFFUSERS_WEIGHTS) and (p / "vae").is_dir():
            p = p / "vae"  # a whole diffusers pipeline folder
        for name in _DIFFUSERS_WEIGHTS:
            if (p / name).is_file():
                config = p / "config.json"
                return p / name, (config if config.is_file() else None)
        found = sorted(x.name for x in p.iterdir())[:10]
        raise ValueError(
            f"folder '{p}' holds no SD VAE weights: expected 'diffusion_pytorch_model.safetensors' with its "
            f"config.json (a diffusers VAE folder); found {found}. For a single file, give the file itself."
        )
    config = p.with_name("config.json")
    use_config = p.name.startswith("diffusion_pytorch_model") and config.is_file()
    return p, (config if use_config else None)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"could not read the SD VAE config '{path}' ({err}); download it again.") from err
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' must hold a JSON object (a diffusers AutoencoderKL config).")
    return data


def load_sd_vae(
    path: str | Path | Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scaling_factor: float | None = None,
) -> SDVAE:
    """Load a Stable Diffusion VAE, in ``eval()`` mode on ``device`` in ``dtype`` (fp32, fp16 or bf16).

    ``path``: a diffusers VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors``; a pipeline
    folder with a ``vae/`` subfolder works too), a single ``.safetensors`` file in diffusers or LDM/CompVis
    layout (ComfyUI ``models/vae``; a full SD checkpoint's ``first_stage_model.`` part is used), a
    ``.ckpt``/``.pt``/``.pth``/``.bin`` (``torch.load(weights_only=True)`` only), or an in-memory state dict.
    Layout and architecture are detected from the key names and shapes; a ``config.json`` must agree with
    them. Safetensors are read memory-mapped, one tensor at a time, cast as they are copied in.

    ``scaling_factor``: overrides the config's (default 0.18215, SD 1.x/2.x; a bare file carries none, so
    give 0.13025 for SDXL's VAE).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in _DTYPES]}, got {dtype!r}.")
    config_data, config_name = None, ""
    if isinstance(path, Mapping):
        from .checkpoint import unwrap_state_dict

        source: _DictSource | _SafetensorsSource = _DictSource(unwrap_state_dict(path), "the given state dict")
    else:
        weights, config_path = _resolve(path)
        if config_path is not None:
            config_data, config_name = _read_config(config_path), f"'{config_path}'"
        if weights.suffix in _SAFETENSORS_SUFFIXES:
            source = _SafetensorsSource(weights)
        elif weights.suffix in _TORCH_SUFFIXES:
            source = _torch_source(weights)
        else:
            raise ValueError(
                f"unsupported SD VAE file type '{weights.suffix}' ({weights.name}); use .safetensors "
                f"(or one of {list(_TORCH_SUFFIXES)})."
            )
    try:
        return _build(source, config_data, config_name, device, dtype, scaling_factor)
    finally:
        if isinstance(source, _SafetensorsSource):
            source.close()


def _build(source, config_data, config_name, device, dtype, scaling_factor) -> SDVAE:
    layout, _, mapping, unknown = _plan_keys(source.keys(), source.name)
    shapes = {new: _linear_shape(new, source.shape(old)) for new, old in mapping.items()}
    inferred = infer_sd_vae_shape(shapes, source.name)
    if config_data is None:
        try:
            config = SDVAEConfig(**inferred)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source.name} does not hold a usable SD VAE: {err}") from err
    else:
        config = SDVAEConfig.from_diffusers_config(config_data, config_name, inferred=inferred)
    if scaling_factor is not None:
        config = dataclasses.replace(config, scaling_factor=scaling_factor)
    with torch.device("meta"):
        model = SDVAE(config).to(dtype)
    given = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    given.update({k: torch.empty(0, device="meta") for k in unknown})
    names = " (tensor names in diffusers' layout)" if layout == "ldm" else ""
    target = f"an SD VAE of widths {list(config.block_out_channels)}, {config.latent_channels} latent channels{names}"
    if config_data is not None:
        target += f" as {config_name} describes"
    check_tensors(model.state_dict(), given, source.name, target)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for key, param in model.state_dict().items():
            tensor = source.get(mapping[key])
            param.copy_(as_linear_weight(tensor) if _LINEAR_WEIGHT.match(key) else tensor)
            del tensor
    return model.eval()
