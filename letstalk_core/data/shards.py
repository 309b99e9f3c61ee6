"""Training shards: one ``.safetensors`` file per source video, plus an ``index.json`` per folder.

Shard tensors (format ``letstalk-shard-v1``):

* ``latents``: float16 ``[F, C, h, w]``, the DC-AE latents (already multiplied by its scaling factor)
  of the F cropped and resized frames;
* ``audio``: float32 ``[F, L, D]``, the speech features of each frame (``SpeechEncoder``);
* ``frames`` (optional, ``--keep-frames``): uint8 ``[F, H, W, 3]``, the cropped frames that were encoded.

Shard metadata (safetensors metadata, all strings): ``letstalk_shard`` (the format version),
``source`` (the video's file name), ``source_size`` (bytes), ``fps``, ``frames`` (F), ``crop_box``
(JSON ``[x0, y0, x1, y1]`` in source pixels), ``size`` (JSON ``[height, width]``),
``dcae_fingerprint`` (:func:`dcae_fingerprint`), ``speech_encoder_config`` (JSON),
``letstalk_config`` (the model config, JSON), ``detector``. Extra keys are kept as given.

``index.json`` lists each shard's name, frame count, fps, latent and audio shapes and whether it
keeps frames, plus what all shards must share; :func:`write_index` and :func:`read_index` refuse
a folder whose shards disagree (fps, latent shape, audio shape, config or DC-AE).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "INDEX_NAME",
    "SHARD_FORMAT",
    "Shard",
    "ShardInfo",
    "ShardWriter",
    "config_fingerprint",
    "dcae_fingerprint",
    "read_index",
    "read_shard",
    "read_shard_metadata",
    "scan_shards",
    "shard_info",
    "write_index",
    "write_shard",
]

SHARD_FORMAT = "letstalk-shard-v1"
FORMAT_KEY = "letstalk_shard"
INDEX_NAME = "index.json"
INDEX_FORMAT = "letstalk-shard-index-v1"
#: Metadata keys stored as JSON (everything else is a plain string; ``frames`` an int, ``fps`` a float).
_JSON_KEYS = ("crop_box", "size")
_REQUIRED_KEYS = ("source", "fps", "frames", "dcae_fingerprint", "speech_encoder_config", "letstalk_config")


def dcae_fingerprint(model: torch.nn.Module) -> str:
    """Short (16 hex) sha256 of a module's state dict: names, dtypes, shapes and bytes, in sorted order."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def config_fingerprint(config_json: str) -> str:
    """Short (16 hex) sha256 of a config JSON, after canonicalising it (sorted keys)."""
    canon = json.dumps(json.loads(config_json), sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardInfo:
    """What the index records about one shard (``name`` is the file name, e.g. ``clip01.safetensors``)."""

    name: str
    frames: int
    fps: float
    latent_shape: tuple[int, ...]  # [C, h, w] of one frame
    audio_shape: tuple[int, ...]  # [L, D] of one frame
    has_frames: bool
    config_hash: str = ""
    dcae_fingerprint: str = ""
    source: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_shape"], d["audio_shape"] = list(self.latent_shape), list(self.audio_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ShardInfo:
        d = dict(d)
        d["latent_shape"], d["audio_shape"] = tuple(d["latent_shape"]), tuple(d["audio_shape"])
        return cls(**d)


@dataclass
class Shard:
    """A read shard: tensors (``frames`` is ``None`` unless asked for and stored) and parsed metadata."""

    path: Path
    latents: torch.Tensor
    audio: torch.Tensor
    frames: torch.Tensor | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.latents.shape[0])

    @property
    def fps(self) -> float:
        return float(self.metadata["fps"])

    @property
    def config(self):
        """The LetsTalk config the shard was made for."""
        from ..families.letstalk.config import LetsTalkConfig

        return LetsTalkConfig.from_json(self.metadata["letstalk_config"])


def _encode_metadata(metadata: dict) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        out[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return out


def _parse_metadata(raw: dict[str, str], source: str) -> dict[str, Any]:
    if raw.get(FORMAT_KEY) != SHARD_FORMAT:
        raise ValueError(f"'{source}' is not a LetsTalk shard ({FORMAT_KEY} = {raw.get(FORMAT_KEY)!r}, "
                         f"expected {SHARD_FORMAT!r}); re-run `letstalk preprocess`.")
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"shard '{source}' lacks the metadata {missing}; re-run `letstalk preprocess`.")
    meta: dict[str, Any] = dict(raw)
    meta["frames"] = int(raw["frames"])
    meta["fps"] = float(raw["fps"])
    for key in _JSON_KEYS:
        if key in raw:
            meta[key] = json.loads(raw[key])
    return meta


_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.uint8: "U8"}


