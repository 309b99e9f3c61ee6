"""Configuration of the deep compression autoencoder (DC-AE, arXiv 2410.10733).

``DCAEConfig`` mirrors the keyword arguments of diffusers' ``AutoencoderDC``
(``models/autoencoders/autoencoder_dc.py``), so a diffusers ``config.json`` maps onto it one to one,
and its defaults are diffusers' defaults. The named presets reproduce the released
``mit-han-lab/dc-ae-*`` models (efficientvit ``dc_ae.py`` configs as translated by diffusers'
``scripts/convert_dcae_to_diffusers.py``; reference: components.md section 1.1-1.2).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
NORM_TYPES = ("rms_norm", "batch_norm")
ACT_FNS = ("relu", "silu", "gelu")
DOWNSAMPLE_TYPES = ("pixel_unshuffle", "conv")
UPSAMPLE_TYPES = ("pixel_shuffle", "interpolate")

_PER_STAGE_FIELDS = (
    "encoder_block_types",
    "decoder_block_types",
    "encoder_layers_per_block",
    "decoder_layers_per_block",
    "encoder_qkv_multiscales",
    "decoder_qkv_multiscales",
    "decoder_norm_types",
    "decoder_act_fns",
)


@dataclass(frozen=True)
class DCAEConfig:
    """Architecture and latent scale of a DC-AE.

    Per-stage fields accept one string for all stages (as diffusers does) and are stored as tuples.
    ``scaling_factor`` multiplies encoder outputs (``z = E(x)·sf``) and divides decoder inputs; there is
    no shift term (components.md 1.1).
    """

    in_channels: int = 3
    latent_channels: int = 32
    attention_head_dim: int = 32
    encoder_block_types: tuple[str, ...] | str = "ResBlock"
    decoder_block_types: tuple[str, ...] | str = "ResBlock"
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    encoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3, 3)
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    encoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    upsample_block_type: str = "pixel_shuffle"
    downsample_block_type: str = "pixel_unshuffle"
    decoder_norm_types: tuple[str, ...] | str = "rms_norm"
    decoder_act_fns: tuple[str, ...] | str = "silu"
    encoder_out_shortcut: bool = True
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"
    scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        self._normalise()
        self._validate_scalars()
        self._validate_stages("encoder")
        self._validate_stages("decoder")

    # -- construction helpers -------------------------------------------------------------------
    def _normalise(self) -> None:
        """Turn lists into tuples and broadcast single strings to one entry per stage."""
        values = {}
        for part in ("encoder", "decoder"):
            widths = _int_tuple(getattr(self, f"{part}_block_out_channels"), f"{part}_block_out_channels")
            scales = getattr(self, f"{part}_qkv_multiscales")
            if not isinstance(scales, (list, tuple)):
                raise TypeError(f"{part}_qkv_multiscales must be a list of per-stage kernel-size lists, got {scales!r}")
            values[f"{part}_block_out_channels"] = widths
            values[f"{part}_qkv_multiscales"] = tuple(_int_tuple(s, f"{part}_qkv_multiscales entry") for s in scales)
            values[f"{part}_layers_per_block"] = _int_tuple(
                getattr(self, f"{part}_layers_per_block"), f"{part}_layers_per_block"
            )
            string_fields = [f"{part}_block_types"]
            if part == "decoder":
                string_fields += ["decoder_norm_types", "decoder_act_fns"]
            for field in string_fields:
                values[field] = _str_tuple(getattr(self, field), len(widths), field)
        values["scaling_factor"] = float(self.scaling_factor)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _validate_scalars(self) -> None:
        for name in ("in_channels", "latent_channels", "attention_head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DCAEConfig.{name} must be a positive integer, got {value!r}.")
        _require_choice(self.downsample_block_type, DOWNSAMPLE_TYPES, "downsample_block_type")
        _require_choice(self.upsample_block_type, UPSAMPLE_TYPES, "upsample_block_type")
        _require_choice(self.decoder_conv_act_fn, ACT_FNS, "decoder_conv_act_fn")
        for name in ("encoder_out_shortcut", "decoder_in_shortcut"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"DCAEConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"DCAEConfig.scaling_factor must be a finite number > 0, got {self.scaling_factor!r}.")
        if len(self.encoder_block_out_channels) != len(self.decoder_block_out_channels):
            raise ValueError(
                "encoder and decoder must have the same number of stages (same compression factor); got "
                f"{len(self.encoder_block_out_channels)} and {len(self.decoder_block_out_channels)}."
            )
        if len(self.encoder_block_out_channels) < 2:
            raise ValueError("a DC-AE needs at least 2 stages (one down/upsampling step).")

    def _validate_stages(self, part: str) -> None:
        """Check per-stage lengths and the channel divisibility each block of diffusers' Encoder/Decoder needs."""
        widths = getattr(self, f"{part}_block_out_channels")
        n = len(widths)
        per_stage = [f for f in _PER_STAGE_FIELDS if f.startswith(part)]
        for field in per_stage:
            if len(getattr(self, field)) != n:
                raise ValueError(
                    f"DCAEConfig.{field} has {len(getattr(self, field))} entries but there are {n} stages "
                    f"({part}_block_out_channels={widths})."
                )
        layers = getattr(self, f"{part}_layers_per_block")
        if layers[0] < 0 or any(d < 1 for d in layers[1:]):
            raise ValueError(
                f"DCAEConfig.{part}_layers_per_block={layers}: stage 0 may have 0 layers (its resampling then moves "
                "into the stem), every later stage needs at least 1."
            )
        for i, (kind, width) in enumerate(zip(getattr(self, f"{part}_block_types"), widths)):
            _require_choice(kind, BLOCK_TYPES, f"{part}_block_types[{i}]")
            if width <= 0:
                raise ValueError(f"DCAEConfig.{part}_block_out_channels[{i}] must be > 0, got {width}.")
            if kind == "EfficientViTBlock" and width % self.attention_head_dim:
                raise ValueError(
                    f"{part} stage {i} is an EfficientViTBlock stage of width {width}, which is not a multiple of "
                    f"attention_head_dim={self.attention_head_dim}."
                )
            for k in getattr(self, f"{part}_qkv_multiscales")[i]:
                if k <= 0 or k % 2 == 0:
                    raise ValueError(f"{part}_qkv_multiscales[{i}] kernel sizes must be odd and > 0, got {k}.")
        for i in range(n - 1):
            _check_resample(part, widths[i], widths[i + 1], i)
        if widths[-1] % self.latent_channels:
            raise ValueError(
                f"the last {part} width {widths[-1]} must be a multiple of latent_channels={self.latent_channels} "
                "(the latent shortcut averages / duplicates channel groups)."
            )
        if part == "decoder":
            for i, norm in enumerate(self.decoder_norm_types):
                _require_choice(norm, NORM_TYPES, f"decoder_norm_types[{i}]")
            for i, act in enumerate(self.decoder_act_fns):
                _require_choice(act, ACT_FNS, f"decoder_act_fns[{i}]")
        if part == "encoder" and self.downsample_block_type == "pixel_unshuffle":
            bad = [w for w in widths[1:] if w % 4]
            if bad:
                raise ValueError(
                    f"pixel_unshuffle downsampling convolves to width/4 channels, so encoder widths after stage 0 "
                    f"must be multiples of 4; got {bad}."
                )

    # -- public API ---------------------------------------------------------------------------------
    @property
    def spatial_compression(self) -> int:
        """Spatial down-sampling factor of the encoder: ``2 ** (stages - 1)`` (32 for f32, 64 for f64)."""
        return 2 ** (len(self.encoder_block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists); ``from_dict`` inverts it."""
        return {f.name: _to_lists(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DCAEConfig":
        """Build a config from ``to_dict()`` output; unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError(f"DCAEConfig.from_dict expects a dict, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DC-AE config keys {unknown}; valid keys are {sorted(known)}.")
        return cls(**data)


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"DCAEConfig.{name} must be a list of integers, got {value!r}.")
    return tuple(value)


