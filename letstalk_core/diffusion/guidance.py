"""Multimodal classifier-free guidance with separate portrait and audio scales (letstalk_memo.md §1.8
fix list: "add audio/portrait dropout and a working CFG forward").

The guided prediction is nested, portrait first (as in Hallo/InstructPix2Pix-style two-condition CFG):

    ε̂ = ε(∅, ∅) + s_p·(ε(p, ∅) − ε(∅, ∅)) + s_a·(ε(p, a) − ε(p, ∅))

All branches run in ONE batched forward pass. Branches whose weight is zero are not evaluated:
s_p = s_a = 1 needs only ε(p, a); s_p = 1 needs ε(p, ∅) and ε(p, a). With learned variance only the ε
channels are guided; the variance values come from the fully conditioned branch (as DiT's
``forward_with_cfg``). Training drops conditions with :func:`condition_dropout`, so both the dropped
portrait (null token) and the dropped audio (zero tokens after the projector) are learned — the same
definitions are used at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidanceScales:
    """``portrait`` = s_p and ``audio`` = s_a; 1.0 turns that guidance off (plain conditional).
    ``memory`` = s_m guides toward the memory bank: training replaces the memory with the portrait
    for a fraction of samples (``p_memory_from_portrait``), so ε(·, m = portrait) is a learned
    "no history" branch, and ε̂ += (s_m − 1)·(ε(p, a, m) − ε(p, a, m = portrait)) extrapolates toward
    continuing the frames before it; 1.0 = off. Experimental: on the demo model s_m = 2 diverged
    (README, ablation), so nothing uses it by default."""

    portrait: float = 1.0
    audio: float = 1.0
    memory: float = 1.0

    def __post_init__(self) -> None:
        for name in ("portrait", "audio", "memory"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 30.0:
                raise ValueError(f"{name} guidance scale must be a number in [0, 30]; got {v!r}. Use 1.0 for no guidance.")


def guidance_branches(scales: GuidanceScales) -> list[tuple[bool, bool]]:
    """The (portrait_keep, audio_keep) branches needed for ``scales``, the fully conditioned one last."""
    if scales.portrait == 1.0 and scales.audio == 1.0:
        return [(True, True)]
    if scales.portrait == 1.0:
        return [(True, False), (True, True)]
    return [(False, False), (True, False), (True, True)]


def combine_guidance(eps: list[torch.Tensor], scales: GuidanceScales) -> torch.Tensor:
    """Combine the branch predictions of :func:`guidance_branches` (same order) into ε̂."""
    if len(eps) == 1:
        return eps[0]
    if len(eps) == 2:
        e_p, e_pa = eps
        return e_p + scales.audio * (e_pa - e_p)
    e_0, e_p, e_pa = eps
    return e_0 + scales.portrait * (e_p - e_0) + scales.audio * (e_pa - e_p)


def condition_dropout(batch: int, *, p_portrait: float, p_audio: float, p_both: float,
                      generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training hook: per-sample keep masks ``(portrait_keep, audio_keep)``. With probability ``p_both``
    both conditions are dropped, else each independently with its own probability, so every guidance
    branch is trained."""
    for name, p in (("p_portrait", p_portrait), ("p_audio", p_audio), ("p_both", p_both)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1]; got {p}.")
    gdev = generator.device if generator is not None else "cpu"
    u = torch.rand((3, batch), generator=generator, device=gdev)
    both = u[0] < p_both
    portrait_keep = ~(both | (u[1] < p_portrait))
    audio_keep = ~(both | (u[2] < p_audio))
    return portrait_keep.to(device), audio_keep.to(device)
