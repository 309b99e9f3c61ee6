"""Load a MEMO model folder as its authors publish it (huggingface.co/memoavatar/memo; reference/
letstalk_memo.md §2.9), memory-mapped, part by part, only when a part is first used.

Layout (each part ``config.json`` + ``diffusion_pytorch_model.safetensors``)::

    reference_net/  diffusion_net/  image_proj/  audio_proj/  misc/audio_emotion_classifier/
    misc/face_analysis/models/{scrfd_10g_bnkps,glintr100,...}.onnx

:func:`open_memo_folder` checks the whole folder before any weight is read: every part's
``config.json`` (parsed into our configs), and every safetensors *header* against the tensor names and
shapes our networks expect (built on the meta device, so checking costs no memory). A missing,
renamed, truncated or mis-shaped part is refused with a message that names the file and says what to
do. :meth:`MemoFolder.load` then builds a part on the meta device and assigns the file's tensors to
it (``load_state_dict(assign=True)``), cast one tensor at a time to the asked dtype: the weights
exist once in memory, never as a second full copy. No pickle is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...audio.projector import AudioProjector, AudioProjectorConfig
from ...formats import is_letstalk_checkpoint, looks_like_memo_folder  # noqa: F401  (re-exported)
from ...validation import check_state_dict
from .config import UNetConfig, parse_unet_config
from .projections import EMOTION_FEATURES, EmotionClassifier, ImageProj

WEIGHTS = "diffusion_pytorch_model.safetensors"
# part name -> (folder inside the MEMO folder, class name the reference saved it as)
PARTS: dict[str, tuple[str, str]] = {
    "reference_net": ("reference_net", "UNet2DConditionModel"),
    "diffusion_net": ("diffusion_net", "UNet3DConditionModel"),
    "image_proj": ("image_proj", "ImageProjModel"),
    "audio_proj": ("audio_proj", "AudioProjModel"),
    "audio_emotion_classifier": ("misc/audio_emotion_classifier", "AudioEmotionClassifierModel"),
}
FACE_MODELS = ("scrfd_10g_bnkps.onnx", "glintr100.onnx")
DOWNLOAD_HINT = ("Download the whole folder from https://huggingface.co/memoavatar/memo (for ComfyUI into "
                 "models/memo/<name>/) and keep its layout.")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"MEMO folder is missing {path}. {DOWNLOAD_HINT}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}). {DOWNLOAD_HINT}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object. {DOWNLOAD_HINT}")
    return raw


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from a safetensors header, reading no tensor data."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"MEMO folder is missing {path}. {DOWNLOAD_HINT}")
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                s = f.get_slice(k)
                out[k] = (tuple(s.get_shape()), s.get_dtype())
            return out
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"{path} cannot be read as safetensors ({type(e).__name__}: {e}): the file is incomplete "
                         f"or corrupt. Download it again. {DOWNLOAD_HINT}") from None


# Buffers a file may omit: the temporal module's sinusoidal position table is a persistent buffer
# (saved by save_pretrained), but it is a fixed function of its shape, so a file without it is complete.
OPTIONAL_SUFFIXES = (".pos_encoder.pe",)


def _check_tensors(path: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple]) -> None:
    meta = torch.device("meta")
    check_state_dict({k: torch.empty(v, device=meta) for k, v in expected.items()},
                     {k: torch.empty(v[0], device=meta) for k, v in found.items()}, str(path), "its config.json",
                     optional=OPTIONAL_SUFFIXES,
                     hint=f"Was the file renamed, mixed with another model's, or edited? {DOWNLOAD_HINT}")


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _on_meta(build):
    with torch.device("meta"):
        return build()


@dataclass
class Part:
    """One checked part: its folder, raw config, how to build it, and the file's header."""

    name: str
    folder: Path
    raw_config: dict[str, Any]
    build: Any  # () -> nn.Module
    header: dict[str, tuple]
    config: Any = None

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS

    @property
    def file_dtype(self) -> str:
        dts = {d for _, d in self.header.values()}
        return "/".join(sorted(dts))


