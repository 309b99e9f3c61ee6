"""A native emotion2vec (data2vec 2.0 audio) encoder with FunASR key names, and its safe checkpoint loader.

MEMO labels each clip's emotion from ``iic/emotion2vec_plus_large`` (``memo/utils/audio_utils.py::
extract_audio_emotion_labels``), run through FunASR's ``funasr.models.emotion2vec.model.Emotion2vec``.
This module is the inference path of ``Emotion2vec.extract_features`` (``mask=False``,
``features_only=True``, ``remove_extra_tokens=True``, no padding mask, eval mode), following FunASR 1.0.27
(the version MEMO pins), ``funasr/models/emotion2vec/``:

* ``audio.py::AudioEncoder`` + ``fairseq_modules.py::ConvFeatureExtractionModel``: the conv feature
  encoder (``extractor_mode`` ``layer_norm``: conv → fp32 LayerNorm over channels → GELU per layer;
  ``default``: fp32 GroupNorm after the first conv only), ``project_features`` (LayerNorm + Linear), the
  relative positional encoder (``conv_pos_depth`` grouped convs, ``SamePad``, affine-free LayerNorm, GELU).
* ``base.py::ModalitySpecificEncoder.contextualized_features``: ``x + pos``, the ALiBi bias
  (``get_alibi``/``get_alibi_bias``, scaled by the learned, ``clamp_min(0)`` ``alibi_scale``), the
  prepended ``extra_tokens`` (zero bias), then ``modules.py::BlockEncoder`` (the "prenet":
  ``context_encoder.norm`` first when post-LN, then ``prenet_depth`` blocks).
* ``model.py::Emotion2vec.forward``: ``depth`` more blocks, the optional final ``norm`` (pre-LN models),
  then the extra tokens are dropped.
* ``modules.py::AltBlock``/``AltAttention`` + ``timm_modules.py::Mlp``: post-LN (emotion2vec:
  ``layer_norm_first: false``) ``x = norm2(norm1(x + attn(x)) + mlp(norm1(x + attn(x))))``. The attention
  scores, ALiBi bias and softmax are fp32 in FunASR (``attn.type_as(alibi_bias)``); here the whole
  attention runs through ``F.scaled_dot_product_attention`` in fp32, whatever the model dtype, and every
  LayerNorm/GroupNorm runs in fp32.

State-dict keys equal FunASR's, so ``model.pt`` loads one to one. Keys the inference path does not use
are dropped explicitly (:data:`UNUSED_PREFIXES`): the 9-way emotion head ``proj.*`` (MEMO builds the
model with ``vocab_size=-1`` and uses its own classifier) and the pretraining decoder
``modality_encoders.AUDIO.decoder.*``.

Checkpoints are read without running pickled code: ``torch.load(weights_only=True)`` first; a file that
also pickles non-tensor objects (configs, namespaces) is read by a restricted unpickler that only
rebuilds tensors, containers and plain values and replaces every other global by an inert stub, which
is then discarded. ``.safetensors`` conversions are read as they are.

Config defaults (:class:`Emotion2vecConfig`) are emotion2vec_plus_large's architecture. Its published
``config.yaml`` could not be retrieved here; the values are data2vec 2.0 large audio's
(fairseq ``examples/data2vec/config/v2/large_audio_only_task.yaml``: 1024 wide, 16 + 8 prenet blocks,
16 heads, 5×19 positional convs, per-head learned ALiBi scale) with emotion2vec's block settings
(post-LN, 10 extra tokens). The loader never relies on them blindly: it reads ``config.yaml`` beside the
file when there is one and otherwise infers every shape-bearing field from the checkpoint's tensors.
"""
from __future__ import annotations

import ast
import io
import math
import pickle
import re
import types
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_state_dict, require_tensor

__all__ = [
    "DOWNLOAD_HINT",
    "UNUSED_PREFIXES",
    "Emotion2vecConfig",
    "Emotion2vecEncoder",
    "UnsafeCheckpointError",
    "emotion2vec_state_dict",
    "infer_emotion2vec_config",
    "load_emotion2vec",
    "parse_feature_encoder_spec",
    "read_checkpoint_file",
]

