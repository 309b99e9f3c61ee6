"""A native wav2vec 2.0 encoder with Hugging Face key names, and its checkpoint loader.

The math follows transformers ``models/wav2vec2/modeling_wav2vec2.py`` (``Wav2Vec2Model`` in eval
mode): the convolutional feature encoder (``Wav2Vec2GroupNormConvLayer`` /
``Wav2Vec2NoLayerNormConvLayer`` or ``Wav2Vec2LayerNormConvLayer``), ``Wav2Vec2FeatureProjection``,
the weight-normed positional convolution (``Wav2Vec2PositionalConvEmbedding`` +
``Wav2Vec2SamePadLayer``), and the post-LN (``Wav2Vec2Encoder``, base) or pre-LN
(``Wav2Vec2EncoderStableLayerNorm``, large-lv60) transformer. State-dict keys are the HF ones
without the ``wav2vec2.`` prefix; the positional convolution is stored as one plain, folded
``encoder.pos_conv_embed.conv.weight`` (``W = g * v / ||v||``, norm over dims (0, 1), ``dim=2``).
The loader accepts HF ``.safetensors``/``.bin`` files (legacy ``weight_g``/``weight_v`` or the
``parametrizations.weight.original0/1`` names) and ComfyUI ``audio_encoders`` files (same names,
often fp16), see ``reference/components.md`` §3.1 and ``reference/comfyui.md`` §5.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validation import require_file, require_tensor

__all__ = [
    "Wav2Vec2Config",
    "WAV2VEC2_PRESETS",
    "Wav2Vec2Encoder",
    "load_wav2vec2",
    "wav2vec2_state_dict",
    "fold_weight_norm",
    "infer_wav2vec2_config",
]


@dataclass(frozen=True)
class Wav2Vec2Config:
    """Architecture of a wav2vec2 encoder (defaults: facebook/wav2vec2-base-960h)."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "num_conv_pos_embeddings",
                     "num_conv_pos_embedding_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Wav2Vec2Config.{name} must be a positive integer, got {value!r}.")
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) >= 1):
            raise ValueError(
                "Wav2Vec2Config.conv_dim, conv_kernel and conv_stride must have the same non-zero length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}."
            )
        if any(v <= 0 for v in self.conv_dim + self.conv_kernel + self.conv_stride):
            raise ValueError("Wav2Vec2Config conv dims, kernels and strides must all be positive.")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"Wav2Vec2Config.feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"Wav2Vec2Config.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})."
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"Wav2Vec2Config.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_conv_pos_embedding_groups ({self.num_conv_pos_embedding_groups})."
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"Wav2Vec2Config.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")

    @property
    def receptive_field(self) -> int:
        """Samples seen by one CNN output frame (400 for the standard 7-layer extractor)."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride):
            field += (k - 1) * jump
            jump *= s
        return field

    @property
    def hop(self) -> int:
        """Samples between CNN output frames (320, i.e. 50 Hz at 16 kHz, for the standard extractor)."""
        hop = 1
        for s in self.conv_stride:
            hop *= s
        return hop

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Wav2Vec2Config":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown Wav2Vec2Config fields {sorted(unknown)}; expected a subset of {sorted(known)}.")
        return cls(**dict(d))

    @classmethod
    def from_hf(cls, d: Mapping) -> "Wav2Vec2Config":
        """Build from a transformers ``config.json`` dict (``model_type`` wav2vec2)."""
        for act_key in ("hidden_act", "feat_extract_activation"):
            if d.get(act_key, "gelu") != "gelu":
                raise ValueError(f"Only gelu activations are supported, config.json has {act_key}={d[act_key]!r}.")
        if d.get("add_adapter", False):
            raise ValueError("wav2vec2 checkpoints with an adapter (add_adapter=true) are not supported.")
        defaults = cls()
        conv_dim = tuple(d.get("conv_dim", defaults.conv_dim))
        return cls(
            hidden_size=int(d.get("hidden_size", defaults.hidden_size)),
            num_layers=int(d.get("num_hidden_layers", defaults.num_layers)),
            num_heads=int(d.get("num_attention_heads", defaults.num_heads)),
            intermediate_size=int(d.get("intermediate_size", defaults.intermediate_size)),
            conv_dim=conv_dim,
            conv_kernel=tuple(d.get("conv_kernel", defaults.conv_kernel)),
            conv_stride=tuple(d.get("conv_stride", defaults.conv_stride)),
            conv_bias=bool(d.get("conv_bias", defaults.conv_bias)),
            feat_extract_norm=str(d.get("feat_extract_norm", defaults.feat_extract_norm)),
            do_stable_layer_norm=bool(d.get("do_stable_layer_norm", defaults.do_stable_layer_norm)),
            num_conv_pos_embeddings=int(d.get("num_conv_pos_embeddings", defaults.num_conv_pos_embeddings)),
            num_conv_pos_embedding_groups=int(d.get("num_conv_pos_embedding_groups",
                                                    defaults.num_conv_pos_embedding_groups)),
            layer_norm_eps=float(d.get("layer_norm_eps", defaults.layer_norm_eps)),
        )

    def to_hf(self) -> dict:
        """The transformers ``Wav2Vec2Config`` keyword arguments for this architecture."""
        return dict(
            hidden_size=self.hidden_size, num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size, conv_dim=list(self.conv_dim),
            conv_kernel=list(self.conv_kernel), conv_stride=list(self.conv_stride), conv_bias=self.conv_bias,
            feat_extract_norm=self.feat_extract_norm, do_stable_layer_norm=self.do_stable_layer_norm,
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups, layer_norm_eps=self.layer_norm_eps,
            num_feat_extract_layers=len(self.conv_dim),
        )


WAV2VEC2_PRESETS: dict[str, Wav2Vec2Config] = {
    # facebook/wav2vec2-base-960h (also chinese-wav2vec2-base): group-norm extractor, post-LN.
    "wav2vec2-base": Wav2Vec2Config(),
    # facebook/wav2vec2-large-960h-lv60-self / large-xlsr: layer-norm extractor with conv bias, pre-LN.
    "wav2vec2-large": Wav2Vec2Config(
        hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, conv_bias=True,
        feat_extract_norm="layer", do_stable_layer_norm=True,
    ),
    # A small model for tests: same 50 Hz extractor geometry, narrow channels.
    "tiny": Wav2Vec2Config(
        hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    ),
}


# --------------------------------------------------------------------------------------------- modules
class _ConvLayer(nn.Module):
    """One feature-extractor layer: conv -> (GroupNorm(C, C) | LayerNorm over channels | nothing) -> GELU."""

    def __init__(self, cfg: Wav2Vec2Config, i: int):
        super().__init__()
        c_in = cfg.conv_dim[i - 1] if i > 0 else 1
        c_out = cfg.conv_dim[i]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[i], stride=cfg.conv_stride[i], bias=cfg.conv_bias)
        if cfg.feat_extract_norm == "layer":
            self.norm_kind = "layer"
            self.layer_norm = nn.LayerNorm(c_out)
        elif i == 0:
            self.norm_kind = "group"
            self.layer_norm = nn.GroupNorm(c_out, c_out)
        else:
            self.norm_kind = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        elif self.norm_kind == "group":
            x = self.layer_norm(x)
        return F.gelu(x)


class _FeatureExtractor(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.conv_layers = nn.ModuleList(_ConvLayer(cfg, i) for i in range(len(cfg.conv_dim)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class _PositionalConv(nn.Module):
    """Grouped conv with the weight norm folded into ``conv.weight``; drops the last frame for even kernels."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2,
                              groups=cfg.num_conv_pos_embedding_groups)
        self.remove = 1 if k % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : -self.remove]
        return F.gelu(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_heads
        self.q_proj, self.k_proj = nn.Linear(h, h), nn.Linear(h, h)
        self.v_proj, self.out_proj = nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        split = lambda t: t.view(b, n, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h))


