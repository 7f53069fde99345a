"""Cross-checks against diffusers schedulers on the same model and the same noise.

How the grids are matched. diffusers' discrete schedulers (Euler, Heun, DPMSolverMultistep, UniPC) live on the
noise levels sigma_k = sqrt((1 - alphas_cumprod_k) / alphas_cumprod_k) of a discrete beta schedule: that is the
variance-exploding *view* of the VP model, x~ = x / alpha with noise level sigma/alpha. We give our samplers that
view as a path, `SigmaLinear(S)`: alpha = 1, sigma(t) = S t, so the time grid is t_i = sigma_i / S with the
scheduler's own sigmas (S = the largest). sigma linear in t makes Euler / Heun in t exactly Euler / Heun in sigma, as
k-diffusion and diffusers step; the exponential integrators (DPM-Solver++, UniPC) depend on the grid only through
lambda = -log(sigma), so they do not care about the parametrisation. The model is the exact denoiser of a Gaussian
mixture: diffusers sees it as an eps-prediction network eps(x_vp, timestep) (sigma interpolated from the timestep
exactly as diffusers does), our samplers as x0 = D(x~, t). Flow matching (FlowMatchEulerDiscreteScheduler) is the
Linear path itself, t = sigma.
"""
import numpy as np
import pytest
import torch
from diffkit.paths import EDM
from diffkit.samplers import sample_dpmpp_2m, sample_euler, sample_heun, sample_unipc, sd3_shift
from diffkit.toy import random_mixture

diffusers = pytest.importorskip('diffusers')

import sys, pathlib
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_samplers_ode import FastOracle  # noqa: E402

GM = random_mixture(k=3, dim=2, scale=1.5, seed=4)
SD = dict(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


class SigmaLinear(EDM):
    "The VE view of a discrete VP schedule with sigma linear in t (alpha = 1, sigma = S t): EDM's map with rho = 1, sigma_min = 0."
    def __init__(self, S: float): super().__init__(sigma_min=0., sigma_max=S, rho=1.); self.S = S


def make_eps_unet(sched, S):
    "diffusers-side model: eps(x_vp, timestep), the exact mixture denoiser at the interpolated noise level."
    full = np.sqrt((1 - sched.alphas_cumprod.double().numpy()) / sched.alphas_cumprod.double().numpy())
    oracle = FastOracle(GM, SigmaLinear(S))
    def unet(x_vp, timestep):
        sig = float(np.interp(float(timestep), np.arange(len(full)), full))
        a = 1 / (1 + sig ** 2) ** 0.5
        x0 = oracle(x_vp / a, torch.full((x_vp.shape[0],), sig / S, dtype=torch.float64))
        return (x_vp - a * x0) / (a * sig)
    return unet, oracle


def run_diffusers(sched, unet, x):
    for tau in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, tau), tau), tau, x).prev_sample
    return x


def setup(cls, steps, **kw):
    sched = cls(**SD, **kw)
    sched.set_timesteps(steps)
    sig = sched.sigmas.double()
    if cls is diffusers.HeunDiscreteScheduler: sig = torch.cat([sig[:1], sig[1::2]])      # drop the repeats
    S = float(sig.max())
    unet, oracle = make_eps_unet(sched, S)
    return sched, unet, oracle, sig / S


NOISE = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize('steps', [8, 25])
def test_euler_discrete(steps):
    sched, unet, D, ts = setup(diffusers.EulerDiscreteScheduler, steps)
    x = NOISE * sched.init_noise_sigma                       # diffusers' Euler state is x~ = x / alpha already
    theirs = run_diffusers(sched, unet, x.clone())
    ours = sample_euler(D, x.clone(), ts)
    torch.testing.assert_close(ours, theirs.double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize('steps', [8, 20])
def test_heun_discrete(steps):
    sched, unet, D, ts = setup(diffusers.HeunDiscreteScheduler, steps)
    x = NOISE * sched.init_noise_sigma
    theirs = run_diffusers(sched, unet, x.clone())
    ours = sample_heun(D, x.clone(), ts)
    assert len(sched.timesteps) == 2 * steps - 1              # same NFE: the last step is Euler to sigma = 0
    torch.testing.assert_close(ours, theirs.double(), atol=1e-4, rtol=0)


def _vp_start(ts, S):
    "diffusers' multistep schedulers hold the VP sample x = alpha x~; start both from the same noise."
    s0 = ts[0].item() * S
    return NOISE.clone(), NOISE * (1 + s0 ** 2) ** 0.5


@pytest.mark.parametrize('steps', [6, 10, 20])
def test_dpmsolver_multistep_2m(steps):
    sched, unet, D, ts = setup(diffusers.DPMSolverMultistepScheduler, steps, algorithm_type='dpmsolver++', solver_order=2)
    x_vp, x_ve = _vp_start(ts, D.path.S)
    theirs = run_diffusers(sched, unet, x_vp)
    ours = sample_dpmpp_2m(D, x_ve, ts)
    torch.testing.assert_close(ours, theirs.double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize('order,steps', [(2, 6), (2, 12), (3, 10), (3, 20)])
def test_unipc_multistep(order, steps):
    sched, unet, D, ts = setup(diffusers.UniPCMultistepScheduler, steps, solver_order=order)
    x_vp, x_ve = _vp_start(ts, D.path.S)
    theirs = run_diffusers(sched, unet, x_vp)
    ours = sample_unipc(D, x_ve, ts, order=order)
    torch.testing.assert_close(ours, theirs.double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize('shift', [1.0, 3.0])
def test_flow_match_euler(shift):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(12)
    ts = sched.sigmas.double()
    D = FastOracle(GM, 'linear')
    def transformer(x, tau): return D.predict(x, torch.full((x.shape[0],), float(tau) / 1000, dtype=torch.float64), 'velocity')
    x = NOISE.clone()
    for tau in sched.timesteps: x = sched.step(transformer(x, tau), tau, x).prev_sample
    ours = sample_euler(D, NOISE.clone(), ts)
    torch.testing.assert_close(ours, x.double(), atol=1e-4, rtol=0)
    # and our SD3 shift is diffusers' shift (which spaces its unshifted sigmas down to the *shifted* sigma_min)
    base = torch.linspace(1, sd3_shift(1 / 1000, shift).item(), 12, dtype=torch.float64)
    torch.testing.assert_close(sd3_shift(base, shift), ts[:-1], atol=1e-6, rtol=0)
