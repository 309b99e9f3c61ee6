"""Training settings, one dataclass read from a JSON (or YAML) file.

Defaults follow the authors' ``configs/train.yaml`` where it is sound (AdamW, wd 0, EMA, the noise-
regularised memory; letstalk_memo.md §1.7, §1.9) and depart where the reference lists a defect
(§1.11): condition dropout is on, so per-modality guidance works, and gradients are clipped from the
first step.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class TrainConfig:
    data: str  # folder of preprocessed shards (``letstalk preprocess``)
    out: str  # run folder: checkpoints, log, exported model
    model: str = "demo"  # preset name, or a LetsTalkConfig JSON file
    model_overrides: dict = field(default_factory=dict)  # DiTConfig fields, e.g. {"portrait_fusion": "siamese"}
    dcae: str | None = None  # DC-AE weights: encodes the noisy memory pixels, bundled into exported models
    steps: int = 1000
    batch_size: int = 4  # global batch, split evenly over the processes
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    p_drop_portrait: float = 0.05  # condition dropout (classifier-free guidance)
    p_drop_audio: float = 0.1
    p_drop_both: float = 0.05
    p_memory_from_portrait: float = 0.1  # memory = the portrait repeated, as for the first clip at inference
    noise_regularisation: bool = True  # pixel noise, latent noise and spatial mask on the memory (§1.7)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    strategy: str = "ddp"  # ddp, or fsdp for the large presets
    seed: int = 3407
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    export_steps: list = field(default_factory=list)  # also keep model_step_N.safetensors at these steps
    threads: int = 0  # CPU threads per process; 0 = torch's default
    provenance: dict = field(default_factory=dict)  # free-form (commands, data seed), copied into exports

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"train config: {name} must be a positive integer, got {v!r}.")
        for name in ("warmup_steps", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"train config: {name} must be an integer >= 0, got {v!r}.")
        if not self.lr > 0:
            raise ValueError(f"train config: lr must be > 0, got {self.lr!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train config: ema_decay must be in [0, 1), got {self.ema_decay!r}.")
        for name in ("p_drop_portrait", "p_drop_audio", "p_drop_both", "p_memory_from_portrait"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"train config: {name} must be a probability in [0, 1], got {v!r}.")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("train config: grad_clip and weight_decay must be >= 0.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train config: precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"train config: strategy must be one of {STRATEGIES}, got {self.strategy!r}.")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}; known keys: {sorted(known)}.")
        missing = [k for k in ("data", "out") if k not in values]
        if missing:
            raise ValueError(f"train config: {missing} must be given (the shard folder and the run folder).")
        return cls(**values)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_train_config(path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a JSON (or, with PyYAML, YAML) file; ``overrides`` are ``key=value`` strings whose value is
    parsed as JSON when it can be (``steps=200``, ``model_overrides={"depth": 2}``). Relative ``data``,
    ``out`` and ``dcae`` paths are taken from the current directory, like the command line's."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"train config file '{p}' does not exist.")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ValueError("reading a YAML config needs PyYAML: pip install pyyaml (or use a .json config).") from e
        values = yaml.safe_load(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{p}' is not valid JSON: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"'{p}' must hold a mapping of settings.")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value.")
        values[key.strip()] = _parse_value(value)
    return TrainConfig.from_dict(values)
