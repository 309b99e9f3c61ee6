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
from .guidance import GuidanceScales, combine_guidance, condition_dropout, guidance_branches
from .samplers import SAMPLERS, get_sampler, sample_ddim, sample_ddpm, sample_euler, valid_samplers
from .schedule import DiffusionConfig, Schedule, make_schedule, respace, space_timesteps

__all__ = [
    "combine_guidance",
    "condition_dropout",
    "DiffusionConfig",
    "flow_training_loss",
    "get_sampler",
    "guidance_branches",
    "GuidanceScales",
    "make_schedule",
    "p_mean_variance",
    "predict_x0_from_eps",
    "q_posterior_mean_variance",
    "q_sample",
    "respace",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler",
    "sample_sigmas",
    "sample_timesteps",
    "SAMPLERS",
    "Schedule",
    "shift_sigmas",
    "space_timesteps",
    "timestep_to_model_input",
    "training_losses",
    "valid_samplers",
]