def _str_tuple(value: Any, n: int, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) * n
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"DCAEConfig.{name} must be a string or a list of strings, got {value!r}.")
    return tuple(value)


def _require_choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"DCAEConfig.{name}={value!r} is not supported; choose one of {list(choices)}.")


def _check_resample(part: str, c_hi: int, c_lo: int, i: int) -> None:
    """Shortcut shapes of diffusers' DCDownBlock2d / DCUpBlock2d between stage widths ``C_i`` and ``C_{i+1}``:
    pixel (un)shuffle by 2 then channel-group averaging (group ``4·C_i/C_{i+1}``) or duplication (repeats
    ``4·C_i/C_{i+1}``) both need ``4·C_i`` to be a multiple of ``C_{i+1}``."""
    if (4 * c_hi) % c_lo:
        raise ValueError(
            f"{part} widths {c_hi} (stage {i}) and {c_lo} (stage {i + 1}) are incompatible: the resampling shortcut "
            f"needs 4*{c_hi} to be a multiple of {c_lo}."
        )


_F32_WIDTHS = (128, 256, 512, 512, 1024, 1024)
_F64_WIDTHS = (*_F32_WIDTHS, 2048)


def _sana_config(scaling_factor: float) -> DCAEConfig:
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    scales = ((), (), (), (5,), (5,), (5,))
    return DCAEConfig(
        latent_channels=32,
        encoder_block_types=blocks,
        decoder_block_types=blocks,
        encoder_block_out_channels=_F32_WIDTHS,
        decoder_block_out_channels=_F32_WIDTHS,
        encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
        decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
        encoder_qkv_multiscales=scales,
        decoder_qkv_multiscales=scales,
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=scaling_factor,
    )


