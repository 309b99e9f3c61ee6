"""Diffusion processes and samplers.

``schedule`` (config, DDPM tables, ADM respacing), ``gaussian`` (the DDPM process and its hybrid loss,
a port of ADM/DiT/Latte ``gaussian_diffusion.py``), ``flow`` (rectified flow as in SD3/MEMO) and
``samplers`` (DDPM, DDIM, flow Euler as pure functions with one signature).
"""
from .flow import flow_training_loss, sample_sigmas, shift_sigmas
from .gaussian import (
    p_mean_variance,
    predict_x0_from_eps,
    q_posterior_mean_variance,
    q_sample,
    sample_timesteps,
    timestep_to_model_input,
    training_losses,
)
from .samplers import SAMPLERS, get_sampler, sample_ddim, sample_ddpm, sample_euler, valid_samplers
from .schedule import DiffusionConfig, Schedule, make_schedule, respace, space_timesteps

__all__ = [
    "DiffusionConfig", "Schedule", "make_schedule", "respace", "space_timesteps",
    "q_sample", "predict_x0_from_eps", "q_posterior_mean_variance", "p_mean_variance",
    "training_losses", "timestep_to_model_input", "sample_timesteps",
    "flow_training_loss", "sample_sigmas", "shift_sigmas",
    "SAMPLERS", "get_sampler", "valid_samplers", "sample_ddpm", "sample_ddim", "sample_euler",
]
