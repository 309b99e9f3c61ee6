"""The discrete Gaussian diffusion process (DDPM) as pure functions.

A port of the parts of ADM / DiT / Latte ``diffusion/gaussian_diffusion.py`` (openai/guided-diffusion,
facebookresearch/DiT, Vchitect/Latte; LetsTalk ships the same file) that LetsTalk uses: epsilon
prediction, the learned-range variance (``LEARNED_RANGE``) and the hybrid ``MSE + VLB`` loss.
Equation numbers refer to Ho et al. 2020 ("Denoising Diffusion Probabilistic Models") and
Nichol & Dhariwal 2021 ("Improved Denoising Diffusion Probabilistic Models").

Timesteps ``t`` are int64 tensors of shape ``[B]`` indexing the schedule's tables (respaced indices for
a respaced schedule); the model is given :func:`timestep_to_model_input` of them, i.e. the training
timestep each index stands for. Schedule tables are float64 and are cast to the sample's dtype and
device when used.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .schedule import Schedule

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _require_ddpm(schedule: Schedule, fn: str) -> None:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{fn} expects a Schedule from make_schedule, got {type(schedule).__name__}.")
    if schedule.kind != "ddpm":
        raise ValueError(f"{fn} needs a DDPM schedule; this schedule is {schedule.kind!r}.")


def _check_t(schedule: Schedule, t: torch.Tensor, x: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
        raise TypeError("t must be an integer tensor of schedule indices with shape [B].")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape [B] = [{x.shape[0]}]; got {tuple(t.shape)}.")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= schedule.num_timesteps):
        raise ValueError(
            f"t must lie in [0, {schedule.num_timesteps - 1}]; got {int(t.min())}..{int(t.max())}."
        )


def extract(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[t]`` cast to ``like``'s dtype/device and shaped ``[B, 1, ..., 1]`` (ADM ``_extract_into_tensor``)."""
    vals = table[t.to("cpu", torch.long)]
    return vals.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def timestep_to_model_input(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """The timestep the model sees: the training index ``timestep_map[t]`` as float32 on ``t``'s device
    (ADM ``_WrappedModel`` with ``rescale_timesteps=False``, as DiT/Latte/LetsTalk)."""
    _require_ddpm(schedule, "timestep_to_model_input")
    return schedule.timestep_map[t.to("cpu", torch.long)].to(device=t.device, dtype=torch.float32)


def sample_timesteps(batch: int, schedule: Schedule, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform training timesteps ``t ~ U{0, …, T−1}`` (Ho et al. 2020 Algorithm 1)."""
    _require_ddpm(schedule, "sample_timesteps")
    gdev = generator.device if generator is not None else torch.device(device)
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=gdev)
    return t.to(device)


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε`` (Ho et al. 2020 eq. 4)."""
    _require_ddpm(schedule, "q_sample")
    _check_t(schedule, t, x0)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}.")
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * x0 + extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def predict_x0_from_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``x0 = sqrt(1/ᾱ_t)·x_t − sqrt(1/ᾱ_t − 1)·ε`` (eq. 4 solved for x0)."""
    return extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def predict_eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``ε = (sqrt(1/ᾱ_t)·x_t − x0) / sqrt(1/ᾱ_t − 1)`` (eq. 4 solved for ε)."""
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t)