class ShardWriter:
    """Streams one shard to disk: the header is written first (every shape is known up front), then
    rows of each tensor are written in place as they are produced, so memory does not grow with the
    video's length. The file appears under its final name only on a successful :meth:`close`
    (written to ``path + '.tmp'``, then renamed); an exception inside ``with`` removes the partial file.

    ``ShardWriter(path, frames=F, latent_shape=(C, h, w), audio_shape=(L, D), frame_shape=(H, W, 3) or None,
    metadata={...})``; ``write("latents" | "audio" | "frames", start, rows)``.
    """

    def __init__(self, path, *, frames: int, latent_shape, audio_shape, frame_shape=None, metadata: dict):
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"a shard needs at least one frame, got frames={frames!r}.")
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.frames = frames
        specs = [("latents", torch.float16, tuple(latent_shape)), ("audio", torch.float32, tuple(audio_shape))]
        if frame_shape is not None:
            specs.append(("frames", torch.uint8, tuple(frame_shape)))
        meta = _encode_metadata({**metadata, "frames": frames, FORMAT_KEY: SHARD_FORMAT})
        missing = [k for k in _REQUIRED_KEYS if k not in meta]
        if missing:
            raise ValueError(f"shard metadata lacks {missing}.")
        header: dict[str, Any] = {"__metadata__": meta}
        self.layout: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        offset = 0
        for key, dtype, row in specs:
            nbytes = frames * math.prod(row) * torch.empty((), dtype=dtype).element_size()
            header[key] = {"dtype": _DTYPES[dtype], "shape": [frames, *row], "data_offsets": [offset, offset + nbytes]}
            self.layout[key] = (dtype, row, offset, nbytes // frames)
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.data_start = 8 + len(text)
        self.written = {key: 0 for key in self.layout}
        self._file = open(self.tmp, "wb")
        self._file.write(len(text).to_bytes(8, "little") + text)
        self._file.truncate(self.data_start + offset)

    def write(self, key: str, start: int, rows) -> None:
        """Write ``rows`` (``[n, *row_shape]``, converted to the stored dtype) as rows ``[start, start + n)`` of ``key``."""
        if key not in self.layout:
            raise KeyError(f"this shard has no tensor {key!r}; it has {list(self.layout)}.")
        dtype, row, offset, row_bytes = self.layout[key]
        t = torch.as_tensor(rows).detach().to("cpu")
        if tuple(t.shape[1:]) != row or t.ndim != len(row) + 1:
            raise ValueError(f"rows of {key!r} must be [n, {', '.join(map(str, row))}], got {tuple(t.shape)}.")
        if dtype == torch.uint8 and t.dtype != torch.uint8:
            raise ValueError(f"{key!r} rows must be uint8, got {t.dtype}.")
        n = t.shape[0]
        if start < 0 or start + n > self.frames:
            raise ValueError(f"rows [{start}, {start + n}) of {key!r} lie outside the shard's {self.frames} frames.")
        data = t.to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.seek(self.data_start + offset + start * row_bytes)
        try:
            self._file.write(data.tobytes())
        except OSError as e:
            from ..io.space import write_failed

            self.abort()
            raise write_failed(e, self.path, kept="Shards finished before are kept: run the same command again "
                                                  "to continue with the rest.") from e
        self.written[key] += n

    def close(self) -> Path:
        """Finish the file (every row of every tensor must have been written) and move it into place."""
        if self._file.closed:
            return self.path
        short = {k: v for k, v in self.written.items() if v != self.frames}
        self._file.close()
        if short:
            self.tmp.unlink(missing_ok=True)
            raise ValueError(f"shard '{self.path.name}' is incomplete: rows written {short}, expected {self.frames} each.")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file (closing it may fail on a full disk: it is removed all the same)."""
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(path, *, latents: torch.Tensor, audio: torch.Tensor, frames=None, metadata: dict) -> Path:
    """Write one shard from whole tensors (see :class:`ShardWriter` for streaming).

    ``latents`` ``[F, C, h, w]`` (stored float16), ``audio`` ``[F, L, D]`` (stored float32), ``frames``
    uint8 ``[F, H, W, 3]`` (torch or numpy) or ``None``. ``metadata``: str values stored as they are,
    others as JSON; ``frames`` (F) and the format version are filled in. Returns the path.
    """
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError(f"latents must be a tensor [F, C, h, w], got {getattr(latents, 'shape', type(latents))}.")
    if not isinstance(audio, torch.Tensor) or audio.ndim != 3:
        raise ValueError(f"audio must be a tensor [F, L, D], got {getattr(audio, 'shape', type(audio))}.")
    n = latents.shape[0]
    if audio.shape[0] != n:
        raise ValueError(f"latents have {n} frames but audio features {audio.shape[0]}; they must match.")
    if frames is not None:
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] != n:
            raise ValueError(f"frames must be uint8 [{n}, H, W, 3], got {frames.dtype} {tuple(frames.shape)}.")
    with ShardWriter(path, frames=n, latent_shape=latents.shape[1:], audio_shape=audio.shape[1:],
                     frame_shape=None if frames is None else frames.shape[1:], metadata=metadata) as w:
        w.write("latents", 0, latents)
        w.write("audio", 0, audio)
        if frames is not None:
            w.write("frames", 0, frames)
    return Path(path)


def _open(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read shard '{path}': {e}. Is it a complete .safetensors file?") from e


def read_shard_metadata(path) -> dict[str, Any]:
    """Parsed metadata of a shard, without reading its tensors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"shard '{p}' does not exist.")
    with _open(p) as f:
        return _parse_metadata(f.metadata() or {}, str(p))