def _in_mix_config(widths: tuple[int, ...], latent_channels: int, scaling_factor: float) -> DCAEConfig:
    n = len(widths)
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * (n - 3)
    scales = ((),) * n
    return DCAEConfig(
        latent_channels=latent_channels,
        encoder_block_types=blocks,
        decoder_block_types=blocks,
        encoder_block_out_channels=widths,
        decoder_block_out_channels=widths,
        encoder_layers_per_block=(0, 4, 8) + (2,) * (n - 3),
        decoder_layers_per_block=(0, 5, 10) + (2,) * (n - 3),
        encoder_qkv_multiscales=scales,
        decoder_qkv_multiscales=scales,
        downsample_block_type="pixel_unshuffle",
        upsample_block_type="pixel_shuffle",
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * (n - 3),
        decoder_act_fns=("relu",) * 3 + ("silu",) * (n - 3),
        scaling_factor=scaling_factor,
    )


DCAE_PRESETS: dict[str, DCAEConfig] = {
    "dc-ae-f32c32-in-1.0": _in_mix_config(_F32_WIDTHS, 32, 0.3189),
    "dc-ae-f32c32-mix-1.0": _in_mix_config(_F32_WIDTHS, 32, 0.4552),
    "dc-ae-f32c32-sana-1.0": _sana_config(0.41407),
    "dc-ae-f32c32-sana-1.1": _sana_config(0.41407),
    "dc-ae-f64c128-in-1.0": _in_mix_config(_F64_WIDTHS, 128, 0.2889),
    "dc-ae-f64c128-mix-1.0": _in_mix_config(_F64_WIDTHS, 128, 0.4538),
}


def get_dcae_config(name: str) -> DCAEConfig:
    """Return the preset config for a released DC-AE. Accepts the bare name, the ``mit-han-lab/`` hub id
    and the ``-diffusers`` repo name (same architecture)."""
    if not isinstance(name, str):
        raise TypeError(f"DC-AE preset name must be a string, got {type(name).__name__}.")
    key = name.strip().split("/")[-1].removesuffix("-diffusers")
    if key not in DCAE_PRESETS:
        raise ValueError(f"unknown DC-AE preset {name!r}; valid names are: {', '.join(DCAE_PRESETS)}.")
    return DCAE_PRESETS[key]


def dcae_config_from_diffusers_json(data: dict[str, Any]) -> DCAEConfig:
    """Map a diffusers ``AutoencoderDC`` ``config.json`` to ``DCAEConfig``.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) are metadata; missing keys take
    diffusers' defaults (which are ours); any other key is not understood and raises ``ValueError``
    rather than building a different network than the file describes.
    """
    if not isinstance(data, dict):
        raise TypeError(f"a diffusers config must be a dict, got {type(data).__name__}.")
    class_name = data.get("_class_name", "AutoencoderDC")
    if class_name != "AutoencoderDC":
        raise ValueError(f"this config.json describes a {class_name!r}, not a DC-AE ('AutoencoderDC').")
    fields = {k: v for k, v in data.items() if not k.startswith("_")}
    if "block_out_channels" in fields:  # older diffusers converters wrote one shared list
        shared = fields.pop("block_out_channels")
        fields.setdefault("encoder_block_out_channels", shared)
        fields.setdefault("decoder_block_out_channels", shared)
    return DCAEConfig.from_dict(fields)
