"""Per-frame audio windows: frame ``i`` sees features ``i - margin .. i + margin``.

Hallo ``scripts/inference.py`` / LetsTalk sampling: ``center_indices = arange(clip) + (arange(2m+1) - m)``
clamped to ``[0, len(audio_emb) - 1]`` of the *whole track*, then ``audio_emb[center_indices]``
(``reference/letstalk_memo.md`` §1.3 step 5, ``audio_margin = 2``).
"""
from __future__ import annotations

import torch

from ..validation import require_tensor

__all__ = ["frame_windows", "frame_windows_range"]


def _check_margin(margin) -> int:
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be an integer >= 0 (frames on each side), got {margin!r}.")
    return margin


def frame_windows_range(features: torch.Tensor, start: int, stop: int, margin: int = 2, *,
                        pad_end: bool = False) -> torch.Tensor:
    """Windows for frames ``start .. stop-1`` of a whole track ``features [n, L, C]`` -> ``[stop-start, 2m+1, L, C]``.

    Indices are clamped at the ends of the *track* (not of the clip), so a clip cut from a long
    track sees its real neighbours; only the requested rows are gathered. ``stop`` may exceed
    ``n`` only with ``pad_end=True`` (the last clip of a track padded to the clip length): those
    frames repeat the track's last feature.
    """
    require_tensor(features, "features", ndim=(3,))
    margin = _check_margin(margin)
    n = features.shape[0]
    if n == 0:
        raise ValueError("features hold 0 frames; encode some audio first.")
    for value, name in ((start, "start"), (stop, "stop")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer frame index, got {value!r}.")
    if not 0 <= start < stop:
        raise ValueError(f"Need 0 <= start < stop, got start={start}, stop={stop}.")
    if stop > n and not pad_end:
        raise ValueError(
            f"stop={stop} is past the track's {n} audio frames; pass pad_end=True to repeat the last frame."
        )
    centers = torch.arange(start, stop, device=features.device)
    offsets = torch.arange(-margin, margin + 1, device=features.device)
    idx = (centers[:, None] + offsets[None, :]).clamp_(0, n - 1)
    return features[idx]


def frame_windows(features: torch.Tensor, margin: int = 2) -> torch.Tensor:
    """Windows for every frame: ``[n, L, C] -> [n, 2*margin+1, L, C]``, clamped at the track ends."""
    require_tensor(features, "features", ndim=(3,))
    return frame_windows_range(features, 0, features.shape[0], margin)
