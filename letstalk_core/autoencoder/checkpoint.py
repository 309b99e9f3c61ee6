"""DC-AE checkpoints: the two published key layouts, conversion and loading (components.md 1.5).

* ``original``: mit-han-lab/efficientvit (``DCAE_HF`` safetensors, ``{"state_dict": ...}`` .pt files);
  keys like ``encoder.project_in.conv.weight`` / ``encoder.stages.1.op_list.0.main.conv1.conv.weight``.
* ``diffusers``: ``AutoencoderDC`` (``-diffusers`` repos), our canonical layout (``dc_ae.DCAE``).

The conversion reproduces diffusers' ``convert_autoencoder_dc_checkpoint_to_diffusers``
(``loaders/single_file_utils.py``, same rules as ``scripts/convert_dcae_to_diffusers.py``).
Files this package writes are safetensors whose metadata key ``letstalk_config`` holds the
``DCAEConfig`` as JSON, so they load without a side file.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..validation import check_state_dict as check_tensors, require_file
from .config import DCAE_PRESETS, DCAEConfig, dcae_config_from_diffusers_json, get_dcae_config
from .dc_ae import DCAE

CONFIG_METADATA_KEY = "letstalk_config"
_WRAPPER_KEYS = ("model", "module", "state_dict")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# Ordered string replacements (components.md 1.5, rule 1).
_RENAMES = (
    ("main.", ""),
    ("op_list.", ""),
    ("context_module", "attn"),
    ("local_module", "conv_out"),
    ("aggreg.0.0", "to_qkv_multiscale.0.proj_in"),
    ("aggreg.0.1", "to_qkv_multiscale.0.proj_out"),
    ("depth_conv.conv", "conv_depth"),
    ("inverted_conv.conv", "conv_inverted"),
    ("point_conv.conv", "conv_point"),
    ("point_conv.norm", "norm"),
    ("conv.conv.", "conv."),
    ("conv1.conv", "conv1"),
    ("conv2.conv", "conv2"),
    ("conv2.norm", "norm"),
    ("proj.norm", "norm_out"),
    ("encoder.project_in.conv", "encoder.conv_in"),
    ("encoder.project_out.0.conv", "encoder.conv_out"),
    ("encoder.stages", "encoder.down_blocks"),
    ("decoder.project_in.conv", "decoder.conv_in"),
    ("decoder.project_out.0", "decoder.norm_out"),
    ("decoder.project_out.2.conv", "decoder.conv_out"),
    ("decoder.stages", "decoder.up_blocks"),
)


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Strip ``{"model": ...}``, ``{"module": ...}`` and ``{"state_dict": ...}`` wrappers (any nesting)."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}.")
    while True:
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"the checkpoint holds no tensors (top-level keys: {list(obj)[:8]}).")
    return tensors


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"original"`` if a key contains ``encoder.project_in.`` or ``.op_list.``; ``"diffusers"`` if one starts
    with ``encoder.conv_in.``; otherwise ``ValueError`` (not a DC-AE)."""
    keys = list(state_dict)
    if any(k.startswith("encoder.project_in.") or ".op_list." in k for k in keys):
        return "original"
    if any(k.startswith("encoder.conv_in.") for k in keys):
        return "diffusers"
    raise ValueError(
        "this does not look like a DC-AE checkpoint: expected keys such as 'encoder.conv_in.weight' (diffusers) "
        f"or 'encoder.project_in.conv.weight' (mit-han-lab original); first keys found: {keys[:5]}."
    )


def _renames(config: DCAEConfig) -> tuple[tuple[str, str], ...]:
    """Rule 2: when stage 0 is empty (in/mix) the stem and head are resampling blocks with a ``.conv``."""
    overrides = {}
    if config.encoder_layers_per_block[0] == 0:
        overrides["encoder.project_in.conv"] = "encoder.conv_in.conv"
    if config.decoder_layers_per_block[0] == 0:
        overrides["decoder.project_out.2.conv"] = "decoder.conv_out.conv"
    return tuple((old, overrides.get(old, new)) for old, new in _RENAMES)


