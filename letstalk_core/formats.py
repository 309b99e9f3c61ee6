"""The model files every loader recognises, so each family can name the other's files in its errors without
importing it (:mod:`letstalk_core.family` says which family a path holds).

* A LetsTalk checkpoint is one ``.safetensors`` file whose metadata carries its config as JSON under
  :data:`LETSTALK_CONFIG_KEY` (DESIGN.md, "Contracts").
* A MEMO model is the folder its authors publish (``reference_net/``, ``diffusion_net/``, ``image_proj/``,
  ``audio_proj/``, ``misc/``), recognised by its two UNets' parts (:func:`looks_like_memo_folder`).
"""
from __future__ import annotations

from pathlib import Path

LETSTALK_CONFIG_KEY = "letstalk_config"


def looks_like_memo_folder(path) -> bool:
    """True for a folder with MEMO's ``diffusion_net/config.json`` and ``reference_net/``."""
    p = Path(path)
    return p.is_dir() and (p / "diffusion_net" / "config.json").is_file() and (p / "reference_net").is_dir()


def safetensors_metadata(path) -> dict[str, str] | None:
    """The metadata of a ``.safetensors`` file (``{}`` when it has none), or None when it cannot be read as one."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # not a safetensors file, unreadable, truncated: the caller says what it expected
        return None


def is_letstalk_checkpoint(path) -> bool:
    """True for a ``.safetensors`` file whose metadata carries a LetsTalk config."""
    p = Path(path)
    if not p.is_file() or p.suffix not in (".safetensors", ".sft"):
        return False
    meta = safetensors_metadata(p)
    return meta is not None and LETSTALK_CONFIG_KEY in meta
