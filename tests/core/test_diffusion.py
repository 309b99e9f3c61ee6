"""Diffusion processes and samplers: equality to diffusers' schedulers / ADM formulas, oracle recovery,
losses, determinism, callbacks and input errors."""
from __future__ import annotations

import math

import pytest
import torch

from letstalk_core.diffusion import (
    DiffusionConfig,
    flow_training_loss,
    get_sampler,
    make_schedule,
    p_mean_variance,
    q_sample,
    respace,
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_sigmas,
    space_timesteps,
    training_losses,
)
from letstalk_core.diffusion.gaussian import timestep_to_model_input, vb_terms_bpd
from letstalk_core.diffusion.samplers import sampling_timesteps

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 2, 4, 4)  # [B, C, T, h, w] video latent


@pytest.fixture(scope="module")
def ddpm():
    return make_schedule(DiffusionConfig())


@pytest.fixture(scope="module")
def ddpm_fixed():
    return make_schedule(DiffusionConfig(learn_sigma=False))


_AC = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


def analytic_eps(x, t_model):
    """A deterministic, nonlinear stand-in eps-model that keeps samples bounded: the eps that makes
    x0_hat = 0.5·tanh(x) + 0.05·sin(t/100) at training timestep t (float64 tables)."""
    t = t_model.double().reshape(-1, *([1] * (x.ndim - 1)))
    a, xd = _AC[t.round().long().cpu()], x.double()  # float64 inside: 1-a is ~1e-4 at t=0
    return ((xd - a.sqrt() * (0.5 * torch.tanh(xd) + 0.05 * torch.sin(t / 100.0))) / (1 - a).sqrt()).to(x.dtype)


def analytic_v(x, t_model):
    """A deterministic stand-in velocity model."""
    t = t_model.reshape(-1, *([1] * (x.ndim - 1)))
    return 0.8 * x - 0.5 * torch.tanh(x) + 0.05 * torch.sin(t / 100.0)


def with_var(eps_fn, v_fn=lambda x: torch.tanh(0.3 * x)):
    return lambda x, t: torch.cat([eps_fn(x, t), v_fn(x)], dim=1)


# ---------------------------------------------------------------- schedule

def test_schedule_matches_diffusers_ddpm(ddpm):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    assert ddpm.betas.dtype == torch.float64
    assert float(((ddpm.betas - ref.betas.double()) / ddpm.betas).abs().max()) < 1.2e-7  # float32 rounding
    assert float(((ddpm.alphas_cumprod - ref.alphas_cumprod.double()).abs() / ddpm.alphas_cumprod).max()) < 2e-5
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(SHAPE, generator=g)
    noise = torch.randn(SHAPE, generator=g)
    t = torch.tensor([3, 917])
    assert float((q_sample(ddpm, x0, t, noise) - ref.add_noise(x0, noise, t)).abs().max()) < 1e-5


def test_space_timesteps_adm_and_respace(ddpm):
    ts = space_timesteps(1000, 250)
    assert len(ts) == 250 and ts[0] == 0 and ts[-1] == 999
    assert set(b - a for a, b in zip(ts, ts[1:])) <= {4, 5}
    assert space_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(1000, "10,5")[:2] == [0, 55] and len(space_timesteps(1000, "10,5")) == 15
    assert space_timesteps(1000, 1000) == list(range(1000))
    sp = respace(ddpm, ts)
    assert sp.num_timesteps == 250 and sp.timestep_map.tolist() == ts
    # SpacedDiffusion: kept alphas_cumprod are the originals, betas are their ratios.
    assert (sp.alphas_cumprod - ddpm.alphas_cumprod[ts]).abs().max() < 1e-12
    assert abs(float(sp.betas[1]) - (1 - float(ddpm.alphas_cumprod[ts[1]] / ddpm.alphas_cumprod[ts[0]]))) < 1e-15
    assert timestep_to_model_input(sp, torch.tensor([0, 249])).tolist() == [0.0, 999.0]