DOWNLOAD_HINT = (
    "Download emotion2vec_plus_large's model.pt (with its config.yaml) from "
    "https://huggingface.co/emotion2vec/emotion2vec_plus_large (ModelScope: iic/emotion2vec_plus_large) and "
    "put it in ComfyUI's models/audio_encoders/ folder, e.g. models/audio_encoders/emotion2vec_plus_large.pt "
    "or the folder models/audio_encoders/emotion2vec_plus_large/ (model.pt + config.yaml)."
)

_PREFIX = "modality_encoders.AUDIO."
# Tensors of the published checkpoint that extract_features never reads (dropped on load, on purpose).
UNUSED_PREFIXES = ("proj.", _PREFIX + "decoder.")
_STANDARD_SPEC = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


# --------------------------------------------------------------------------------------------- config


def parse_feature_encoder_spec(spec) -> tuple[tuple[int, int, int], ...]:
    """FunASR's ``feature_encoder_spec`` (a Python expression it ``eval``s, e.g.
    ``'[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]'``) → ``((dim, kernel, stride), ...)``.

    Parsed with ``ast`` (lists/tuples of ints, ``+`` and ``*`` only); nothing is evaluated."""
    if not isinstance(spec, str):
        layers = spec
    else:
        def ev(node):
            if isinstance(node, ast.Expression):
                return ev(node.body)
            if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
                return node.value
            if isinstance(node, (ast.List, ast.Tuple)):
                items = [ev(e) for e in node.elts]
                return items if isinstance(node, ast.List) else tuple(items)
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
                a, b = ev(node.left), ev(node.right)
                return a + b if isinstance(node.op, ast.Add) else a * b
            raise ValueError(f"unsupported element {ast.dump(node)[:60]}")

        try:
            layers = ev(ast.parse(spec.strip(), mode="eval"))
        except (SyntaxError, ValueError, TypeError) as exc:
            raise ValueError(f"Cannot read feature_encoder_spec {spec!r}: {exc}. Expected a list of "
                             "(dim, kernel, stride) tuples such as '[(512, 10, 5)] + [(512, 3, 2)] * 4'.") from exc
    try:
        out = tuple((int(d), int(k), int(s)) for d, k, s in layers)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"feature_encoder_spec must list (dim, kernel, stride) triples; got {spec!r}.") from exc
    if not out or any(v <= 0 for t in out for v in t):
        raise ValueError(f"feature_encoder_spec must list positive (dim, kernel, stride) triples; got {spec!r}.")
    return out