class _FeedForward(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _EncoderLayer(nn.Module):
    """``Wav2Vec2EncoderLayer`` (post-LN) or ``Wav2Vec2EncoderLayerStableLayerNorm`` (pre-LN)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.stable = cfg.do_stable_layer_norm
        self.attention = _Attention(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = _FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stable:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _TransformerEncoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.stable = cfg.do_stable_layer_norm
        self.pos_conv_embed = _PositionalConv(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        if self.stable:
            states[-1] = self.layer_norm(x)
        return states


class Wav2Vec2Encoder(nn.Module):
    """wav2vec 2.0 body (``Wav2Vec2Model`` without masking/adapter), HF key names without ``wav2vec2.``.

    ``extract_cnn_features(wave [B, T]) -> [B, T50, conv_dim[-1]]`` runs the convolutional feature
    encoder; ``transformer(features [B, n, conv_dim[-1]])`` runs the feature projection and the
    transformer and returns ``num_layers + 1`` hidden states ``[B, n, hidden]``: index 0 is the
    transformer input (post-LN for base), index ``i`` the output of layer ``i``. For the stable
    (pre-LN, large) variant the last entry is after the encoder's final LayerNorm, i.e. equal to
    ``last_hidden_state`` (the convention of transformers 4.x, fairseq and ComfyUI; transformers 5.x
    returns the un-normalised value in ``hidden_states[-1]``).
    """

    def __init__(self, config: Wav2Vec2Config | None = None):
        super().__init__()
        config = config or Wav2Vec2Config()
        if not isinstance(config, Wav2Vec2Config):
            raise TypeError(f"config must be a Wav2Vec2Config, got {type(config).__name__}.")
        self.config = config
        self.feature_extractor = _FeatureExtractor(config)
        self.feature_projection = _FeatureProjection(config)
        self.encoder = _TransformerEncoder(config)

    def _param(self) -> torch.Tensor:
        return self.feature_projection.projection.weight

    def extract_cnn_features(self, wave: torch.Tensor) -> torch.Tensor:
        """CNN features ``[B, T50, C]`` of a ``[B, T]`` 16 kHz waveform (at least ``receptive_field`` samples)."""
        require_tensor(wave, "wave", ndim=2)
        if wave.shape[-1] < self.config.receptive_field:
            raise ValueError(
                f"wave has {wave.shape[-1]} samples; the wav2vec2 feature extractor needs at least "
                f"{self.config.receptive_field}. Pad it with zeros."
            )
        p = self._param()
        return self.feature_extractor(wave.to(device=p.device, dtype=p.dtype)).transpose(1, 2)

    def transformer(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Feature projection + transformer on ``[B, n, C]`` CNN features; ``num_layers + 1`` states ``[B, n, H]``."""
        require_tensor(features, "features", ndim=3)
        if features.shape[-1] != self.config.conv_dim[-1]:
            raise ValueError(
                f"features have {features.shape[-1]} channels, the wav2vec2 model expects {self.config.conv_dim[-1]}."
            )
        if features.shape[1] == 0:
            raise ValueError("features hold 0 frames; give at least one frame.")
        p = self._param()
        return self.encoder(self.feature_projection(features.to(device=p.device, dtype=p.dtype)))

    def forward(self, wave: torch.Tensor) -> list[torch.Tensor]:
        """All hidden states at the CNN frame rate (50 Hz) for a ``[B, T]`` waveform."""
        return self.transformer(self.extract_cnn_features(wave))


# --------------------------------------------------------------------------------------------- loading
_MODEL_PREFIXES = ("feature_extractor.", "feature_projection.", "encoder.")
_POS = "encoder.pos_conv_embed.conv."
_WN_NAMES = {
    "weight_g": "g", "weight_v": "v",
    "parametrizations.weight.original0": "g", "parametrizations.weight.original1": "v",
}


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``W = g * v / ||v||`` with the norm over dims (0, 1), i.e. ``torch.nn.utils.weight_norm(dim=2)``."""
    v = v.to(torch.float32)
    norm = v.norm(dim=(0, 1), keepdim=True)
    return g.to(torch.float32) * v / norm


def wav2vec2_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise a wav2vec2 checkpoint to this module's keys.

    Strips a ``wav2vec2.`` prefix, drops heads and training-only tensors (``lm_head.*``,
    ``masked_spec_embed``, ``quantizer.*``, ``project_q/hid.*``, ...), folds the positional
    convolution's weight norm (legacy ``weight_g/weight_v`` or ``parametrizations.weight.original0/1``)
    into a plain ``weight``, and casts every tensor to float32.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}.")
    out: dict[str, torch.Tensor] = {}
    wn: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith("wav2vec2."):
            key = key[len("wav2vec2."):]
        if key.startswith("adapter."):
            raise ValueError("wav2vec2 checkpoints with an adapter ('adapter.*' keys) are not supported.")
        if not key.startswith(_MODEL_PREFIXES):
            continue
        if key.startswith(_POS) and key[len(_POS):] in _WN_NAMES:
            wn[_WN_NAMES[key[len(_POS):]]] = value
            continue
        out[key] = value.to(torch.float32) if value.is_floating_point() else value
    if wn:
        if set(wn) != {"g", "v"}:
            raise ValueError(
                "The wav2vec2 checkpoint has only half of the positional-convolution weight norm "
                f"(found {sorted(wn)}, need both g/original0 and v/original1)."
            )
        if _POS + "weight" in out:
            raise ValueError("The wav2vec2 checkpoint has both a plain and a weight-normed positional-conv weight.")
        out[_POS + "weight"] = fold_weight_norm(wn["g"], wn["v"])
    return out


def _layer_count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def infer_wav2vec2_config(state_dict: Mapping[str, torch.Tensor]) -> Wav2Vec2Config:
    """Infer the architecture from a normalised state dict (see :func:`wav2vec2_state_dict`).

    Shapes give the hidden size, layer count, FFN width, conv dims/kernels, conv bias and the
    positional-conv kernel/groups. The head count is taken as ``hidden_size // 64`` (12 for base,
    16 for large), conv strides as the standard ``(5, 2, 2, 2, 2, 2, 2)`` when there are 7 conv layers,
    and a layer-norm feature extractor (``feature_extractor.conv_layers.1.layer_norm``) implies the
    stable pre-LN transformer (as in every published large-lv60/xlsr checkpoint). Put the HF
    ``config.json`` beside the file for anything else.
    """
    sd = state_dict
    need = ["feature_projection.projection.weight", _POS + "weight", "feature_extractor.conv_layers.0.conv.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(
            f"This does not look like a wav2vec2 checkpoint: missing {missing}. Expected HF wav2vec2 names "
            "(e.g. 'feature_extractor.conv_layers.0.conv.weight', optionally prefixed by 'wav2vec2.')."
        )
    hidden, conv_last = sd["feature_projection.projection.weight"].shape
    n_conv = _layer_count(sd, r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")
    conv_w = [sd[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(n_conv)]
    if n_conv != 7:
        raise ValueError(
            f"The wav2vec2 checkpoint has {n_conv} conv layers; strides can only be inferred for the standard 7. "
            "Put the model's HF config.json beside the file or pass a Wav2Vec2Config."
        )
    n_layers = _layer_count(sd, r"encoder\.layers\.(\d+)\.")
    if n_layers == 0:
        raise ValueError("The wav2vec2 checkpoint has no 'encoder.layers.N.*' tensors.")
    pos = sd[_POS + "weight"]
    heads = max(1, hidden // 64)
    layer_fe = "feature_extractor.conv_layers.1.layer_norm.weight" in sd
    return Wav2Vec2Config(
        hidden_size=int(hidden),
        num_layers=n_layers,
        num_heads=heads,
        intermediate_size=int(sd["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0])
        if "encoder.layers.0.feed_forward.intermediate_dense.weight" in sd else 4 * int(hidden),
        conv_dim=tuple(int(w.shape[0]) for w in conv_w),
        conv_kernel=tuple(int(w.shape[-1]) for w in conv_w),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in sd,
        feat_extract_norm="layer" if layer_fe else "group",
        do_stable_layer_norm=layer_fe,
        num_conv_pos_embeddings=int(pos.shape[-1]),
        num_conv_pos_embedding_groups=int(hidden) // int(pos.shape[1]),
    )


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise ValueError(f"Could not read wav2vec2 checkpoint '{path}': {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' does not hold a state dict (got {type(obj).__name__}).")
    return dict(obj)


def _resolve_path(path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"The folder '{p}' holds no model.safetensors or pytorch_model.bin; give the wav2vec2 weights file itself."
        )
    return require_file(p, "wav2vec2 checkpoint")


def _config_beside(path: Path) -> Wav2Vec2Config | None:
    cfg_path = path.parent / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"Could not parse '{cfg_path}': {exc}") from exc
    if not isinstance(data, dict) or data.get("model_type", "wav2vec2") != "wav2vec2":
        return None
    return Wav2Vec2Config.from_hf(data)


def load_wav2vec2(path_or_state_dict, config: Wav2Vec2Config | None = None) -> Wav2Vec2Encoder:
    """Load a wav2vec2 encoder (float32, CPU, eval mode) from a file, an HF folder or a state dict.

    The config is, in order: ``config``, an HF ``config.json`` beside the file, or inferred from the
    tensor shapes (:func:`infer_wav2vec2_config`). Missing or mis-shaped tensors raise ``ValueError``
    naming the keys and both shapes; a missing file raises ``FileNotFoundError``.
    """
    source = "state dict"
    if isinstance(path_or_state_dict, Mapping):
        raw = dict(path_or_state_dict)
    elif isinstance(path_or_state_dict, (str, Path)):
        path = _resolve_path(path_or_state_dict)
        source = f"'{path}'"
        raw = _read_file(path)
        if config is None:
            config = _config_beside(path)
    else:
        raise TypeError(
            f"load_wav2vec2 expects a file path or a state dict, got {type(path_or_state_dict).__name__}."
        )
    sd = wav2vec2_state_dict(raw)
    if config is None:
        config = infer_wav2vec2_config(sd)
    elif not isinstance(config, Wav2Vec2Config):
        raise TypeError(f"config must be a Wav2Vec2Config, got {type(config).__name__}.")
    model = Wav2Vec2Encoder(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"unexpected tensors ({len(unexpected)}): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    if wrong:
        shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in wrong[:8])
        problems.append(f"shape mismatches ({len(wrong)}): {shown}{' ...' if len(wrong) > 8 else ''}")
    if problems:
        raise ValueError(
            f"The wav2vec2 checkpoint {source} does not match the architecture "
            f"(hidden {config.hidden_size}, {config.num_layers} layers, norm '{config.feat_extract_norm}'): "
            + " | ".join(problems)
            + ". Use the matching config.json or a different file."
        )
    model.load_state_dict(sd, strict=True)
    return model.eval()
