"""LetsTalk checkpoints: one ``.safetensors`` file whose metadata carries the full config as JSON.

Tensor groups by prefix: ``dit.`` (the transformer with its audio projector, required), ``dcae.`` (the
autoencoder, optional: bundled demo/test models carry theirs) and ``speech.`` (a wav2vec2 encoder,
optional). A loader needs no side file, and a file that does not match its config is refused with a
message naming the tensors and both shapes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...formats import LETSTALK_CONFIG_KEY, looks_like_memo_folder
from ...validation import check_state_dict, require_file
from .config import LetsTalkConfig

CONFIG_KEY = LETSTALK_CONFIG_KEY
FORMAT_KEY = "letstalk_format"
FORMAT = "letstalk-checkpoint-v1"
INFERENCE_KEY = "letstalk_inference"  # the sampling recipe the model is meant to be run with (JSON)
#: Where a checkpoint records no recipe: what each objective is sampled with by default.
OBJECTIVE_RECIPES = {"flow": {"sampler": "euler", "steps": 10}, "ddpm": {"sampler": "ddim", "steps": 25}}


@dataclass(frozen=True)
class InferenceRecipe:
    """How a checkpoint is meant to be sampled, and where that came from (for the CLI's messages)."""

    sampler: str
    steps: int
    source: str


def inference_recipe(config: LetsTalkConfig, meta: dict[str, str]) -> InferenceRecipe:
    """The checkpoint's recorded recipe (``letstalk_inference`` metadata: ``{"sampler", "steps"}``),
    else the default of its diffusion objective (:data:`OBJECTIVE_RECIPES`)."""
    if INFERENCE_KEY in meta:
        try:
            raw = json.loads(meta[INFERENCE_KEY])
            sampler, steps = str(raw["sampler"]), int(raw["steps"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"the checkpoint's '{INFERENCE_KEY}' metadata is not valid ({e}); "
                             "give --steps and --sampler explicitly.") from e
        return InferenceRecipe(sampler, steps, "recorded in the checkpoint")
    base = OBJECTIVE_RECIPES[config.diffusion.objective]
    return InferenceRecipe(base["sampler"], base["steps"], f"the default for {config.diffusion.objective} models")


def recipe_metadata(config: LetsTalkConfig, sampler: str | None = None, steps: int | None = None) -> dict[str, str]:
    """The ``letstalk_inference`` metadata entry for an export (the objective's default unless given)."""
    base = OBJECTIVE_RECIPES[config.diffusion.objective]
    return {INFERENCE_KEY: json.dumps({"sampler": sampler or base["sampler"], "steps": int(steps or base["steps"])})}


def check_module_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse ``state`` unless it has exactly ``module``'s tensors with their shapes."""
    check_state_dict(module.state_dict(), state, source)


def save_checkpoint(path, config: LetsTalkConfig, model: nn.Module, *, dcae: nn.Module | None = None,
                    speech: nn.Module | None = None, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write model (and optionally the DC-AE and speech encoder) with the config in the metadata."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("dit.", model), ("dcae.", dcae), ("speech.", speech)):
        if module is not None:
            tensors.update({prefix + k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()})
    meta = {CONFIG_KEY: config.to_json(), FORMAT_KEY: FORMAT}
    meta.update(extra_metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_checkpoint(path) -> tuple[LetsTalkConfig, dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Read a checkpoint → (config, {"dit": …, "dcae": …, "speech": …} state dicts, metadata)."""
    from safetensors import SafetensorError, safe_open

    if path is not None and Path(path).is_dir():
        if looks_like_memo_folder(path):
            raise ValueError(f"'{path}' is a MEMO model folder, not a LetsTalk checkpoint (a single .safetensors "
                             "file). Load it with the MEMO loader (the MEMO Loader node, or `letstalk generate --checkpoint` as it is).")
    p = require_file(path, "LetsTalk checkpoint")
    if p.suffix not in {".safetensors", ".sft"}:
        raise ValueError(f"'{p.name}' is not a .safetensors file; LetsTalk checkpoints are .safetensors files.")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            groups: dict[str, dict[str, torch.Tensor]] = {"dit": {}, "dcae": {}, "speech": {}}
            for key in f.keys():
                prefix, _, rest = key.partition(".")
                if prefix not in groups:
                    memo = " It looks like one part of a MEMO model folder: give the whole folder to the MEMO loader." \
                        if p.name == "diffusion_pytorch_model.safetensors" else ""
                    raise ValueError(f"'{p.name}' holds tensor '{key}' outside the dit./dcae./speech. groups; it is not "
                                     f"a LetsTalk checkpoint.{memo}")
                groups[prefix][rest] = f.get_tensor(key)
    except SafetensorError as e:
        raise ValueError(f"cannot read '{p}': {e}. The file is incomplete or not a safetensors file.") from e
    if CONFIG_KEY not in meta:
        raise ValueError(f"'{p.name}' has no '{CONFIG_KEY}' metadata, so it is not a LetsTalk checkpoint "
                         "(a DC-AE or speech-encoder file goes to the matching loader instead).")
    try:
        config = LetsTalkConfig.from_json(meta[CONFIG_KEY])
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"the config stored in '{p.name}' is invalid: {e}") from e
    if not groups["dit"]:
        raise ValueError(f"'{p.name}' holds no transformer tensors (dit.*).")
    return config, groups, meta


def load_transformer(config: LetsTalkConfig, state: dict[str, torch.Tensor], *, device="cpu", dtype=torch.float32):
    """Build the transformer for ``config`` and load ``state`` after checking every tensor."""
    from .transformer import LetsTalkTransformer

    with torch.device("meta"):
        model = LetsTalkTransformer(config)
    check_module_state(model, state, "the transformer in this checkpoint")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()