@dataclass(frozen=True)
class Emotion2vecConfig:
    """The inference-relevant fields of FunASR's emotion2vec ``config.yaml`` (``model_conf`` and
    ``model_conf.modalities.audio``), flattened. Defaults: emotion2vec_plus_large (see the module doc)."""

    embed_dim: int = 1024
    depth: int = 16  # model_conf.depth: blocks after the prenet
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    norm_affine: bool = True
    layer_norm_first: bool = False
    # modalities.audio
    feature_encoder_spec: tuple[tuple[int, int, int], ...] = _STANDARD_SPEC
    extractor_mode: str = "layer_norm"
    conv_pos_width: int = 95
    conv_pos_groups: int = 16
    conv_pos_depth: int = 5
    conv_pos_pre_ln: bool = False
    prenet_depth: int = 8
    num_extra_tokens: int = 10
    use_alibi_encoder: bool = True
    alibi_scale: float = 1.0
    learned_alibi: bool = False
    learned_alibi_scale: bool = True
    learned_alibi_scale_per_head: bool = True
    learned_alibi_scale_per_layer: bool = False
    num_alibi_heads: int = 16
    model_depth: int = 16

    def __post_init__(self):
        object.__setattr__(self, "feature_encoder_spec", parse_feature_encoder_spec(self.feature_encoder_spec))
        for name in ("embed_dim", "depth", "num_heads", "conv_pos_width", "conv_pos_groups", "conv_pos_depth",
                     "num_alibi_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"Emotion2vecConfig.{name} must be a positive integer, got {v!r}.")
        for name in ("prenet_depth", "num_extra_tokens", "model_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Emotion2vecConfig.{name} must be an integer >= 0, got {v!r}.")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}.")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by conv_pos_groups {self.conv_pos_groups}.")
        if self.extractor_mode not in ("layer_norm", "default"):
            raise ValueError(f"extractor_mode must be 'layer_norm' or 'default', got {self.extractor_mode!r}.")
        if self.learned_alibi:
            raise ValueError("learned_alibi=True (a learned ALiBi table) is not used by emotion2vec and is not "
                             "supported; use an emotion2vec config.yaml.")
        if self.use_alibi_encoder and self.num_alibi_heads != self.num_heads:
            raise ValueError(f"num_alibi_heads ({self.num_alibi_heads}) must equal num_heads ({self.num_heads}).")
        if self.use_alibi_encoder and self.learned_alibi_scale_per_layer and \
                self.model_depth != self.depth:
            raise ValueError(f"A per-layer ALiBi scale needs model_depth == depth; got {self.model_depth} "
                             f"and {self.depth}.")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}.")

    @property
    def conv_pos_kernel(self) -> int:
        """``k = max(3, conv_pos_width // conv_pos_depth)`` (``audio.py::AudioEncoder``)."""
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @property
    def hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def feature_dim(self) -> int:
        return self.feature_encoder_spec[-1][0]

    @property
    def min_samples(self) -> int:
        """Shortest waveform the conv stack turns into at least one frame (400 samples = 25 ms)."""
        n = 1
        for _, k, s in reversed(self.feature_encoder_spec):
            n = (n - 1) * s + k
        return n

    def num_frames(self, num_samples: int) -> int:
        n = int(num_samples)
        for _, k, s in self.feature_encoder_spec:
            n = (n - k) // s + 1
        return n

    @classmethod
    def from_funasr(cls, conf: Mapping) -> Emotion2vecConfig:
        """From a parsed FunASR ``config.yaml`` (the whole file or its ``model_conf``). Unknown and
        training-only fields are ignored; absent ones keep their defaults."""
        if not isinstance(conf, Mapping):
            raise TypeError(f"Expected a mapping (a parsed config.yaml), got {type(conf).__name__}.")
        model_conf = conf.get("model_conf", conf)
        if "model" in conf and conf.get("model") not in (None, "Emotion2vec"):
            raise ValueError(f"This config.yaml is for model '{conf.get('model')}', not Emotion2vec.")
        audio = (model_conf.get("modalities") or {}).get("audio") or {}
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in model_conf.items() if k in names and k != "extractor_mode"}
        kw.update({k: v for k, v in audio.items() if k in names})
        if "feature_encoder_spec" in kw:
            kw["feature_encoder_spec"] = parse_feature_encoder_spec(kw["feature_encoder_spec"])
        for k in ("norm_eps", "mlp_ratio", "alibi_scale"):
            if k in kw:
                kw[k] = float(kw[k])
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path) -> Emotion2vecConfig:
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - ComfyUI ships PyYAML
            raise ImportError(f"Reading '{path}' needs PyYAML (pip install pyyaml).") from exc
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"Could not parse '{path}': {exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError(f"'{path}' is not an emotion2vec config.yaml (no mapping at the top).")  # noqa: TRY004
        return cls.from_funasr(data)

    def to_funasr(self) -> dict:
        """The FunASR ``model_conf`` dict (inference fields) this config stands for."""
        d = asdict(self)
        audio_keys = ("feature_encoder_spec", "extractor_mode", "conv_pos_width", "conv_pos_groups", "conv_pos_depth",
                      "conv_pos_pre_ln", "prenet_depth", "num_extra_tokens", "use_alibi_encoder", "alibi_scale",
                      "learned_alibi", "learned_alibi_scale", "learned_alibi_scale_per_head",
                      "learned_alibi_scale_per_layer", "num_alibi_heads", "model_depth")
        audio = {k: d.pop(k) for k in audio_keys}
        audio["feature_encoder_spec"] = repr([tuple(t) for t in self.feature_encoder_spec])
        d["extractor_mode"] = self.extractor_mode
        d["modalities"] = {"audio": audio}
        return d


# ------------------------------------------------------------------------------------------- modules