def q_posterior_mean_variance(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Posterior ``q(x_{t−1} | x_t, x0)`` (Ho et al. 2020 eqs. 6–7): ``(mean, variance, log_variance_clipped)``."""
    _require_ddpm(schedule, "q_posterior_mean_variance")
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = extract(schedule.posterior_variance, t, x_t)
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, var, log_var


def split_model_output(model_output: torch.Tensor, x_t: torch.Tensor, *, learn_sigma: bool):
    """Split a model output into ``(eps, var_values)``; ``var_values`` is None without ``learn_sigma``."""
    c = x_t.shape[1]
    expected = (x_t.shape[0], 2 * c if learn_sigma else c, *x_t.shape[2:])
    if tuple(model_output.shape) != expected:
        what = "2×C channels (epsilon and variance values, learn_sigma=True)" if learn_sigma else "C channels"
        raise ValueError(
            f"Model output has shape {tuple(model_output.shape)}; expected {expected} ({what}). "
            "Check that the model's learn_sigma matches the diffusion config."
        )
    if learn_sigma:
        eps, v = torch.split(model_output, c, dim=1)
        return eps, v
    return model_output, None


def p_mean_variance(schedule: Schedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
                    learn_sigma: bool, clip_denoised: bool = False) -> dict:
    """Reverse step ``p(x_{t−1} | x_t)`` from a model output (ADM ``p_mean_variance``).

    With ``learn_sigma`` the output is ``[ε, v]`` (``2·C`` channels) and the variance is the learned
    range of Nichol & Dhariwal 2021 eq. 15: ``log Σ = frac·log β_t + (1−frac)·log β̃_t`` with
    ``frac = (v+1)/2`` and ``β̃_t`` the clipped posterior variance. Without it, the fixed "large"
    variance ``β_t`` (with ``β̃_1`` at t=0) of DiT's default is used. The mean is the posterior mean
    (eq. 7) at ``x̂0 = predict_x0_from_eps`` (optionally clamped to [−1, 1] with ``clip_denoised``).
    Returns ``{"mean", "variance", "log_variance", "pred_x0", "eps"}``.
    """
    _require_ddpm(schedule, "p_mean_variance")
    _check_t(schedule, t, x_t)
    eps, v = split_model_output(model_output, x_t, learn_sigma=learn_sigma)
    if learn_sigma:
        min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
        max_log = extract(torch.log(schedule.betas), t, x_t)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        var = torch.exp(log_var)
    else:
        large = torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]]) \
            if schedule.num_timesteps > 1 else schedule.betas
        var = extract(large, t, x_t)
        log_var = extract(torch.log(large), t, x_t)
    pred_x0 = predict_x0_from_eps(schedule, x_t, t, eps)
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1, 1)
    mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
    return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": pred_x0, "eps": eps}


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats, elementwise (ADM ``losses.normal_kl``)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Tanh approximation of the standard normal CDF (ADM ``losses``)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of ``x`` under a Gaussian discretised into 256 bins on [−1, 1] (Ho et al. 2020
    §3.3, ADM ``losses.discretized_gaussian_log_likelihood``), in nats, elementwise. DiT and Latte apply
    it unchanged to latents at t = 0; so does this port."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(schedule: Schedule, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor, *, learn_sigma: bool = True) -> torch.Tensor:
    """Variational bound term ``L_{t}`` per sample in bits/dim (ADM ``_vb_terms_bpd``): the KL between
    the true posterior and ``p(x_{t−1}|x_t)`` for t > 0, the discretised decoder NLL for t = 0."""
    true_mean, _, true_log_var = q_posterior_mean_variance(schedule, x0, x_t, t)
    out = p_mean_variance(schedule, model_output, x_t, t, learn_sigma=learn_sigma)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
    nll = mean_flat(nll) / math.log(2.0)
    return torch.where(t.to(x0.device) == 0, nll, kl)


def training_losses(schedule: Schedule, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor | None = None) -> dict:
    """Per-sample training losses (ADM ``training_losses`` with ``LossType.MSE``, as DiT/Latte/LetsTalk).

    ``x_t = q_sample(x0, t, noise)``; the model is called as ``model_fn(x_t, timestep_to_model_input(t))``.
    Returns ``{"mse", "loss"}`` and, with ``learn_sigma``, ``"vb"``; each has shape ``[B]``:

    * ``mse`` — ``mean_flat((ε − ε̂)²)`` (Ho et al. 2020 eq. 14, L_simple);
    * ``vb`` — the VLB term in bits/dim with the predicted mean detached, so it only trains the
      variance (Nichol & Dhariwal 2021 §3.1, L_hybrid; their λ = 0.001 is not applied, as in ADM's
      ``LossType.MSE`` path that DiT uses);
    * ``loss`` — ``mse + vb`` (or ``mse``).
    """
    _require_ddpm(schedule, "training_losses")
    if schedule.is_respaced:
        raise ValueError("training_losses needs the full schedule, not a respaced one.")
    _check_t(schedule, t, x0)
    if noise is None:
        noise = torch.randn_like(x0)
    learn_sigma = schedule.config.learn_sigma
    x_t = q_sample(schedule, x0, t, noise)
    out = model_fn(x_t, timestep_to_model_input(schedule, t))
    eps, v = split_model_output(out, x_t, learn_sigma=learn_sigma)
    terms = {}
    if learn_sigma:
        frozen = torch.cat([eps.detach(), v], dim=1)
        terms["vb"] = vb_terms_bpd(schedule, frozen, x0, x_t, t, learn_sigma=True)
    terms["mse"] = mean_flat((noise - eps) ** 2)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms
