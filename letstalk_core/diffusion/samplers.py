"""Samplers as pure functions sharing one signature (k-diffusion style)::

    sample_x(model_fn, x, schedule, *, steps, generator=None, callback=None, **options) -> x0

* ``x`` — the initial noise, pure ``N(0, I)`` (not scaled by any sigma: at the first DDPM step
  ``ᾱ ≈ 0`` and at the first flow step ``σ = 1``, so unit noise is the prior for both objectives).
* ``model_fn(x_t, t_model)`` — ``t_model`` is a float32 tensor ``[B]`` on ``x``'s device in the
  *training* timestep scale: the original (un-respaced) index for DDPM, ``σ·num_train_timesteps`` for
  flow. A DDPM model with ``learn_sigma`` returns ``2·C`` channels (ε, variance values); DDIM uses ε only.
* ``schedule`` — the full schedule of :func:`make_schedule`; ``steps`` (1 … num_train_timesteps) are
  chosen by ADM respacing for DDPM/DDIM, by ``linspace(1, 0, steps+1)`` (shifted) for Euler.
* ``generator`` — the ``torch.Generator`` for every stochastic draw (DDPM posterior noise, DDIM
  ``eta > 0``); noise is drawn on the generator's device in ``x``'s dtype, then moved to ``x``'s device.
* ``callback`` — called after every step with ``{"step": i, "total": steps, "x": x, "denoised": x̂0}``
  (``i`` 0-based). An exception raised by the callback propagates and stops sampling (cancellation).

Schedule coefficients are float64 and are cast to ``x``'s dtype per step; ``x`` stays in its dtype.
``x̂0`` is never clamped unless ``clip_denoised=True`` is passed (DDPM/DDIM).
"""
from __future__ import annotations

from typing import Callable

import torch

from .flow import sampling_sigmas
from .gaussian import p_mean_variance, predict_eps_from_x0
from .schedule import Schedule, _check_steps, respace, space_timesteps

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]
SPACINGS = ("even", "ddim")


def _validate(model_fn, x, schedule, steps, kind: str, sampler: str) -> None:
    if not callable(model_fn):
        raise TypeError(f"{sampler}: model_fn must be callable, got {type(model_fn).__name__}.")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise TypeError(f"{sampler}: x must be a floating-point tensor [B, C, ...] of initial noise.")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{sampler}: schedule must come from make_schedule, got {type(schedule).__name__}.")
    if schedule.kind != kind:
        raise ValueError(
            f"{sampler} needs a {kind!r} schedule but the schedule's objective is {schedule.kind!r}; "
            f"valid samplers for it: {', '.join(valid_samplers(schedule))}."
        )
    if schedule.is_respaced:
        raise ValueError(f"{sampler}: pass the full schedule; samplers respace it themselves from `steps`.")
    _check_steps(steps, schedule.config.num_train_timesteps)


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise like ``x``, drawn on the generator's device then moved to ``x``'s."""
    if generator is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def sampling_timesteps(schedule: Schedule, steps: int, spacing: str = "even") -> list[int]:
    """Training timesteps a DDPM/DDIM run of ``steps`` visits (ascending).

    ``spacing="even"``: ADM ``space_timesteps(T, str(steps))`` (DiT/Latte/LetsTalk sampling), except
    that ``steps == 1`` takes ``T−1`` (ADM would take t=0, which cannot denoise pure noise).
    ``spacing="ddim"``: ADM ``"ddimN"`` integer stride from 0 (= diffusers ``"leading"``).
    """
    n = schedule.config.num_train_timesteps
    _check_steps(steps, n)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, SPACINGS))}; got {spacing!r}.")
    if spacing == "ddim":
        return space_timesteps(n, f"ddim{steps}")
    if steps == 1:
        return [n - 1]
    return space_timesteps(n, steps)


def _spaced(schedule: Schedule, steps: int, spacing: str) -> Schedule:
    ts = sampling_timesteps(schedule, steps, spacing)
    return schedule if len(ts) == schedule.num_timesteps else respace(schedule, ts)


def _ddpm_call(model_fn, x, sched: Schedule, idx: int):
    t = torch.full((x.shape[0],), idx, dtype=torch.long, device=x.device)
    t_model = torch.full((x.shape[0],), float(sched.timestep_map[idx]), dtype=torch.float32, device=x.device)
    return t, model_fn(x, t_model)


def sample_ddpm(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, *, steps: int,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                clip_denoised: bool = False, spacing: str = "even") -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020 Algorithm 2) on the respaced chain (ADM ``p_sample_loop``).

    ``x_{t−1} = μ_θ(x_t, t) + exp(½·log Σ_θ)·z`` with the learned-range (or fixed large) variance of
    :func:`p_mean_variance`; the last step returns the mean without noise (and draws none).
    """
    _validate(model_fn, x, schedule, steps, "ddpm", "sample_ddpm")
    sched = _spaced(schedule, steps, spacing)
    learn_sigma = schedule.config.learn_sigma
    total = sched.num_timesteps
    for i, idx in enumerate(reversed(range(total))):
        t, out = _ddpm_call(model_fn, x, sched, idx)
        p = p_mean_variance(sched, out, x, t, learn_sigma=learn_sigma, clip_denoised=clip_denoised)
        if idx > 0:
            x = p["mean"] + torch.exp(0.5 * p["log_variance"]) * _randn(x, generator)
        else:
            x = p["mean"]
        if callback is not None:
            callback({"step": i, "total": total, "x": x, "denoised": p["pred_x0"]})
    return x