def test_config_round_trip_and_errors():
    cfg = DiffusionConfig(objective="flow", flow_shift=3.0)
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg
    assert not cfg.predicts_variance and DiffusionConfig().predicts_variance
    with pytest.raises(ValueError, match=r"objective must be one of 'ddpm', 'flow'; got 'ddmp'"):
        DiffusionConfig(objective="ddmp")
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="flow_shift must be > 0"):
        DiffusionConfig(flow_shift=0.0)
    with pytest.raises(ValueError, match=r"Unknown DiffusionConfig keys \['shift'\]"):
        DiffusionConfig.from_dict({"shift": 3.0})
    with pytest.raises(ValueError, match="num_train_timesteps"):
        DiffusionConfig(num_train_timesteps=0)


# ---------------------------------------------------------------- DDIM / DDPM vs diffusers

# _FLOAT64_NOTE: diffusers keeps alphas_cumprod in float32; at t=0, 1-ᾱ ≈ 1e-4 then carries ~6e-4
# relative error, which moves the last step by ~3e-5 with its own table. The comparisons hand diffusers
# the float64 table of the same schedule (checked against its own above) so they measure the
# sampler maths, not diffusers' table precision.

def _trajectory(sampler, model_fn, x, schedule, **kw):
    xs = []
    out = sampler(model_fn, x, schedule, callback=lambda d: xs.append(d["x"].clone()), **kw)
    return out, xs


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers_leading(ddpm, eta):
    """ADM "ddimN" spacing == diffusers DDIM timestep_spacing="leading", steps_offset=0, set_alpha_to_one."""
    steps = 10
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours, xs = _trajectory(sample_ddim, with_var(analytic_eps), x, ddpm, steps=steps, eta=eta,
                           spacing="ddim", generator=torch.Generator().manual_seed(7))
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                  clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                  timestep_spacing="leading", prediction_type="epsilon")
    ref.alphas_cumprod = _AC.clone()  # see _FLOAT64_NOTE
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == sampling_timesteps(ddpm, steps, "ddim")[::-1]
    g = torch.Generator().manual_seed(7)
    y = x.clone()
    diffs = []
    for i, t in enumerate(ref.timesteps):
        eps = analytic_eps(y, torch.full((y.shape[0],), float(t)))
        y = ref.step(eps, t, y, eta=eta, generator=g).prev_sample
        diffs.append(float((xs[i] - y).abs().max()))
    assert len(xs) == steps
    assert max(diffs) < 1e-5, diffs
    assert (ours - y).abs().max() < 1e-5


def test_ddim_even_spacing_matches_adm_float64(ddpm):
    """Default ("even", DiT/LetsTalk) spacing with a non-integer stride vs a float64 ADM ddim_sample loop."""
    steps = 7
    ts = space_timesteps(1000, steps)
    ac = _AC
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = sample_ddim(with_var(analytic_eps), x.float(), ddpm, steps=steps)
    y = x.clone()
    for k in reversed(range(steps)):
        a, a_prev = ac[ts[k]], (ac[ts[k - 1]] if k > 0 else torch.tensor(1.0, dtype=torch.float64))
        eps = analytic_eps(y, torch.full((y.shape[0],), float(ts[k]), dtype=torch.float64))
        x0 = (y - (1 - a).sqrt() * eps) / a.sqrt()
        y = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert (ours.double() - y).abs().max() < 1e-5


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_ddpm_matches_diffusers(ddpm, ddpm_fixed, learn_sigma):
    """Respaced ancestral DDPM (ADM even spacing, 10 steps) vs diffusers DDPMScheduler with the same custom
    timesteps and variance_type "learned_range" (learn_sigma) or "fixed_large" (DiT's default without it),
    same generator stream."""
    steps = 10
    sched = ddpm if learn_sigma else ddpm_fixed
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    model = with_var(analytic_eps) if learn_sigma else analytic_eps
    ours, xs = _trajectory(sample_ddpm, model, x, sched, steps=steps, generator=torch.Generator().manual_seed(11))
    ts = sampling_timesteps(ddpm, steps)[::-1]
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                  clip_sample=False, prediction_type="epsilon",
                                  variance_type="learned_range" if learn_sigma else "fixed_large")
    ref.alphas_cumprod = _AC.clone()  # see _FLOAT64_NOTE
    ref.set_timesteps(timesteps=ts)
    g = torch.Generator().manual_seed(11)
    y = x.clone()
    diffs = []
    for i, t in enumerate(ref.timesteps):
        out = model(y, torch.full((y.shape[0],), float(t)))
        y = ref.step(out, t, y, generator=g).prev_sample
        diffs.append(float((xs[i] - y).abs().max()))
    assert max(diffs) < 1e-5, diffs
    assert (ours - y).abs().max() < 1e-5


