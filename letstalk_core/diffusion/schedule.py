"""Diffusion process configuration, noise schedules and timestep respacing.

Two objectives are supported:

* ``"ddpm"`` — the discrete Gaussian process of Ho et al. 2020 ("Denoising Diffusion Probabilistic
  Models"), as implemented in ADM / DiT / Latte ``gaussian_diffusion.py`` and used by LetsTalk:
  1000 steps, linear betas 1e-4 → 0.02, epsilon prediction with the learned-range variance of
  Nichol & Dhariwal 2021 ("Improved DDPM").
* ``"flow"`` — rectified flow (Liu et al. 2022; Esser et al. 2024, SD3) as used by MEMO:
  ``x_σ = σ·ε + (1−σ)·x0`` with a velocity-predicting model and the SD3 timestep shift.

All schedule tables are float64 (as ADM keeps them in numpy float64); samplers cast them to the
sample's dtype and device per step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

OBJECTIVES = ("ddpm", "flow")
BETA_SCHEDULES = ("linear", "cosine")
FLOW_GRIDS = ("uniform", "diffusers")


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of the diffusion process; validated on construction.

    ``learn_sigma`` only matters for ``objective="ddpm"``: the model then outputs ``2·C`` channels
    (epsilon and the learned-range variance interpolation value). A flow model always predicts ``C``
    channels (the velocity); see :attr:`predicts_variance`. ``flow_shift`` only matters for ``"flow"``.
    """

    objective: str = "ddpm"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    learn_sigma: bool = True
    flow_shift: float = 1.0
    # Euler grid of a flow model: "uniform" σ = linspace(1, 0, steps+1) (our LetsTalk models), or
    # "diffusers", FlowMatchEulerDiscreteScheduler's σ = linspace(1, 1/T, steps) then 0 (MEMO).
    flow_grid: str = "uniform"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"DiffusionConfig.objective must be one of {', '.join(map(repr, OBJECTIVES))}; "
                f"got {self.objective!r}."
            )
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"DiffusionConfig.num_train_timesteps must be an integer >= 2; got {n!r}.")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"DiffusionConfig.beta_schedule must be one of {', '.join(map(repr, BETA_SCHEDULES))}; "
                f"got {self.beta_schedule!r}."
            )
        for name in ("beta_start", "beta_end", "flow_shift"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"DiffusionConfig.{name} must be a finite number; got {v!r}.")
        if not (0.0 < self.beta_start <= self.beta_end < 1.0):
            raise ValueError(
                "DiffusionConfig needs 0 < beta_start <= beta_end < 1; "
                f"got beta_start={self.beta_start!r}, beta_end={self.beta_end!r}."
            )
        if self.flow_shift <= 0:
            raise ValueError(f"DiffusionConfig.flow_shift must be > 0; got {self.flow_shift!r}.")
        if self.flow_grid not in FLOW_GRIDS:
            raise ValueError(
                f"DiffusionConfig.flow_grid must be one of {', '.join(map(repr, FLOW_GRIDS))}; got {self.flow_grid!r}."
            )
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"DiffusionConfig.learn_sigma must be True or False; got {self.learn_sigma!r}.")

    @property
    def predicts_variance(self) -> bool:
        """True when the model outputs ``2·C`` channels (DDPM with learned-range variance)."""
        return self.objective == "ddpm" and self.learn_sigma

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        if not isinstance(d, dict):
            raise TypeError(f"DiffusionConfig.from_dict expects a dict, got {type(d).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown DiffusionConfig keys {unknown}; valid keys are {sorted(known)}."
            )
        return cls(**d)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A diffusion schedule: the config plus, for DDPM, the float64 tables of ADM.

    ``timestep_map[i]`` is the training timestep index that (respaced) step ``i`` stands for; it is the
    identity for a full schedule (ADM ``SpacedDiffusion.timestep_map``). For ``kind == "flow"`` all
    tables are ``None`` and the process is described by ``config.flow_shift`` and
    ``config.num_train_timesteps`` alone.
    """

    kind: str
    config: DiffusionConfig
    num_timesteps: int
    timestep_map: torch.Tensor | None = None
    betas: torch.Tensor | None = None
    alphas_cumprod: torch.Tensor | None = None
    alphas_cumprod_prev: torch.Tensor | None = None
    sqrt_alphas_cumprod: torch.Tensor | None = None
    sqrt_one_minus_alphas_cumprod: torch.Tensor | None = None
    sqrt_recip_alphas_cumprod: torch.Tensor | None = None
    sqrt_recipm1_alphas_cumprod: torch.Tensor | None = None
    posterior_variance: torch.Tensor | None = None
    posterior_log_variance_clipped: torch.Tensor | None = None
    posterior_mean_coef1: torch.Tensor | None = None
    posterior_mean_coef2: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"Schedule(kind={self.kind!r}, num_timesteps={self.num_timesteps}, config={self.config!r})"

    @property
    def is_respaced(self) -> bool:
        return self.kind == "ddpm" and self.num_timesteps != self.config.num_train_timesteps


def beta_schedule(name: str, num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Float64 betas. ``"linear"``: ``linspace(beta_start, beta_end, T)`` (Ho et al. 2020 §4, ADM
    ``get_beta_schedule``). ``"cosine"``: Nichol & Dhariwal 2021 eq. 17 with ``s=0.008`` and betas
    capped at 0.999 (ADM ``betas_for_alpha_bar``)."""
    if name == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if name == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
            for i in range(num_timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"Unknown beta schedule {name!r}; valid: {', '.join(map(repr, BETA_SCHEDULES))}.")


def _ddpm_schedule(config: DiffusionConfig, betas: torch.Tensor, timestep_map: torch.Tensor) -> Schedule:
    """Build the ADM ``GaussianDiffusion.__init__`` tables from float64 betas."""
    betas = betas.to(torch.float64)
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    # Ho et al. 2020 eq. 7: posterior q(x_{t-1} | x_t, x_0) variance and mean coefficients.
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # log of posterior variance is clipped because it is 0 at t = 0 (ADM).
    if len(post_var) > 1:
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    else:
        post_log_var = torch.log(betas.clone())
    return Schedule(
        kind="ddpm",
        config=config,
        num_timesteps=int(betas.shape[0]),
        timestep_map=timestep_map.to(torch.long),
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=ac.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
        sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
        sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1.0).sqrt(),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    )


def make_schedule(config: DiffusionConfig) -> Schedule:
    """The full (un-respaced) schedule for ``config``."""
    if not isinstance(config, DiffusionConfig):
        raise TypeError(f"make_schedule expects a DiffusionConfig, got {type(config).__name__}.")
    n = config.num_train_timesteps
    if config.objective == "flow":
        return Schedule(kind="flow", config=config, num_timesteps=n)
    betas = beta_schedule(config.beta_schedule, n, config.beta_start, config.beta_end)
    return _ddpm_schedule(config, betas, torch.arange(n))


def space_timesteps(num_train: int, steps) -> list[int]:
    """Training timesteps kept by ADM respacing (``respace.py::space_timesteps``), sorted ascending.

    ``steps`` is an int (one section: ``steps`` indices evenly spaced over ``[0, num_train-1]`` with
    both ends included, ADM's fractional stride and Python ``round``), a string of comma-separated
    section counts (``"10,15,20"``: the range split into equal sections, each spaced like above), or
    ``"ddimN"``: the integer stride ``s`` with ``len(range(0, num_train, s)) == N`` — the DDIM paper's
    spacing, equal to diffusers ``timestep_spacing="leading"`` with ``steps_offset=0`` when ``N``
    divides ``num_train``.
    """
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
        raise ValueError(f"num_train must be a positive integer; got {num_train!r}.")
    if isinstance(steps, str):
        s = steps.strip()
        if s.startswith("ddim"):
            try:
                desired = int(s[len("ddim"):])
            except ValueError:
                raise ValueError(f"Bad respacing {steps!r}: expected 'ddimN' with N an integer.") from None
            _check_steps(desired, num_train)
            for stride in range(1, num_train + 1):
                if len(range(0, num_train, stride)) == desired:
                    return list(range(0, num_train, stride))
            raise ValueError(
                f"Cannot take exactly {desired} of {num_train} timesteps with an integer stride "
                "('ddimN' spacing); pick another step count or use even spacing."
            )
        try:
            counts = [int(c) for c in s.split(",")]
        except ValueError:
            raise ValueError(
                f"Bad respacing {steps!r}: expected an integer, 'N1,N2,...' or 'ddimN'."
            ) from None
    elif isinstance(steps, int) and not isinstance(steps, bool):
        counts = [steps]
    else:
        raise ValueError(f"steps must be an int or a respacing string; got {steps!r}.")
    if sum(counts) < 1 or any(c < 0 for c in counts):
        raise ValueError(f"Respacing section counts must be >= 0 and sum to >= 1; got {counts}.")
    size_per, extra = divmod(num_train, len(counts))
    start, taken = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"Cannot take {count} steps from a section of {size} timesteps (of {num_train}).")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            taken.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(taken))


def _check_steps(steps, num_train: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an integer between 1 and {num_train}; got {steps!r}.")
    if not 1 <= steps <= num_train:
        raise ValueError(
            f"steps must be between 1 and {num_train} (the number of training timesteps); got {steps}."
        )


def respace(schedule: Schedule, timesteps) -> Schedule:
    """ADM ``SpacedDiffusion``: keep only ``timesteps`` (training indices) of a DDPM schedule.

    The new betas are ``1 − ᾱ_{t_k} / ᾱ_{t_{k−1}}`` (with ``ᾱ_{t_{−1}} = 1``) so the kept
    ``alphas_cumprod`` equal the originals; ``timestep_map`` maps each new index to its training index,
    which is what the model must be given.
    """
    if not isinstance(schedule, Schedule) or schedule.kind != "ddpm":
        raise ValueError("respace needs a DDPM schedule (make_schedule of an objective='ddpm' config).")
    if schedule.is_respaced:
        raise ValueError("respace needs the full schedule, not an already respaced one.")
    ts = sorted(set(int(t) for t in timesteps))
    if not ts:
        raise ValueError("respace needs at least one timestep.")
    if ts[0] < 0 or ts[-1] >= schedule.num_timesteps:
        raise ValueError(f"respace timesteps must lie in [0, {schedule.num_timesteps - 1}]; got {ts[0]}..{ts[-1]}.")
    ac = schedule.alphas_cumprod
    idx = torch.tensor(ts, dtype=torch.long)
    kept = ac[idx]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), kept[:-1]])
    new_betas = 1.0 - kept / prev
    return _ddpm_schedule(schedule.config, new_betas, idx)