def _norm_fp32(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """LayerNorm/GroupNorm in fp32 (FunASR's ``Fp32LayerNorm``/``Fp32GroupNorm``), result in x's dtype."""
    w = norm.weight.float() if getattr(norm, "weight", None) is not None else None
    b = norm.bias.float() if getattr(norm, "bias", None) is not None else None
    if isinstance(norm, nn.GroupNorm):
        y = F.group_norm(x.float(), norm.num_groups, w, b, norm.eps)
    else:
        y = F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps)
    return y.to(x.dtype)


def alibi_bias(time_steps: int, heads: int, *, device=None) -> torch.Tensor:
    """``[heads, T, T]`` symmetric ALiBi bias ``-slope_h * |i - j|`` (``base.py::get_alibi``, dims=1)."""

    def slopes(n: int) -> list[float]:
        def power_of_2(m):
            start = 2 ** (-(2 ** -(math.log2(m) - 3)))
            return [start * start ** i for i in range(m)]

        if math.log2(n).is_integer():
            return power_of_2(n)
        p = 2 ** math.floor(math.log2(n))
        return power_of_2(p) + slopes(2 * p)[0::2][: n - p]

    s = torch.tensor(slopes(heads), dtype=torch.float32, device=device)
    pos = torch.arange(time_steps, device=device)
    dist = -(pos[None, :] - pos[:, None]).abs()
    return s[:, None, None] * dist[None]


class _Attention(nn.Module):
    """``AltAttention`` (no cosine attention): fused ``qkv``, ``proj``; scores + bias + softmax in fp32."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).float()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=(C // self.heads) ** -0.5)
        return self.proj(out.transpose(1, 2).reshape(B, N, C).to(x.dtype))


class _Mlp(nn.Module):
    """timm ``Mlp``: ``fc1`` → exact GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """``modules.py::AltBlock`` in eval mode (``ffn_targets`` only shapes the unused second output)."""

    def __init__(self, cfg: Emotion2vecConfig):
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attn = _Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = _Mlp(cfg.embed_dim, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.attn(_norm_fp32(x, self.norm1), bias)
            # FunASR/fairseq: ``r = x = mlp(norm2(x)); x = r + post_mlp_dropout(x)`` (so 2 * mlp(...)), kept as is.
            r = self.mlp(_norm_fp32(x, self.norm2))
            return r + r
        x = _norm_fp32(x + self.attn(x, bias), self.norm1)
        return _norm_fp32(x + self.mlp(x), self.norm2)


class _BlockEncoder(nn.Module):
    """``modules.py::BlockEncoder`` (the prenet): ``blocks`` and the optional ``norm``."""

    def __init__(self, cfg: Emotion2vecConfig):
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.prenet_depth))
        self.norm = (None if cfg.layer_norm_first else
                     nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine))


class _AudioEncoder(nn.Module):
    """``AudioEncoder``'s parameters under FunASR's names (forward lives in :class:`Emotion2vecEncoder`)."""

    def __init__(self, cfg: Emotion2vecConfig):
        super().__init__()
        convs, in_d = [], 1
        for i, (dim, k, stride) in enumerate(cfg.feature_encoder_spec):
            conv = nn.Conv1d(in_d, dim, k, stride=stride, bias=False)
            if cfg.extractor_mode == "layer_norm":  # conv, dropout, (T, Fp32LayerNorm, T), GELU
                convs.append(nn.Sequential(conv, nn.Identity(),
                                           nn.Sequential(nn.Identity(), nn.LayerNorm(dim), nn.Identity())))
            elif i == 0:  # conv, dropout, Fp32GroupNorm(dim, dim), GELU
                convs.append(nn.Sequential(conv, nn.Identity(), nn.GroupNorm(dim, dim, affine=True)))
            else:  # conv, dropout, GELU
                convs.append(nn.Sequential(conv))
            in_d = dim
        self.local_encoder = nn.Module()
        self.local_encoder.conv_layers = nn.ModuleList(convs)
        # TransposeLast, LayerNorm(feature_dim), Linear(feature_dim, embed_dim)
        self.project_features = nn.Sequential(nn.Identity(), nn.LayerNorm(cfg.feature_dim),
                                              nn.Linear(cfg.feature_dim, cfg.embed_dim))
        k, D = cfg.conv_pos_kernel, cfg.embed_dim
        pos = nn.Sequential(nn.Identity(), *[
            nn.Sequential(nn.Conv1d(D, D, kernel_size=k, padding=k // 2, groups=cfg.conv_pos_groups))
            for _ in range(cfg.conv_pos_depth)], nn.Identity())
        if cfg.conv_pos_pre_ln:
            pos = nn.Sequential(nn.LayerNorm(D), pos)
        self.relative_positional_encoder = pos
        self.context_encoder = _BlockEncoder(cfg)
        self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, D)) if cfg.num_extra_tokens else None
        self.alibi_scale = None
        if cfg.use_alibi_encoder:
            layers = cfg.prenet_depth + cfg.model_depth if cfg.learned_alibi_scale_per_layer else 1
            heads = cfg.num_alibi_heads if cfg.learned_alibi_scale_per_head else 1
            self.alibi_scale = nn.Parameter(torch.full((layers, 1, heads, 1, 1), float(cfg.alibi_scale)),
                                            requires_grad=cfg.learned_alibi_scale)


