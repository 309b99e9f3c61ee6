"""Input checks shared by the core. Every public function validates its inputs and raises
``ValueError``/``TypeError`` with a message a ComfyUI user can act on: what was given, what is
expected, what to do. Nothing is silently clamped."""
from __future__ import annotations

from pathlib import Path

import torch


def require_tensor(x, name: str, *, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor (with ``ndim`` dimensions, if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(x.shape)}."
            )
    return x


def require_finite(x: torch.Tensor, name: str, hint: str = "") -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values.

    NaN and ±inf propagate into a sum, so a finite sum proves the tensor finite without allocating a
    tensor-sized mask (which matters for minutes of audio); only a non-finite sum (or an overflow)
    takes the exact, element-wise check."""
    if x.numel() == 0 or not x.is_floating_point() or torch.isfinite(x.sum()):
        return x
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or infinite values. {hint}".strip())
    return x


def require_file(path, what: str) -> Path:
    """Return ``path`` as a Path, raising ``FileNotFoundError`` with a clear message if it is missing."""
    if path is None or str(path) == "":
        raise ValueError(f"No {what} path was given.")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: '{p}'. Check the path (it is resolved from '{Path.cwd()}').")
    if p.is_dir():
        raise IsADirectoryError(f"{what} path '{p}' is a folder; give the file itself.")
    return p


def require_positive(value, name: str, *, integer: bool = False):
    """Raise ``ValueError`` unless ``value`` is a positive number (an int if ``integer``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}.")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return value