def _as_matrix(key: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim != 4 or tensor.shape[2:] != (1, 1):
        raise ValueError(f"'{key}' should be a 1x1 convolution weight [out, in, 1, 1], got {tuple(tensor.shape)}.")
    return tensor.flatten(1)


def convert_original_to_diffusers(state_dict: Mapping, config: DCAEConfig) -> dict[str, torch.Tensor]:
    """Rename an original (efficientvit) DC-AE state dict to the diffusers / ``DCAE`` layout.

    Rule 1 renames, rule 2 in/mix overrides, rule 3: ``qkv.conv.weight`` ``[3C, C, 1, 1]`` is split in
    thirds into ``to_q/to_k/to_v.weight`` ``[C, C]`` and ``proj.conv.weight`` becomes ``to_out.weight``
    (reshaped rather than squeezed, so size-1 dimensions survive).
    """
    if not isinstance(config, DCAEConfig):
        raise TypeError(f"config must be a DCAEConfig, got {type(config).__name__}.")
    renames = _renames(config)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unwrap_state_dict(state_dict).items():
        new = key
        for old, rep in renames:
            new = new.replace(old, rep)
        if new.endswith(".qkv.conv.weight"):
            parent = new.removesuffix(".qkv.conv.weight")
            q, k, v = _as_matrix(key, tensor).chunk(3, dim=0)
            out.update({f"{parent}.to_q.weight": q, f"{parent}.to_k.weight": k, f"{parent}.to_v.weight": v})
        elif new.endswith(".proj.conv.weight"):
            out[new.removesuffix(".proj.conv.weight") + ".to_out.weight"] = _as_matrix(key, tensor)
        else:
            out[new] = tensor
    return out


def _resolve_explicit(config: DCAEConfig | str | None) -> DCAEConfig | None:
    if config is None or isinstance(config, DCAEConfig):
        return config
    if isinstance(config, str):
        return get_dcae_config(config)
    raise TypeError(f"config must be a DCAEConfig, a preset name or None, got {type(config).__name__}.")


def _config_from_json_file(path: Path) -> DCAEConfig:
    """A ``config.json`` next to the weights: original ``{"model_name": ...}`` or a diffusers config."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"could not read DC-AE config '{path}': {err}") from err
    if isinstance(data, dict) and "model_name" in data:
        return get_dcae_config(str(data["model_name"]))
    return dcae_config_from_diffusers_json(data)


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], DCAEConfig | None]:
    """Tensors and, when the file or a ``config.json`` beside it says so, the config."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        if CONFIG_METADATA_KEY in metadata:
            return tensors, DCAEConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    elif path.suffix in _TORCH_SUFFIXES:
        tensors = unwrap_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    else:
        raise ValueError(
            f"unsupported DC-AE file type '{path.suffix}' ({path.name}); "
            f"use .safetensors or one of {list(_TORCH_SUFFIXES)}."
        )
    side = path.with_name("config.json")
    return tensors, (_config_from_json_file(side) if side.is_file() else None)


def _pick_config(found: DCAEConfig | None, explicit: DCAEConfig | None, source: str) -> DCAEConfig:
    if found is not None and explicit is not None and found != explicit:
        diff = [
            f"{k}: given {v!r}, stored {found.to_dict()[k]!r}"
            for k, v in explicit.to_dict().items()
            if found.to_dict()[k] != v
        ]
        raise ValueError(
            f"the config given does not match the one stored with {source} ({'; '.join(diff)}); "
            "pass config=None to use the stored one."
        )
    config = found or explicit
    if config is None:
        raise ValueError(
            f"{source} carries no DC-AE config (no '{CONFIG_METADATA_KEY}' metadata, no config.json beside it); "
            f"pass config= one of: {', '.join(DCAE_PRESETS)}, or a DCAEConfig."
        )
    return config


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], source: str) -> None:
    """``ValueError`` naming the first missing, unexpected and mis-shaped keys (with both shapes)."""
    check_tensors(expected, given, source, "the DC-AE config")


def load_dcae(
    source: str | Path | Mapping,
    config: DCAEConfig | str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DCAE:
    """Load a DC-AE from a file (.safetensors, .pt/.pth/.bin/.ckpt) or an in-memory state dict.

    Config: the file's ``letstalk_config`` metadata, else a ``config.json`` beside it (original or
    diffusers style), else ``config`` (a ``DCAEConfig`` or preset name); a given ``config`` that
    contradicts the stored one is an error. Either key layout is accepted (``detect_layout``). The
    model is returned in ``eval()`` mode on ``device`` in ``dtype``, its convolutions channels-last
    (:meth:`DCAE.use_channels_last`).
    """
    explicit = _resolve_explicit(config)
    if isinstance(source, Mapping):
        tensors, found, name = unwrap_state_dict(source), None, "the given state dict"
    else:
        path = require_file(source, "DC-AE checkpoint")
        tensors, found = _read_file(path)
        name = f"'{path.name}'"
    cfg = _pick_config(found, explicit, name)
    if detect_layout(tensors) == "original":
        tensors = convert_original_to_diffusers(tensors, cfg)
    with torch.device("meta"):
        model = DCAE(cfg)
    check_state_dict(model.state_dict(), tensors, name)
    model = model.to_empty(device=device).to(dtype=dtype)
    model.load_state_dict(tensors, strict=True)
    return model.use_channels_last().eval()


def save_dcae(model: DCAE, config: DCAEConfig, path: str | Path) -> Path:
    """Write ``model`` as safetensors (diffusers layout) with ``config`` as JSON in the metadata under
    ``letstalk_config``. ``config`` must describe the same tensors (it may differ in ``scaling_factor``)."""
    from safetensors.torch import save_file

    if not isinstance(model, DCAE):
        raise TypeError(f"model must be a DCAE, got {type(model).__name__}.")
    if not isinstance(config, DCAEConfig):
        raise TypeError(f"config must be a DCAEConfig, got {type(config).__name__}.")
    with torch.device("meta"):
        reference = DCAE(config).state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    check_state_dict(reference, state, "the model")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_dcae writes safetensors; give a path ending in .safetensors, got '{path}'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(config.to_dict()), "format": "pt"})
    return path