def read_shard(path, *, frames: bool = False, start: int = 0, stop: int | None = None) -> Shard:
    """Read a shard's tensors (frames ``[start, stop)``, all by default) and metadata.

    Only the requested rows are read (``safe_open(...).get_slice``), so a training loader can take
    one clip of a long video cheaply; ``frames=True`` also reads the stored pixels (``ValueError`` if
    the shard was written without ``--keep-frames``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"shard '{p}' does not exist.")
    with _open(p) as f:
        meta = _parse_metadata(f.metadata() or {}, str(p))
        n = meta["frames"]
        stop = n if stop is None else stop
        if not 0 <= start < stop <= n:
            raise ValueError(f"frame range [{start}, {stop}) is outside shard '{p.name}' of {n} frames.")
        keys = set(f.keys())
        if frames and "frames" not in keys:
            raise ValueError(f"shard '{p.name}' was written without frames; re-run preprocessing with --keep-frames.")
        get = lambda k: f.get_slice(k)[start:stop]
        return Shard(path=p, latents=get("latents"), audio=get("audio"),
                     frames=get("frames") if frames else None, metadata=meta)


def shard_info(path) -> ShardInfo:
    """The index entry of a shard, from its header only."""
    p = Path(path)
    with _open(p) as f:
        meta = _parse_metadata(f.metadata() or {}, str(p))
        lat, aud = f.get_slice("latents").get_shape(), f.get_slice("audio").get_shape()
        has_frames = "frames" in set(f.keys())
    return ShardInfo(name=p.name, frames=meta["frames"], fps=meta["fps"], latent_shape=tuple(lat[1:]),
                     audio_shape=tuple(aud[1:]), has_frames=has_frames,
                     config_hash=config_fingerprint(meta["letstalk_config"]),
                     dcae_fingerprint=meta["dcae_fingerprint"], source=meta.get("source", ""))


def scan_shards(folder) -> list[ShardInfo]:
    """Index entries of every shard (``*.safetensors``) in ``folder``, sorted by name."""
    folder = Path(folder)
    return [shard_info(p) for p in sorted(folder.glob("*.safetensors"))]


_SHARED = ("fps", "latent_shape", "audio_shape", "config_hash", "dcae_fingerprint")
_SHARED_WHAT = {"fps": "fps", "latent_shape": "latent shape", "audio_shape": "audio feature shape",
                "config_hash": "model config", "dcae_fingerprint": "DC-AE weights"}


def _check_consistent(shards: list[ShardInfo], where: str) -> dict:
    if not shards:
        return {}
    first = shards[0]
    for s in shards[1:]:
        for key in _SHARED:
            a, b = getattr(first, key), getattr(s, key)
            if a != b:
                raise ValueError(
                    f"the shards in {where} disagree on the {_SHARED_WHAT[key]}: '{first.name}' has {a!r}, "
                    f"'{s.name}' has {b!r}. Keep shards made with one config, DC-AE and fps per folder "
                    "(preprocess into a new folder, or delete the stale shards)."
                )
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"the shards in {where} have duplicate names.")
    return {key: (list(v) if isinstance(v := getattr(first, key), tuple) else v) for key in _SHARED}


def write_index(folder, shards: Iterable[ShardInfo]) -> Path:
    """Write ``folder/index.json`` for ``shards`` (refused with ``ValueError`` if they disagree)."""
    folder = Path(folder)
    shards = sorted(shards, key=lambda s: s.name)
    shared = _check_consistent(shards, f"'{folder}'")
    doc = {"format": INDEX_FORMAT, **shared, "total_frames": sum(s.frames for s in shards),
           "shards": [s.to_dict() for s in shards]}
    path = folder / INDEX_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_index(folder) -> list[ShardInfo]:
    """The shards listed in ``folder/index.json`` (``ValueError`` if missing, malformed or inconsistent)."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"'{folder}' has no {INDEX_NAME}; run `letstalk preprocess ... --out {folder}` first.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {INDEX_FORMAT!r}")
        shards = [ShardInfo.from_dict(d) for d in doc["shards"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"'{path}' is not a valid shard index: {e}.") from e
    _check_consistent(shards, f"'{path}'")
    return shards