def test_euler_matches_diffusers_flow_match():
    """Euler on σ = shift(linspace(1, 0, steps+1)) vs diffusers FlowMatchEulerDiscreteScheduler given the same
    sigmas (its default grid ends at σ_min = 1/1000 instead of 0, so the sigmas are passed explicitly)."""
    steps = 6
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    for shift in (1.0, 3.0):
        sched = make_schedule(DiffusionConfig(objective="flow", flow_shift=shift))
        seen_t = []

        def model(x, t):
            seen_t.append(t.clone())
            return analytic_v(x, t)

        ours, xs = _trajectory(sample_euler, model, x, sched, steps=steps)
        ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        ref.set_timesteps(sigmas=torch.linspace(1, 0, steps + 1)[:-1].tolist())
        y = x.clone()
        diffs = []
        for i, t in enumerate(ref.timesteps):
            assert abs(float(seen_t[i][0]) - float(t)) < 1e-3
            y = ref.step(analytic_v(y, torch.full((y.shape[0],), float(t))), t, y).prev_sample
            diffs.append(float((xs[i] - y).abs().max()))
        assert max(diffs) < 1e-5, (shift, diffs)
        assert (ours - y).abs().max() < 1e-5


# ---------------------------------------------------------------- oracle recovery

def _x0():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)).clamp(-2, 2)


def _oracle_eps(x0, ac):
    def fn(x, t_model):
        a = ac[t_model.long()].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return fn


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_oracle_recovers_x0_ddpm_ddim(ddpm, name):
    x0 = _x0()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    model = with_var(_oracle_eps(x0, ddpm.alphas_cumprod), v_fn=torch.zeros_like)
    out = get_sampler(name, ddpm)(model, noise, ddpm, steps=25, generator=torch.Generator().manual_seed(0))
    assert (out - x0).abs().max() < 1e-4


def test_oracle_recovers_x0_euler():
    x0 = _x0()
    sched = make_schedule(DiffusionConfig(objective="flow", flow_shift=2.0))
    oracle_v = lambda x, t: (x - x0) / (t / 1000.0).reshape(-1, 1, 1, 1, 1)  # v = eps - x0
    out = sample_euler(oracle_v, torch.randn(SHAPE), sched, steps=8)
    assert (out - x0).abs().max() < 1e-4


# ---------------------------------------------------------------- learned range, losses

def test_learned_range_extremes(ddpm):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x)
    t = torch.tensor([0, 1, 500])
    tilde = lambda k: float(betas[k] * (1 - ac[k - 1]) / (1 - ac[k]))  # Ho et al. eq. 7
    lo = torch.tensor([math.log(tilde(1)), math.log(tilde(1)), math.log(tilde(500))], dtype=torch.float64)
    hi = betas[t].log()
    for v, want in ((-1.0, lo), (1.0, hi), (0.0, (lo + hi) / 2)):
        out = p_mean_variance(ddpm, torch.cat([eps, torch.full_like(x, v)], 1), x, t, learn_sigma=True)
        assert (out["log_variance"][:, 0, 0, 0] - want).abs().max() < 1e-10
    # mean: posterior mean at x0_hat = (x - sqrt(1-ac) eps) / sqrt(ac)
    k = 500
    x0h = (x[2] - (1 - ac[k]).sqrt() * eps[2]) / ac[k].sqrt()
    mean = betas[k] * ac[k - 1].sqrt() / (1 - ac[k]) * x0h + (1 - ac[k - 1]) * (1 - betas[k]).sqrt() / (1 - ac[k]) * x[2]
    assert (out["mean"][2] - mean).abs().max() < 1e-10
    with pytest.raises(ValueError, match=r"expected \(3, 4, 4, 4\).*learn_sigma"):
        p_mean_variance(ddpm, eps, x, t, learn_sigma=True)


def test_training_losses(ddpm, ddpm_fixed):
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(SHAPE, generator=g).clamp(-1, 1)
    noise = torch.randn(SHAPE, generator=g)
    t = torch.tensor([0, 400])
    raw = torch.randn(SHAPE[0], 2 * SHAPE[1], *SHAPE[2:], generator=g).mul(0.5).requires_grad_(True)
    seen = {}

    def model(x_t, tm):
        seen["x_t"], seen["t"] = x_t, tm
        return raw

    terms = training_losses(ddpm, model, x0, t, noise)
    assert torch.equal(seen["t"], torch.tensor([0.0, 400.0]))
    a = ddpm.alphas_cumprod[t].float().reshape(-1, 1, 1, 1, 1)
    assert (seen["x_t"] - (a.sqrt() * x0 + (1 - a).sqrt() * noise)).abs().max() < 1e-5
    mse = ((noise - raw[:, :3]) ** 2).reshape(2, -1).mean(1)
    assert (terms["mse"] - mse).abs().max() < 1e-6
    assert torch.isfinite(terms["vb"]).all() and (terms["vb"] >= 0).all()
    assert (terms["loss"] - terms["mse"] - terms["vb"]).abs().max() < 1e-6
    # KL term at t=400 by hand (nats -> bits), from q_posterior vs the learned-range p.
    b = ddpm.betas.float()
    k = 400
    acp = ddpm.alphas_cumprod.float()
    x_t = seen["x_t"][1]
    tmean = b[k] * acp[k - 1].sqrt() / (1 - acp[k]) * x0[1] + (1 - acp[k - 1]) * (1 - b[k]).sqrt() / (1 - acp[k]) * x_t
    tlog = math.log(float(b[k] * (1 - acp[k - 1]) / (1 - acp[k])))
    x0h = (x_t - (1 - acp[k]).sqrt() * raw[1, :3]) / acp[k].sqrt()
    pmean = b[k] * acp[k - 1].sqrt() / (1 - acp[k]) * x0h + (1 - acp[k - 1]) * (1 - b[k]).sqrt() / (1 - acp[k]) * x_t
    frac = (raw[1, 3:] + 1) / 2
    plog = frac * math.log(float(b[k])) + (1 - frac) * tlog
    kl = 0.5 * (-1 + plog - tlog + torch.exp(tlog - plog) + (tmean - pmean) ** 2 * torch.exp(-plog))
    assert abs(float(kl.mean().detach() / math.log(2)) - float(terms["vb"][1].detach())) < 1e-4
    # stop-gradient: vb trains the variance values only.
    terms["vb"].sum().backward()
    assert float(raw.grad[:, :3].abs().max()) == 0.0
    assert float(raw.grad[:, 3:].abs().max()) > 0.0
    raw = raw.detach()
    # without learn_sigma: only the MSE
    fixed = training_losses(ddpm_fixed, lambda x, tm: raw.detach()[:, :3], x0, t, noise)
    assert set(fixed) == {"mse", "loss"} and torch.allclose(fixed["loss"], mse)
    # vb is non-negative for random inputs at random timesteps (incl. the decoder NLL at t=0)
    tt = torch.tensor([0, 1, 2, 999])
    xx = torch.randn(4, 3, 4, 4, generator=g)
    vb = vb_terms_bpd(ddpm, torch.randn(4, 6, 4, 4, generator=g), xx, torch.randn(4, 3, 4, 4, generator=g), tt)
    assert torch.isfinite(vb).all() and (vb >= 0).all()