class Emotion2vecEncoder(nn.Module):
    """emotion2vec / data2vec 2.0 audio encoder: ``extract_features(wave [B, S]) -> [B, T, D]`` at 50 Hz.

    ``wave`` is 16 kHz audio, already normalised the way the caller's recipe wants (MEMO and FunASR's
    ``inference`` apply ``F.layer_norm(wave, wave.shape)`` per utterance first, see
    :func:`letstalk_core.audio.emotion.emotion_labels`). Equals FunASR's
    ``Emotion2vec.extract_features(wave)["x"]`` (no padding mask, extra tokens removed)."""

    def __init__(self, config: Emotion2vecConfig | None = None):
        super().__init__()
        cfg = config or Emotion2vecConfig()
        if not isinstance(cfg, Emotion2vecConfig):
            raise TypeError(f"config must be an Emotion2vecConfig, got {type(cfg).__name__}.")
        self.config = cfg
        self.modality_encoders = nn.ModuleDict({"AUDIO": _AudioEncoder(cfg)})
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = (nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
                     if cfg.layer_norm_first else None)

    # --- stages -------------------------------------------------------------------------------------

    def _local_features(self, wave: torch.Tensor) -> torch.Tensor:
        enc = self.modality_encoders["AUDIO"]
        x = wave.unsqueeze(1)
        for layer in enc.local_encoder.conv_layers:
            x = layer[0](x)
            if len(layer) > 2:
                norm = layer[2]
                if isinstance(norm, nn.GroupNorm):
                    x = _norm_fp32(x, norm)
                else:
                    x = _norm_fp32(x.transpose(1, 2), norm[1]).transpose(1, 2)
            x = F.gelu(x)
        x = _norm_fp32(x.transpose(1, 2), enc.project_features[1])
        return enc.project_features[2](x)

    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        cfg, enc = self.config, self.modality_encoders["AUDIO"]
        pos = enc.relative_positional_encoder
        if cfg.conv_pos_pre_ln:
            x = _norm_fp32(x, pos[0])
            pos = pos[1]
        y = x.transpose(1, 2)
        remove = 1 if cfg.conv_pos_kernel % 2 == 0 else 0  # SamePad
        for layer in list(pos)[1:-1]:
            y = layer[0](y)
            if remove:
                y = y[:, :, :-remove]
            y = F.layer_norm(y.transpose(1, 2).float(), (cfg.embed_dim,), eps=1e-5).to(y.dtype).transpose(1, 2)
            y = F.gelu(y)
        return y.transpose(1, 2)

    def _scales(self) -> tuple[torch.Tensor | None, list]:
        """(bias scale folded in once, per-layer scales for prenet + main blocks) as FunASR applies them."""
        cfg, enc = self.config, self.modality_encoders["AUDIO"]
        n = cfg.prenet_depth + cfg.depth
        if enc.alibi_scale is None:
            return None, [None] * n
        s = enc.alibi_scale.detach().float().clamp_min(0)
        if s.shape[0] == 1:
            return s[0], [None] * n
        return None, [s[i] for i in range(n)]

    @torch.no_grad()
    def extract_features(self, wave: torch.Tensor) -> torch.Tensor:
        require_tensor(wave, "emotion2vec input waveform", ndim=(1, 2))
        if not wave.is_floating_point():
            raise TypeError(f"The waveform must be a float tensor, got {wave.dtype}.")
        if wave.ndim == 1:
            wave = wave[None]
        cfg = self.config
        if wave.shape[-1] < cfg.min_samples:
            raise ValueError(f"emotion2vec needs at least {cfg.min_samples} samples (25 ms at 16 kHz); "
                             f"got {wave.shape[-1]}.")
        p = next(self.parameters())
        x = self._local_features(wave.to(device=p.device, dtype=p.dtype))
        x = x + self._positions(x)
        B, T, _ = x.shape
        once, per_layer = self._scales()
        bias = None
        if self.modality_encoders["AUDIO"].alibi_scale is not None:
            bias = alibi_bias(T, cfg.num_heads, device=x.device)[None]
            if once is not None:
                bias = bias * once
        extra = self.modality_encoders["AUDIO"].extra_tokens
        if extra is not None:
            x = torch.cat([extra.expand(B, -1, -1).to(x.dtype), x], dim=1)
            if bias is not None:
                n = extra.shape[1]
                bias = F.pad(bias, (n, 0, n, 0))
        ctx = self.modality_encoders["AUDIO"].context_encoder
        if ctx.norm is not None:  # BlockEncoder: only post-LN models have it, applied first
            x = _norm_fp32(x, ctx.norm)
        blocks = list(ctx.blocks) + list(self.blocks)
        for i, blk in enumerate(blocks):
            ab = bias if (bias is None or per_layer[i] is None) else bias * per_layer[i]
            x = blk(x, ab)
        if self.norm is not None:
            x = _norm_fp32(x, self.norm)
        return x[:, cfg.num_extra_tokens:]

    forward = extract_features

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# ----------------------------------------------------------------------------------------- checkpoints


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle asks for code (a global that is not a tensor/container) at its core."""


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
for _name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"):
    _SAFE_GLOBALS[("torch", _name)] = getattr(torch, _name)


class _Stub:
    """Stands in for a refused global: building or calling it records the name and does nothing."""

    refused: str = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self):
        return f"<refused {self.refused}>"


def _restricted_module(refused: list[str]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves only :data:`_SAFE_GLOBALS`
    (torch maps storage types itself); every other global becomes an inert :class:`_Stub` subclass."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            found = _SAFE_GLOBALS.get((module, name))
            if found is not None:
                return found
            full = f"{module}.{name}"
            refused.append(full)
            return type("Refused", (_Stub,), {"refused": full})

    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    mod = types.ModuleType("letstalk_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler
    mod.load = load
    mod.loads = lambda data, **kw: load(io.BytesIO(data), **kw)
    mod.UnpicklingError = pickle.UnpicklingError
    mod.__name__ = "letstalk_restricted_pickle"
    return mod


def read_checkpoint_file(path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a ``.pt``/``.pth``/``.bin``/``.safetensors`` file into ``(flat tensor dict, refused globals)``
    without running pickled code.

    The tensors are taken from the first of ``state_dict`` / ``model_state_dict`` / ``model`` found (as
    FunASR's ``load_pretrained_model`` and MEMO's ``load_emotion2vec_model`` do), else from the top level;
    non-tensor entries are dropped. ``refused`` names the globals the restricted unpickler replaced."""
    p = Path(path)
    if p.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(p), device="cpu"), []
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"'{p}' is not a readable .safetensors file ({exc}); is it incomplete? "
                             f"{DOWNLOAD_HINT}") from exc
    if p.stat().st_size == 0:
        raise ValueError(f"'{p}' is empty; download it again. {DOWNLOAD_HINT}")
    refused: list[str] = []
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # The file also pickles non-tensor objects: read it again, refusing every such global.
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=False,
                             pickle_module=_restricted_module(refused))
        except Exception as exc:
            raise ValueError(f"Could not read '{p}' as a PyTorch checkpoint ({type(exc).__name__}: {exc}). "
                             f"{DOWNLOAD_HINT}") from exc
    except Exception as exc:
        raise ValueError(f"Could not read '{p}' as a PyTorch checkpoint ({type(exc).__name__}: {exc}); is it "
                         f"incomplete or not a checkpoint? {DOWNLOAD_HINT}") from exc
    if isinstance(obj, _Stub):
        raise UnsafeCheckpointError(
            f"'{p}' is not a weights file: its pickle builds '{obj.refused}' (refused, nothing was run). "
            f"Refused globals: {sorted(set(refused))}. {DOWNLOAD_HINT}")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj:
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{p}' does not hold a state dict (its top level is {type(obj).__name__}"  # noqa: TRY004
                         f"{', built by refused globals ' + str(sorted(set(refused))) if refused else ''}). "
                         f"{DOWNLOAD_HINT}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}, refused


