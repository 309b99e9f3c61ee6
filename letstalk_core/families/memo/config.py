"""Configs of MEMO's two UNets, read from the ``config.json`` files of the published folder.

The published files are diffusers ``save_config`` output of the reference classes
``memo/models/unet_2d_condition.py::UNet2DConditionModel`` (the Reference Net, an SD1.5 UNet) and
``memo/models/unet_3d.py::UNet3DConditionModel`` (the Diffusion Net). Every field of those classes'
constructors is known here with the reference's default. A file is refused, with its path in the
message, when it has a field neither class knows, lacks a field that decides the architecture, or
asks for a feature these classes have but MEMO does not use (e.g. ``class_embed_type``), which this
implementation does not build.

Naming follows diffusers: ``attention_head_dim`` is, as in SD1.5, the number of heads (8); each
attention layer's head width is its channel count divided by it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# Constructor defaults of the reference classes (memo a5aee30 with diffusers 0.31).
_COMMON_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "only_cross_attention": False, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32,
    "norm_eps": 1e-5, "cross_attention_dim": 1280, "attention_head_dim": 8, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "num_class_embeds": None,
    "upcast_attention": False, "resnet_time_scale_shift": "default", "center_input_sample": False,
}
_REFERENCE_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "dropout": 0.0, "transformer_layers_per_block": 1, "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "num_attention_heads": None,
    "addition_embed_type": None, "addition_time_embed_dim": None, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None, "cross_attention_norm": None,
    "addition_embed_type_num_heads": 64, "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
}
_DIFFUSION_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS, "in_channels": 8, "out_channels": 8,
    "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    "use_inflated_groupnorm": False, "motion_module_resolutions": (1, 2, 4, 8), "motion_module_kwargs": None,
    "unet_use_cross_frame_attention": None, "unet_use_temporal_attention": None,
    "audio_attention_dim": 768, "emo_drop_rate": 0.3,
}
# Fields without which the architecture is unknown: a config.json must state them.
_ARCHITECTURE = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "attention_head_dim",
                 "cross_attention_dim", "down_block_types", "up_block_types")
_ARCHITECTURE_3D = _ARCHITECTURE + ("audio_attention_dim", "motion_module_kwargs", "motion_module_resolutions")
# Features the reference classes offer but MEMO does not use: only these values are built here.
_FIXED: dict[str, tuple] = {
    "only_cross_attention": (False,), "dual_cross_attention": (False,), "use_linear_projection": (False,),
    "class_embed_type": (None,), "num_class_embeds": (None,), "resnet_time_scale_shift": ("default",),
    "act_fn": ("silu", "swish"), "transformer_layers_per_block": (1,), "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,), "addition_embed_type": (None,),
    "time_embedding_type": ("positional",), "time_embedding_dim": (None,), "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,), "time_cond_proj_dim": (None,), "conv_in_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,), "attention_type": ("default",),
    "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,), "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0, 1),
    "unet_use_cross_frame_attention": (None, False), "unet_use_temporal_attention": (None, False),
    "downsample_padding": (1,), "mid_block_scale_factor": (1, 1.0), "dropout": (0.0, 0),
}
# Inputs of the reference classes that a saved config may carry under another name.
_ALIASES = {"_out_channels": "out_channels", "_center_input_sample": "center_input_sample"}

_MOTION_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 8, "num_transformer_block": 2, "attention_block_types": ("Temporal_Self", "Temporal_Self"),
    "temporal_position_encoding": False, "temporal_position_encoding_max_len": 24,
    "temporal_attention_dim_div": 1, "zero_initialize": True,
}


@dataclass(frozen=True)
class MotionModuleConfig:
    """``MemoryLinearAttnTemporalModule`` settings (``motion_module_kwargs`` of the Diffusion Net)."""

    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    temporal_position_encoding_max_len: int = 32
    temporal_attention_dim_div: int = 1

    def __post_init__(self):
        for name in ("num_attention_heads", "num_transformer_block", "temporal_position_encoding_max_len",
                     "temporal_attention_dim_div"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"motion_module_kwargs.{name} must be a positive integer; got {v!r}.")
        bad = [t for t in self.attention_block_types if t != "Temporal_Self"]
        if bad or not self.attention_block_types:
            raise ValueError(
                f"motion_module_kwargs.attention_block_types must be a list of 'Temporal_Self' (MEMO's memory-guided "
                f"temporal self-attention); got {list(self.attention_block_types)!r}."
            )


@dataclass(frozen=True)
class UNetConfig:
    """What both UNets share. ``kind`` is ``"reference"`` (2D) or ``"diffusion"`` (3D)."""

    kind: str
    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_head_dim: int  # the number of heads, as in SD1.5 (see the module docstring)
    cross_attention_dim: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    center_input_sample: bool = False
    sample_size: int | None = None
    # Diffusion Net only
    use_inflated_groupnorm: bool = False
    motion_module_resolutions: tuple[int, ...] = ()
    motion: MotionModuleConfig | None = None
    audio_attention_dim: int = 768
    emo_drop_rate: float = 0.3
    source: str = field(default="", compare=False)

    def __post_init__(self):
        where = f" in {self.source}" if self.source else ""
        n = len(self.block_out_channels)
        if not (len(self.down_block_types) == len(self.up_block_types) == n) or n < 1:
            raise ValueError(
                f"UNet config{where}: block_out_channels, down_block_types and up_block_types must have the same "
                f"length; got {n}, {len(self.down_block_types)}, {len(self.up_block_types)}."
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.attention_head_dim:
                raise ValueError(
                    f"UNet config{where}: block_out_channels {list(self.block_out_channels)} must be multiples of "
                    f"norm_num_groups={self.norm_num_groups} and attention_head_dim={self.attention_head_dim}."
                )
        suffix = "2D" if self.kind == "reference" else "3D"
        for i, (d, u) in enumerate(zip(self.down_block_types, self.up_block_types)):
            if d not in (f"CrossAttnDownBlock{suffix}", f"DownBlock{suffix}") or \
                    u not in (f"CrossAttnUpBlock{suffix}", f"UpBlock{suffix}"):
                raise ValueError(f"UNet config{where}: block {i} has types {d!r}/{u!r}; a {self.kind} net uses "
                                 f"CrossAttnDownBlock{suffix}/DownBlock{suffix} and the matching up blocks.")
        if self.kind == "diffusion" and self.motion is None:
            raise ValueError(f"UNet config{where}: the Diffusion Net needs motion_module_kwargs.")

    def has_cross_attention(self, i: int, up: bool = False) -> bool:
        types = self.up_block_types if up else self.down_block_types
        return types[i].startswith("CrossAttn")

    def has_motion(self, resolution: int) -> bool:
        return resolution in self.motion_module_resolutions


def _as_tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def parse_unet_config(raw: Mapping[str, Any], kind: str, source: str = "config.json") -> UNetConfig:
    """Build a :class:`UNetConfig` from a published ``config.json`` dict (``kind``: ``"reference"`` or
    ``"diffusion"``); ``ValueError`` naming ``source`` for unknown, missing or unsupported fields."""
    if kind not in ("reference", "diffusion"):
        raise ValueError(f"kind must be 'reference' or 'diffusion'; got {kind!r}.")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source} must hold a JSON object; got {type(raw).__name__}.")
    defaults = _REFERENCE_DEFAULTS if kind == "reference" else _DIFFUSION_DEFAULTS
    values = {}
    for key, v in raw.items():
        key = _ALIASES.get(key, key)
        if key.startswith("_"):
            continue  # diffusers' bookkeeping: _class_name, _diffusers_version, _name_or_path, ...
        values[key] = v
    if kind == "diffusion":
        # The published diffusion_net/config.json was made from the SD1.5 2D config (Hallo's
        # ``from_pretrained_2d``) and still carries 2D fields the 3D class does not take; diffusers drops
        # them when it builds the reference, and so do we (``center_input_sample`` is read by its forward).
        values = {k: v for k, v in values.items()
                  if k in _DIFFUSION_DEFAULTS or k not in _REFERENCE_DEFAULTS}
    unknown = sorted(k for k in values if k not in defaults)
    if unknown:
        other = _DIFFUSION_DEFAULTS if kind == "reference" else _REFERENCE_DEFAULTS
        hint = (" These are fields of the other MEMO UNet: is this the "
                f"{'diffusion_net' if kind == 'reference' else 'reference_net'} folder?") \
            if all(k in other for k in unknown) else ""
        raise ValueError(f"{source} has fields the MEMO {kind} net does not know: {unknown}.{hint} "
                         "Use the config.json published with the weights (huggingface.co/memoavatar/memo).")
    needed = _ARCHITECTURE if kind == "reference" else _ARCHITECTURE_3D
    missing = [k for k in needed if k not in values]
    if missing:
        raise ValueError(f"{source} lacks the field(s) {missing}, which decide the network's shape. "
                         "Use the config.json published with the weights (huggingface.co/memoavatar/memo).")
    cfg = {k: _as_tuple(values.get(k, d)) for k, d in defaults.items()}
    for key, allowed in _FIXED.items():
        if key in cfg and cfg[key] not in allowed:
            raise ValueError(f"{source} sets {key}={cfg[key]!r}; MEMO's networks use {allowed[0]!r} and this "
                             "implementation builds only that.")
    heads = cfg.get("num_attention_heads")
    if heads is not None and heads != cfg["attention_head_dim"]:
        raise ValueError(f"{source}: num_attention_heads={heads} differs from attention_head_dim="
                         f"{cfg['attention_head_dim']}; SD1.5-style UNets use one value (the number of heads).")
    if isinstance(cfg["attention_head_dim"], tuple):
        if len(set(cfg["attention_head_dim"])) != 1:
            raise ValueError(f"{source}: per-block attention_head_dim {list(cfg['attention_head_dim'])} is not "
                             "supported; MEMO uses one value for every block.")
        cfg["attention_head_dim"] = cfg["attention_head_dim"][0]
    mid = cfg["mid_block_type"]
    if mid != ("UNetMidBlock2DCrossAttn" if kind == "reference" else "UNetMidBlock3DCrossAttn"):
        raise ValueError(f"{source}: mid_block_type {mid!r} is not MEMO's.")
    motion = None
    if kind == "diffusion":
        mk = cfg["motion_module_kwargs"]
        if not isinstance(mk, Mapping):
            raise ValueError(f"{source}: motion_module_kwargs must be an object; got {mk!r}.")
        unknown_mk = sorted(set(mk) - set(_MOTION_DEFAULTS))
        if unknown_mk:
            raise ValueError(f"{source}: motion_module_kwargs has unknown fields {unknown_mk}.")
        m = {k: _as_tuple(mk.get(k, d)) for k, d in _MOTION_DEFAULTS.items()}
        m.pop("zero_initialize")  # an initialisation choice; the weights are loaded
        motion = MotionModuleConfig(**m)
    try:
        return UNetConfig(
            kind=kind, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
            block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
            attention_head_dim=cfg["attention_head_dim"], cross_attention_dim=cfg["cross_attention_dim"],
            down_block_types=tuple(cfg["down_block_types"]), up_block_types=tuple(cfg["up_block_types"]),
            norm_num_groups=cfg["norm_num_groups"], norm_eps=float(cfg["norm_eps"]),
            flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]), freq_shift=cfg["freq_shift"],
            center_input_sample=bool(cfg["center_input_sample"]), sample_size=cfg["sample_size"],
            use_inflated_groupnorm=bool(cfg.get("use_inflated_groupnorm", False)),
            motion_module_resolutions=tuple(cfg.get("motion_module_resolutions", ())), motion=motion,
            audio_attention_dim=cfg.get("audio_attention_dim", 768), emo_drop_rate=float(cfg.get("emo_drop_rate", 0.3)),
            source=source,
        )
    except TypeError as e:  # e.g. a list where a number belongs
        raise ValueError(f"{source}: a field has the wrong type ({e}).") from None