def test_flow_training_loss_and_sigmas():
    g = torch.Generator().manual_seed(9)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    sigma = torch.tensor([0.25, 0.9])
    v_hat = torch.randn(SHAPE, generator=g)
    seen = {}

    def model(x, t):
        seen["x"], seen["t"] = x, t
        return v_hat

    out = flow_training_loss(model, x0, sigma, noise)
    s = sigma.reshape(-1, 1, 1, 1, 1)
    assert (seen["x"] - (s * noise + (1 - s) * x0)).abs().max() < 1e-6
    assert torch.allclose(seen["t"], torch.tensor([250.0, 900.0]))
    assert (out["loss"] - ((v_hat - (noise - x0)) ** 2).reshape(2, -1).mean(1)).abs().max() < 1e-6
    x0_loss = flow_training_loss(model, x0, sigma, noise, target="x0")["loss"]
    assert (x0_loss - ((seen["x"] - s * v_hat - x0) ** 2).reshape(2, -1).mean(1)).abs().max() < 1e-6
    a = sample_sigmas(4096, torch.Generator().manual_seed(0))
    b = sample_sigmas(4096, torch.Generator().manual_seed(0), shift=3.0)
    assert 0 < float(a.min()) and float(a.max()) < 1 and abs(float(a.mean()) - 0.5) < 0.02
    assert torch.allclose(b, 3 * a / (1 + 2 * a), atol=1e-6)


# ---------------------------------------------------------------- determinism, callback, errors

def test_determinism_and_callback(ddpm):
    model = with_var(analytic_eps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10))
    seen = []
    a = sample_ddpm(model, x, ddpm, steps=5, generator=torch.Generator().manual_seed(1), callback=seen.append)
    b = sample_ddpm(model, x, ddpm, steps=5, generator=torch.Generator().manual_seed(1))
    c = sample_ddpm(model, x, ddpm, steps=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and float((a - c).abs().max()) > 1e-2
    assert [d["step"] for d in seen] == [0, 1, 2, 3, 4] and {d["total"] for d in seen} == {5}
    assert torch.equal(seen[-1]["x"], a) and seen[-1]["denoised"].shape == x.shape
    d1 = sample_ddim(model, x, ddpm, steps=4, eta=1.0, generator=torch.Generator().manual_seed(3))
    d2 = sample_ddim(model, x, ddpm, steps=4, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(d1, d2)

    calls = []

    class Stop(Exception):
        pass

    def cb(d):
        if d["step"] == 2:
            raise Stop()

    def counting(x, t):
        calls.append(1)
        return model(x, t)

    with pytest.raises(Stop):
        sample_ddpm(counting, x, ddpm, steps=10, callback=cb)
    assert len(calls) == 3


def test_bad_inputs(ddpm):
    flow = make_schedule(DiffusionConfig(objective="flow"))
    with pytest.raises(ValueError, match=r"Unknown sampler 'heun'.*ddpm, ddim"):
        get_sampler("heun", ddpm)
    with pytest.raises(ValueError, match=r"'euler' does not work with the 'ddpm' objective; valid choices: ddpm, ddim"):
        get_sampler("euler", ddpm)
    with pytest.raises(ValueError, match=r"valid choices: euler"):
        get_sampler("ddim", flow)
    assert get_sampler("euler", flow) is sample_euler
    model = with_var(analytic_eps)
    x = torch.randn(SHAPE)
    for steps in (0, -3, 1001):
        with pytest.raises(ValueError, match=r"steps must be between 1 and 1000.*got " + str(steps)):
            sample_ddim(model, x, ddpm, steps=steps)
    with pytest.raises(ValueError, match="steps must be an integer"):
        sample_euler(analytic_v, x, flow, steps=2.5)
    with pytest.raises(ValueError, match="sample_euler needs a 'flow' schedule"):
        sample_euler(analytic_v, x, ddpm, steps=4)
    with pytest.raises(ValueError, match=r"2×C channels"):
        sample_ddpm(analytic_eps, x, ddpm, steps=2)
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim999")