def sample_ddim(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, *, steps: int,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                eta: float = 0.0, clip_denoised: bool = False, spacing: str = "even") -> torch.Tensor:
    """DDIM sampling (Song et al. 2021 eq. 12; ADM ``ddim_sample``).

    ``x_{t−1} = sqrt(ᾱ_{t−1})·x̂0 + sqrt(1 − ᾱ_{t−1} − σ_t²)·ε̂ + σ_t·z`` with
    ``σ_t = eta·sqrt((1−ᾱ_{t−1})/(1−ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_{t−1})`` (eq. 16); ``eta=0`` is deterministic.
    With ``eta > 0`` noise is drawn at every step (σ is 0 at the last one), as ADM and diffusers do.
    """
    _validate(model_fn, x, schedule, steps, "ddpm", "sample_ddim")
    if not (isinstance(eta, (int, float)) and 0.0 <= eta):
        raise ValueError(f"sample_ddim: eta must be a number >= 0; got {eta!r}.")
    sched = _spaced(schedule, steps, spacing)
    learn_sigma = schedule.config.learn_sigma
    total = sched.num_timesteps
    for i, idx in enumerate(reversed(range(total))):
        t, out = _ddpm_call(model_fn, x, sched, idx)
        p = p_mean_variance(sched, out, x, t, learn_sigma=learn_sigma, clip_denoised=clip_denoised)
        pred_x0 = p["pred_x0"]
        eps = predict_eps_from_x0(sched, x, t, pred_x0)
        ab = float(sched.alphas_cumprod[idx])
        ab_prev = float(sched.alphas_cumprod_prev[idx])
        sigma = eta * ((1 - ab_prev) / (1 - ab)) ** 0.5 * (1 - ab / ab_prev) ** 0.5
        x = pred_x0 * ab_prev ** 0.5 + max(1 - ab_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if eta > 0:
            x = x + sigma * _randn(x, generator)
        if callback is not None:
            callback({"step": i, "total": total, "x": x, "denoised": pred_x0})
    return x


def sample_euler(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, *, steps: int,
                 generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler integration of the rectified-flow ODE ``dx/dσ = v`` (Liu et al. 2022; SD3; MEMO uses 20 steps).

    ``σ_i`` from :func:`~letstalk_core.diffusion.flow.sampling_sigmas` with the config's ``flow_shift``
    and ``flow_grid`` (``"diffusers"`` reproduces MEMO's ``FlowMatchEulerDiscreteScheduler``);
    ``x ← x + (σ_{i+1} − σ_i)·v̂(x, σ_i·T)``; ``x̂0 = x − σ_i·v̂``. Deterministic; ``generator`` is unused
    and accepted for the common signature.
    """
    _validate(model_fn, x, schedule, steps, "flow", "sample_euler")
    n = schedule.config.num_train_timesteps
    sigmas = sampling_sigmas(steps, schedule.config.flow_shift, grid=schedule.config.flow_grid,
                             num_train_timesteps=n)
    b = x.shape[0]
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, torch.full((b,), s * n, dtype=torch.float32, device=x.device))
        if v.shape != x.shape:
            raise ValueError(
                f"sample_euler: model output has shape {tuple(v.shape)}; expected {tuple(x.shape)} (a velocity)."
            )
        denoised = x - s * v
        x = x + (s_next - s) * v
        if callback is not None:
            callback({"step": i, "total": steps, "x": x, "denoised": denoised})
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
}
_OBJECTIVE_OF = {"ddpm": "ddpm", "ddim": "ddpm", "euler": "flow"}


def valid_samplers(schedule: Schedule) -> list[str]:
    """Sampler names that work with ``schedule``'s objective."""
    return [name for name, obj in _OBJECTIVE_OF.items() if obj == schedule.kind]


AUTO_SAMPLER = {"ddpm": "ddim", "flow": "euler"}


def get_sampler(name: str, schedule: Schedule) -> Callable[..., torch.Tensor]:
    """The sampler called ``name``, checked against ``schedule``'s objective. ``"auto"`` picks the
    objective's usual one: DDIM for DDPM models, Euler for flow models."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"get_sampler: schedule must come from make_schedule, got {type(schedule).__name__}.")
    if name == "auto":
        name = AUTO_SAMPLER[schedule.kind]
    valid = valid_samplers(schedule)
    if name not in SAMPLERS:
        raise ValueError(
            f"Unknown sampler {name!r}; valid choices for the {schedule.kind!r} objective: {', '.join(valid)}."
        )
    if name not in valid:
        raise ValueError(
            f"Sampler {name!r} does not work with the {schedule.kind!r} objective; "
            f"valid choices: {', '.join(valid)}."
        )
    return SAMPLERS[name]
