"""Rectified flow (Liu et al. 2022, "Flow Straight and Fast"; Esser et al. 2024, SD3 §2–3), as MEMO uses it.

Interpolation ``x_σ = σ·ε + (1−σ)·x0`` for ``σ ∈ [0, 1]`` (σ = 1 is pure noise); the model predicts the
velocity ``v = dx_σ/dσ = ε − x0``. The model's time input is ``σ·num_train_timesteps`` so the same
sinusoidal timestep embedder serves DDPM and flow models (diffusers ``FlowMatchEulerDiscreteScheduler``
convention). Training σ are logit-normal (SD3 eq. 19) and optionally shifted as SD3 eq. 23:
``σ' = shift·σ / (1 + (shift−1)·σ)``.
"""
from __future__ import annotations

from typing import Callable

import torch

from .gaussian import mean_flat

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 timestep shift ``σ' = shift·σ / (1 + (shift−1)·σ)`` (identity for ``shift == 1``)."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0; got {shift!r}.")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def flow_interpolate(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x_σ = σ·ε + (1−σ)·x0`` with ``sigma`` of shape ``[B]``."""
    s = _bcast(sigma, x0)
    return s * noise + (1 - s) * x0


def sigma_to_model_input(sigma: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The model's time input ``σ·num_train_timesteps`` as float32."""
    return sigma.to(torch.float32) * num_train_timesteps


def sample_sigmas(batch: int, generator: torch.Generator | None = None, *, shift: float = 1.0,
                  logit_mean: float = 0.0, logit_std: float = 1.0, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Training noise levels ``σ = shift(sigmoid(u))``, ``u ~ N(logit_mean, logit_std²)`` (SD3 logit-normal).

    σ is continuous here; diffusers' SD3 training script snaps it to the 1000-step grid, which changes
    nothing in expectation. Noise is drawn on the generator's device and moved to ``device``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer; got {batch!r}.")
    if not logit_std > 0:
        raise ValueError(f"logit_std must be > 0; got {logit_std!r}.")
    gdev = generator.device if generator is not None else torch.device(device)
    u = torch.randn((batch,), generator=generator, device=gdev, dtype=torch.float32) * logit_std + logit_mean
    return shift_sigmas(torch.sigmoid(u), shift).to(device=device, dtype=dtype)


def flow_training_loss(model_fn: ModelFn, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor | None = None,
                       *, num_train_timesteps: int = 1000, target: str = "velocity") -> dict:
    """Per-sample rectified-flow loss; returns ``{"mse", "loss"}`` of shape ``[B]``.

    ``target="velocity"`` (SD3, default): ``mean_flat((v̂ − (ε − x0))²)``. ``target="x0"`` (MEMO's
    released trainer): ``mean_flat((x_σ − σ·v̂ − x0)²)``, i.e. the velocity loss weighted by σ².
    """
    if sigma.ndim != 1 or sigma.shape[0] != x0.shape[0]:
        raise ValueError(f"sigma must have shape [B] = [{x0.shape[0]}]; got {tuple(sigma.shape)}.")
    if target not in ("velocity", "x0"):
        raise ValueError(f"target must be 'velocity' or 'x0'; got {target!r}.")
    if noise is None:
        noise = torch.randn_like(x0)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}.")
    x_s = flow_interpolate(x0, sigma, noise)
    v_hat = model_fn(x_s, sigma_to_model_input(sigma, num_train_timesteps).to(x0.device))
    if v_hat.shape != x0.shape:
        raise ValueError(
            f"Flow model output has shape {tuple(v_hat.shape)}; expected {tuple(x0.shape)} (one velocity per "
            "latent channel; a flow model must not predict a variance)."
        )
    if target == "velocity":
        mse = mean_flat((v_hat - (noise - x0)) ** 2)
    else:
        mse = mean_flat((x_s - _bcast(sigma, x0) * v_hat - x0) ** 2)
    return {"mse": mse, "loss": mse}


def sampling_sigmas(steps: int, shift: float = 1.0, *, grid: str = "uniform",
                    num_train_timesteps: int = 1000) -> torch.Tensor:
    """Float64 ``steps+1`` noise levels for Euler sampling, ending at 0.

    ``grid="uniform"``: ``shift(linspace(1, 0, steps+1))``. ``grid="diffusers"``: diffusers
    ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (MEMO's sampler): ``shift(linspace(1, 1/T, steps))``
    followed by 0, ``T = num_train_timesteps`` (its training σ run from 1/T to 1).
    """
    if grid == "uniform":
        return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    if grid == "diffusers":
        n = num_train_timesteps
        s = shift_sigmas(torch.linspace(float(n), 1.0, steps, dtype=torch.float64) / n, shift)
        # diffusers keeps σ in float32; rounding here gives the same σ and the same model time σ·T
        return torch.cat([s.to(torch.float32).to(torch.float64), torch.zeros(1, dtype=torch.float64)])
    raise ValueError(f"grid must be 'uniform' or 'diffusers'; got {grid!r}.")
