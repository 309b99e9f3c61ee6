"""The LetsTalk memory bank (letstalk_memo.md §1.7): a FIFO of the last f clean latents.

Clip 0 sees the portrait latent repeated f times; every later clip sees the last f clean latents the
previous clip generated, with no noise added at inference. The memory enters the transformer only in
its temporal attention. The state is a small tensor, so a long run can be saved after any clip and
resumed to an identical result.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _non_negative_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0; got {value!r}.")


@dataclass(frozen=True)
class MemoryConfig:
    """The noise-regularised memory bank (letstalk_memo.md §1.7).

    ``frames`` is f, the number of clean latent frames carried from one clip to the next. The three
    regularisers are applied to the memory in training only: pixel noise σ = exp(N(μ, s²)) before
    encoding, forward diffusion with t ~ U{0, …, ``latent_noise_max_t``}, and a spatial mask zeroing
    ``mask_ratio`` of the positions (one mask per batch, shared over samples, frames and channels).
    """

    frames: int = 2
    pixel_noise: bool = True
    pixel_noise_log_mean: float = -3.0
    pixel_noise_log_std: float = 0.5
    latent_noise: bool = True
    latent_noise_max_t: int = 49
    spatial_mask: bool = True
    mask_ratio: float = 0.25

    def __post_init__(self) -> None:
        _non_negative_int(self.frames, "MemoryConfig.frames")
        _non_negative_int(self.latent_noise_max_t, "MemoryConfig.latent_noise_max_t")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1); got {self.mask_ratio}.")
        if self.pixel_noise_log_std < 0:
            raise ValueError(f"pixel_noise_log_std must be >= 0; got {self.pixel_noise_log_std}.")


def initial_memory(portrait_latent: torch.Tensor, frames: int) -> torch.Tensor:
    """Portrait latent ``[B, C, h, w]`` repeated → ``[B, C, f, h, w]`` (the memory of clip 0)."""
    if portrait_latent.ndim != 4:
        raise ValueError(f"portrait latent must be [B, C, h, w], got shape {tuple(portrait_latent.shape)}.")
    return portrait_latent[:, :, None].repeat(1, 1, frames, 1, 1)


def update_memory(memory: torch.Tensor, clip_latents: torch.Tensor, valid_frames: int | None = None) -> torch.Tensor:
    """FIFO update: the last f clean latents of ``[memory; clip]`` → ``[B, C, f, h, w]``.

    ``valid_frames`` limits the clip to its first frames (a padded last clip); taking from the
    concatenation keeps the memory full even for a clip shorter than f."""
    f = memory.shape[2]
    if f == 0:
        return memory
    clip = clip_latents if valid_frames is None else clip_latents[:, :, :valid_frames]
    return torch.cat([memory, clip], dim=2)[:, :, -f:].contiguous()


def anchor_memory(memory: torch.Tensor, portrait_memory: torch.Tensor, share: float) -> torch.Tensor:
    """The memory a clip is given, pulled toward the portrait: ``(1 - share)·memory + share·portrait``.

    Not in the paper (its memory is used as is). A model's own small errors in the memory are carried
    into the next clip and add up over a long run; mixing in a fixed share of the clean portrait
    latent every clip turns that random walk into a mean-reverting one (an error e becomes
    (1 - share)·e before the next clip adds its own), while most of the motion state survives."""
    if share == 0:
        return memory
    return torch.lerp(memory, portrait_memory.to(memory.dtype), share)