def emotion2vec_state_dict(state: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> dict:
    """FunASR keys (``module.`` stripped), with :data:`UNUSED_PREFIXES` dropped. Raises ``ValueError``
    naming the file kind when ``state`` is not an emotion2vec checkpoint."""
    sd = {(k.removeprefix("module.")): v for k, v in state.items()}
    if not any(k.startswith(_PREFIX) for k in sd):
        kind = ""
        if any(k.startswith(("feature_extractor.", "wav2vec2.", "encoder.pos_conv_embed")) for k in sd):
            kind = " It looks like a wav2vec2/HuBERT checkpoint (Hugging Face keys)."
        elif any(k.startswith(("encoder.blocks.", "decoder.blocks.", "model.encoder.")) for k in sd):
            kind = " It looks like a Whisper/other encoder checkpoint."
        elif not sd:
            kind = " It holds no tensors."
        raise ValueError(f"{source} is not an emotion2vec checkpoint (no '{_PREFIX}*' tensors; first keys: "
                         f"{list(sd)[:4]}).{kind} {DOWNLOAD_HINT}")
    return {k: v for k, v in sd.items() if not k.startswith(UNUSED_PREFIXES)}


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(idx) + 1 if idx else 0


def infer_emotion2vec_config(state: Mapping[str, torch.Tensor], base: Emotion2vecConfig | None = None
                             ) -> Emotion2vecConfig:
    """The config whose shapes match ``state`` (FunASR keys). Fields the tensors cannot tell (conv strides,
    ``norm_eps``, the head count without a per-head ALiBi scale) come from ``base`` (default: plus_large)."""
    base = base or Emotion2vecConfig()
    sd, P = state, _PREFIX
    try:
        proj = sd[P + "project_features.2.weight"]
        D = int(proj.shape[0])
        n_conv = _count(sd, re.escape(P) + r"local_encoder\.conv_layers\.(\d+)\.0\.weight")
        kernels = [int(sd[f"{P}local_encoder.conv_layers.{i}.0.weight"].shape[-1]) for i in range(n_conv)]
        dims = [int(sd[f"{P}local_encoder.conv_layers.{i}.0.weight"].shape[0]) for i in range(n_conv)]
    except KeyError as exc:
        raise ValueError(f"The checkpoint lacks {exc}, so its emotion2vec shapes cannot be read. {DOWNLOAD_HINT}") from exc
    base_spec = base.feature_encoder_spec
    strides = [s for _, _, s in base_spec] if len(base_spec) == n_conv and \
        [k for _, k, _ in base_spec] == kernels else None
    if strides is None:
        raise ValueError(f"The checkpoint's conv kernels {kernels} differ from the config's; give its "
                         "config.yaml (the strides are not stored in the weights).")
    pre_ln = P + "relative_positional_encoder.0.weight" in sd
    pos_prefix = P + ("relative_positional_encoder.1." if pre_ln else "relative_positional_encoder.")
    n_pos = _count(sd, re.escape(pos_prefix) + r"(\d+)\.0\.weight") - 1  # convs sit at 1..depth
    pos_w = sd.get(f"{pos_prefix}1.0.weight")
    extra = sd.get(P + "extra_tokens")
    scale = sd.get(P + "alibi_scale")
    heads = base.num_heads
    if scale is not None and scale.shape[2] > 1:
        heads = int(scale.shape[2])
    depth = _count(sd, r"blocks\.(\d+)\.attn\.qkv\.weight")
    prenet = _count(sd, re.escape(P) + r"context_encoder\.blocks\.(\d+)\.attn\.qkv\.weight")
    fc1 = sd.get("blocks.0.mlp.fc1.weight", sd.get(P + "context_encoder.blocks.0.mlp.fc1.weight"))
    per_layer = scale is not None and scale.shape[0] > 1
    if n_pos <= 0 or pos_w is None:
        raise ValueError(f"The checkpoint has no relative positional convolution. {DOWNLOAD_HINT}")
    k = int(pos_w.shape[-1])
    return replace(
        base,
        embed_dim=D, depth=depth, num_heads=heads,
        mlp_ratio=(fc1.shape[0] / D) if fc1 is not None else base.mlp_ratio,
        norm_affine=any(k_.endswith("norm1.weight") for k_ in sd),
        layer_norm_first="norm.weight" in sd,
        feature_encoder_spec=tuple(zip(dims, kernels, strides)),
        extractor_mode="layer_norm" if P + "local_encoder.conv_layers.0.2.1.weight" in sd else "default",
        conv_pos_width=k * n_pos, conv_pos_groups=D // int(pos_w.shape[1]), conv_pos_depth=n_pos,
        conv_pos_pre_ln=pre_ln, prenet_depth=prenet,
        num_extra_tokens=int(extra.shape[1]) if extra is not None else 0,
        use_alibi_encoder=scale is not None,
        learned_alibi_scale_per_head=scale is not None and scale.shape[2] > 1,
        learned_alibi_scale_per_layer=per_layer,
        num_alibi_heads=heads,
        model_depth=(int(scale.shape[0]) - prenet) if per_layer else depth,
    )


def _resolve_path(path) -> Path:
    if path is None or str(path) == "":
        raise ValueError(f"No emotion2vec checkpoint path was given. {DOWNLOAD_HINT}")
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("model.pt", "model.safetensors", "emotion2vec_plus_large.pt",
                     "emotion2vec_plus_large.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"The folder '{p}' holds no model.pt or model.safetensors. {DOWNLOAD_HINT}")
    if not p.exists():
        raise FileNotFoundError(f"emotion2vec checkpoint not found: '{p}'. {DOWNLOAD_HINT}")
    return p


def _config_beside(path: Path) -> Emotion2vecConfig | None:
    for name in ("config.yaml", path.stem + ".yaml"):
        c = path.parent / name
        if c.is_file():
            try:
                return Emotion2vecConfig.from_yaml(c)
            except ImportError:
                return None
    return None


def load_emotion2vec(path_or_state_dict, config: Emotion2vecConfig | None = None) -> Emotion2vecEncoder:
    """Load the encoder (float32, CPU, eval mode) from a ``model.pt``, a ``.safetensors`` conversion, a
    folder holding one, or a state dict with FunASR keys.

    The config is, in order: ``config``, a FunASR ``config.yaml`` beside the file, or inferred from the
    tensors (:func:`infer_emotion2vec_config`). :data:`UNUSED_PREFIXES` tensors are dropped; any missing,
    unexpected or mis-shaped tensor raises ``ValueError`` naming the file and what to download."""
    source = "the given state dict"
    if isinstance(path_or_state_dict, Mapping):
        raw = {str(k): v for k, v in path_or_state_dict.items() if isinstance(v, torch.Tensor)}
    elif isinstance(path_or_state_dict, (str, Path)):
        path = _resolve_path(path_or_state_dict)
        source = f"'{path}'"
        raw, _ = read_checkpoint_file(path)
        if config is None:
            config = _config_beside(path)
    else:
        raise TypeError(f"load_emotion2vec expects a file path or a state dict, got "
                        f"{type(path_or_state_dict).__name__}.")
    sd = emotion2vec_state_dict(raw, source)
    if config is None:
        config = infer_emotion2vec_config(sd)
    elif not isinstance(config, Emotion2vecConfig):
        raise TypeError(f"config must be an Emotion2vecConfig, got {type(config).__name__}.")
    with torch.device("meta"):
        model = Emotion2vecEncoder(config)
    check_state_dict(model.state_dict(), sd, f"The emotion2vec checkpoint {source}",
                     f"the architecture (width {config.embed_dim}, {config.prenet_depth}+{config.depth} blocks)",
                     hint=f"Use its own config.yaml, or the right file. {DOWNLOAD_HINT}")
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval().requires_grad_(False)