def _infer_small_part(name: str, raw: dict, header: dict, source: Path):
    """Builders for the parts saved without their constructor arguments (the reference's
    ImageProjModel, AudioProjModel and AudioEmotionClassifierModel do not register them): the widths
    come from ``config.json`` when it has them, otherwise from the weights' shapes."""
    def shape(k):
        if k not in header:
            raise ValueError(f"{source} has no tensor '{k}', so it is not a MEMO {name}. {DOWNLOAD_HINT}")
        return header[k][0]

    fields = {k: v for k, v in raw.items() if not k.startswith("_")}
    if name == "image_proj":
        known = {"cross_attention_dim", "clip_embeddings_dim", "clip_extra_context_tokens"}
        _refuse_unknown(fields, known, source)
        dim = fields.get("cross_attention_dim", shape("norm.weight")[0])
        rows, emb = shape("proj.weight")
        emb = fields.get("clip_embeddings_dim", emb)
        tokens = fields.get("clip_extra_context_tokens", rows // dim if dim else 0)
        cfg = {"embedding_dim": emb, "tokens": tokens, "dim": dim}
        return cfg, lambda: ImageProj(**cfg)
    if name == "audio_proj":
        known = {"seq_len", "blocks", "channels", "intermediate_dim", "output_dim", "context_tokens"}
        _refuse_unknown(fields, known, source)
        out = fields.get("output_dim", shape("norm.weight")[0])
        hidden, flat = shape("proj1.weight")
        rows = shape("proj3.weight")[0]
        cfg = AudioProjectorConfig(window=fields.get("seq_len", 5), layers=fields.get("blocks", 12),
                                   channels=fields.get("channels", 768),
                                   hidden=fields.get("intermediate_dim", hidden),
                                   tokens=fields.get("context_tokens", rows // out if out else 0), out_dim=out)
        if cfg.input_dim != flat:
            raise ValueError(f"{source}: proj1 takes {flat} inputs but seq_len×blocks×channels = {cfg.window}×"
                             f"{cfg.layers}×{cfg.channels} = {cfg.input_dim}; put the right values in config.json.")
        return cfg, lambda: AudioProjector(cfg)
    known = {"num_classifier_layers", "num_classifier_channels"}
    _refuse_unknown(fields, known, source)
    fcs = sorted(int(k[len("layers.fc"):].split(".")[0]) for k in header if k.startswith("layers.fc"))
    layers = fields.get("num_classifier_layers", max(fcs) if fcs else 1)
    width = fields.get("num_classifier_channels", shape("layers.fc1.weight")[0] if layers > 1 else 2048)
    if layers > 1 and shape("layers.fc1.weight")[1] != EMOTION_FEATURES:
        raise ValueError(f"{source}: the classifier's first layer takes {shape('layers.fc1.weight')[1]} features; "
                         f"MEMO's takes {EMOTION_FEATURES} (emotion2vec_plus_large). {DOWNLOAD_HINT}")
    cfg = {"layers": layers, "width": width}
    return cfg, lambda: EmotionClassifier(**cfg)


def _refuse_unknown(fields: dict, known: set, source: Path) -> None:
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{source} has fields this MEMO part does not know: {unknown}. Use the config.json "
                         f"published with the weights. {DOWNLOAD_HINT}")


def _check_class(name: str, raw: dict, source: Path) -> None:
    cls = raw.get("_class_name")
    want = PARTS[name][1]
    if cls is not None and cls != want:
        other = next((n for n, (_, c) in PARTS.items() if c == cls), None)
        where = f" — that is the {other} part; are two folders swapped?" if other else ""
        raise ValueError(f"{source} describes a {cls}{where} The {PARTS[name][0]}/ folder holds a {want}. "
                         f"{DOWNLOAD_HINT}")


def _refuse_not_a_folder(p: Path) -> None:
    if not p.exists():
        raise FileNotFoundError(f"MEMO folder not found: '{p}'. {DOWNLOAD_HINT}")
    if p.is_file():
        kind = "a file"
        if is_letstalk_checkpoint(p):
            kind = "a LetsTalk checkpoint (load it with the LetsTalk model loader, or `letstalk generate "\
                   "--checkpoint` as it is)"
        raise ValueError(f"'{p}' is {kind}, not a MEMO model folder. A MEMO model is the folder with "
                         f"reference_net/, diffusion_net/, image_proj/, audio_proj/ and misc/. {DOWNLOAD_HINT}")


@dataclass
class MemoFolder:
    """A checked MEMO folder: its parts' configs and headers. Build a part with :meth:`load`."""

    path: Path
    parts: dict[str, Part] = field(default_factory=dict)
    face_models: dict[str, bool] = field(default_factory=dict)

    @property
    def reference_config(self) -> UNetConfig:
        return self.parts["reference_net"].config

    @property
    def diffusion_config(self) -> UNetConfig:
        return self.parts["diffusion_net"].config

    def load(self, name: str, *, device="cpu", dtype: torch.dtype | None = torch.float32) -> nn.Module:
        """Part ``name`` with the file's weights (cast to ``dtype``; None keeps the file's), eval mode."""
        from safetensors import safe_open

        if name not in self.parts:
            raise KeyError(f"Unknown MEMO part {name!r}; parts: {sorted(self.parts)}.")
        part = self.parts[name]
        module = _on_meta(part.build)
        state = {}
        try:
            with safe_open(str(part.weights), framework="pt", device=str(torch.device(device))) as f:
                for k in f.keys():
                    t = f.get_tensor(k)
                    state[k] = t if dtype is None or not t.is_floating_point() else t.to(dtype)
        except Exception as e:
            raise ValueError(f"{part.weights} could not be read ({type(e).__name__}: {e}): the file is incomplete "
                             f"or corrupt. Download it again. {DOWNLOAD_HINT}") from None
        absent = [k for k in module.state_dict() if k not in state]
        if absent:  # only the optional position tables can be absent (checked when the folder was opened)
            from ...layers.embeddings import sinusoidal_positions
            meta = module.state_dict()
            for k in absent:
                _, length, dim = meta[k].shape
                state[k] = sinusoidal_positions(length, dim).to(device=device, dtype=dtype or torch.float32)
        module.load_state_dict(state, strict=True, assign=True)
        module.requires_grad_(False)
        return module.eval()


def describe_memo_folder(folder: MemoFolder) -> dict:
    """What a checked MEMO folder holds, from its configs and headers (no weight is read): per part the
    parameter count, the file's dtypes and size, and which face-analysis models are present."""
    import math

    parts = {}
    for name, part in folder.parts.items():
        params = sum(math.prod(shape) for shape, _ in part.header.values())
        parts[name] = {"parameters": params, "dtypes": sorted({d for _, d in part.header.values()}),
                       "file_bytes": part.weights.stat().st_size, "tensors": len(part.header)}
    d = folder.diffusion_config
    return {"folder": str(folder.path), "parts": parts,
            "diffusion_net": {"block_out_channels": list(d.block_out_channels),
                              "cross_attention_dim": d.cross_attention_dim},
            "face_models": folder.face_models}


def open_memo_folder(path) -> MemoFolder:
    """Check a MEMO folder (configs and safetensors headers of every network part) and return it."""
    p = Path(path).expanduser()
    if not p.is_dir():
        _refuse_not_a_folder(p)
    from .diffusion_net import DiffusionNet
    from .reference_net import ReferenceNet

    folder = MemoFolder(path=p)
    for name, (sub, _) in PARTS.items():
        d = p / sub
        if not d.is_dir():
            raise FileNotFoundError(f"MEMO folder '{p}' has no {sub}/ folder. {DOWNLOAD_HINT}")
        cfg_path = d / "config.json"
        raw = _read_config(cfg_path)
        _check_class(name, raw, cfg_path)
        header = read_header(d / WEIGHTS)
        if name in ("reference_net", "diffusion_net"):
            cfg = parse_unet_config(raw, "reference" if name == "reference_net" else "diffusion", str(cfg_path))
            build = (lambda c=cfg: ReferenceNet(c)) if name == "reference_net" else (lambda c=cfg: DiffusionNet(c))
        else:
            cfg, build = _infer_small_part(name, raw, header, d / WEIGHTS)
        part = Part(name=name, folder=d, raw_config=raw, build=build, header=header, config=cfg)
        _check_tensors(part.weights, _shapes(_on_meta(build)), header)
        folder.parts[name] = part
    rc, dc = folder.parts["reference_net"].config, folder.parts["diffusion_net"].config
    if (rc.block_out_channels, rc.cross_attention_dim) != (dc.block_out_channels, dc.cross_attention_dim):
        raise ValueError(f"{p}: reference_net and diffusion_net come from different models (widths "
                         f"{list(rc.block_out_channels)} vs {list(dc.block_out_channels)}). {DOWNLOAD_HINT}")
    face = p / "misc" / "face_analysis" / "models"
    folder.face_models = {m: (face / m).is_file() for m in FACE_MODELS}
    return folder


@dataclass
class MemoModels:
    """The networks of one MEMO folder, each loaded on first use."""

    folder: MemoFolder
    device: Any = "cpu"
    dtype: torch.dtype = torch.float32

    def _load(self, name):
        return self.folder.load(name, device=self.device, dtype=self.dtype)

    @cached_property
    def reference_net(self):
        return self._load("reference_net")

    @cached_property
    def diffusion_net(self):
        return self._load("diffusion_net")

    @cached_property
    def image_proj(self):
        return self._load("image_proj")

    @cached_property
    def audio_proj(self):
        return self._load("audio_proj")

    @cached_property
    def emotion_classifier(self):
        return self._load("audio_emotion_classifier")


def load_memo(path, *, device="cpu", dtype: torch.dtype = torch.float32) -> MemoModels:
    """Check the folder now; load each network when first used."""
    return MemoModels(open_memo_folder(path), device=device, dtype=dtype)
