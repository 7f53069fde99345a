"""Stochastic samplers (diffkit.stochastic) against exact answers and against diffusers.

The oracle (the exact denoiser of a Gaussian mixture, float64) replaces a trained network, so every
difference is the sampler's. Sizes are chosen so the whole file runs in well under a minute on 2 cores.
"""
import math
import pytest
import torch
from diffkit.paths import get_path
from diffkit.toy import OracleDenoiser, random_mixture
from diffkit.samplers import sample_euler, uniform_grid
from diffkit.metrics import sliced_wasserstein
from diffkit.variational import DiscreteVP
from diffkit.stochastic import (BrownianNoise, GaussianNoise, PerSampleNoise, grid_from_timesteps, sample_ddim, sample_ddpm,
                                sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_euler_ancestral, sample_euler_maruyama)

F64 = torch.float64
GM = random_mixture()


@pytest.fixture(autouse=True)
def one_thread():
    "Small oracle batches run several times faster on one thread on a loaded 2-core machine."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def lsnr_grid(path, n, t_max=1., t_min=1e-3):
    "n steps uniform in log-SNR; on paths with alpha(1) ~ 0 (log-SNR -> -inf) the first step goes from t_max to 0.999."
    if t_max > 0.999 and path.log_snr(torch.tensor(t_max, dtype=F64)) < path.log_snr(torch.tensor(0.999, dtype=F64)) - 5:
        return torch.cat([torch.tensor([t_max], dtype=F64), lsnr_grid(path, n - 1, 0.999, t_min)])
    lam = path.log_snr(torch.tensor([t_max, t_min], dtype=F64))
    return path.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=F64))


def exact_xt(path, n, t, seed):
    "n exact samples of p_t: alpha(t) x0 + sigma(t) eps with x0 from the mixture."
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(t, dtype=F64)
    return path.alpha(t) * GM.sample(n, generator=g) + path.sigma(t) * torch.randn(n, 2, generator=g, dtype=F64)


# ---------------------------------------------------------------------------------------------------------
# diffusers cross-checks: same model (the oracle as an eps-network on the path of diffusers' alphas_cumprod),
# same grid, same noise.

def rel_err(a, b):
    "Largest error relative to max(1, |b|): diffusers keeps alphas_cumprod in float32, so agreement is at float32 level."
    return ((a - b).abs() / b.abs().clamp_min(1)).max().item()


def _diffusers_model(kind, set_alpha_to_one=True):
    "(eps network of (x, k), diffkit denoiser) sharing one model."
    diffusers = pytest.importorskip('diffusers')
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear', clip_sample=False,
                                    set_alpha_to_one=set_alpha_to_one, thresholding=False)
    path = DiscreteVP.from_alphas_cumprod(sched.alphas_cumprod)
    if kind == 'oracle':
        D = OracleDenoiser(GM, path)
        eps = lambda x, k: D.predict(x, torch.full((len(x),), (int(k) + 1) / 1000, dtype=F64), 'eps')
    else:   # a fixed random eps-network, wrapped by Denoiser
        from diffkit.models.mlp import TimeMLP
        from diffkit.denoiser import Denoiser
        torch.manual_seed(0)
        net = TimeMLP(2, width=32, depth=2).double().eval()
        D = Denoiser(net, path, 'eps')
        eps = lambda x, k: net(x, torch.full((len(x),), (int(k) + 1) / 1000, dtype=F64))
    return sched, path, D, eps


@pytest.mark.parametrize('kind,eta,one', [('oracle', 0., True), ('oracle', 0.5, True), ('oracle', 1., True), ('mlp', 0., True),
                                          ('mlp', 0.5, True), ('oracle', 0., False), ('oracle', 0.5, False)])
def test_ddim_matches_diffusers(kind, eta, one):
    "set_alpha_to_one=False: diffusers' last step goes from alphas_cumprod[0] to itself (the identity); our grid ends at t = 1/N."
    sched, path, D, eps = _diffusers_model(kind, one)
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=F64)
    zs = torch.randn(len(sched.timesteps), 64, 2, generator=g, dtype=F64)
    y = x.clone()
    with torch.no_grad():
        for i, k in enumerate(sched.timesteps):
            y = sched.step(eps(y, k), k, y, eta=eta, variance_noise=zs[i]).prev_sample
    ts = grid_from_timesteps(sched.timesteps, 1000, final_alpha_one=one)
    idx = {t: i for i, t in enumerate(ts.tolist())}
    ours = sample_ddim(D, x, ts, eta=eta, noise_sampler=lambda t, t_next: zs[idx[t]])
    assert rel_err(ours, y) < 1e-4, rel_err(ours, y)


@pytest.mark.parametrize('kind', ['oracle', 'mlp'])
def test_ddpm_matches_diffusers(kind, monkeypatch):
    diffusers = pytest.importorskip('diffusers')
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    _, path, D, eps = _diffusers_model(kind)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', clip_sample=False, variance_type='fixed_small')
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g, dtype=F64)
    zs = torch.randn(len(sched.timesteps), 64, 2, generator=g, dtype=F64)
    calls = iter(zs)
    monkeypatch.setattr(ddpm_mod, 'randn_tensor', lambda *a, **k: next(calls))
    y = x.clone()
    with torch.no_grad():
        for k in sched.timesteps: y = sched.step(eps(y, k), k, y).prev_sample
    ts = grid_from_timesteps(sched.timesteps, 1000)
    idx = {t: i for i, t in enumerate(ts.tolist())}
    ours = sample_ddpm(D, x, ts, noise_sampler=lambda t, t_next: zs[idx[t]])
    assert rel_err(ours, y) < 1e-4, rel_err(ours, y)


# ---------------------------------------------------------------------------------------------------------
# exact answers from the oracle

def test_ddim_eta0_is_an_ode_solver():
    D = OracleDenoiser(GM, 'trig')
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = lambda n: uniform_grid(n, 1., 1e-3)
    ref = sample_euler(D, x1, grid(1000))
    e = [(sample_ddim(D, x1, grid(n)) - ref).norm(dim=1).mean().item() for n in (100, 200)]
    assert e[1] < 0.03 and e[0] / e[1] > 1.6, e


SDE_FAMILY = {
    'EM g2=0 (PF-ODE)': (sample_euler_maruyama, dict(diffusion=0.)),
    'EM g2=0.5 g2_path': (sample_euler_maruyama, dict(diffusion=0.5)),
    'EM g2=g2_path (VP-SDE)': (sample_euler_maruyama, dict(diffusion=1.)),
    'EM g2=2 g2_path': (sample_euler_maruyama, dict(diffusion=2.)),
    'EM g2(t)=1 + t': (sample_euler_maruyama, dict(diffusion=lambda t: 1 + t)),
    'DDPM': (sample_ddpm, {}),
    'Euler ancestral eta=0.5': (sample_euler_ancestral, dict(eta=0.5)),
    '2M SDE': (sample_dpmpp_2m_sde, {}),
    '2M SDE eta=0.5 heun': (sample_dpmpp_2m_sde, dict(eta=0.5, solver_type='heun')),
    '3M SDE': (sample_dpmpp_3m_sde, {}),
}


@pytest.fixture(scope='module')
def vp_reference():
    n = 2500
    path = get_path('vp')
    g = torch.Generator().manual_seed(5)
    data, data2 = GM.sample(n, generator=g), GM.sample(n, generator=g)
    D = OracleDenoiser(GM, path)
    sw = lambda y: sliced_wasserstein(y, data, 256, torch.Generator().manual_seed(0))
    return dict(D=D, xT=exact_xt(path, n, 1., 6), sw=sw, floor=sw(data2), ll=D.log_prob(data2).mean().item())


@pytest.mark.parametrize('name', list(SDE_FAMILY))
def test_sde_family_reaches_the_same_marginals(name, vp_reference):
    "Every diffusion coefficient (and the ancestral / exponential-integrator samplers) ends at the data distribution."
    r = vp_reference
    f, kw = SDE_FAMILY[name]
    # exponential integrators run on a log-SNR grid, Euler-Maruyama (first order in t) on a uniform one
    ts = uniform_grid(100, 1., 1e-3) if f is sample_euler_maruyama else lsnr_grid(r['D'].path, 100)
    y = f(r['D'], r['xT'], ts, generator=torch.Generator().manual_seed(7), **kw)
    sw, gap = r['sw'](y), r['D'].log_prob(y).mean().item() - r['ll']
    print(f"{name}: SW {sw:.3f} (floor {r['floor']:.3f}), mean log p0 gap {gap:+.3f}")
    assert sw < 2 * r['floor'] and abs(gap) < 0.1, (sw, r['floor'], gap)


def test_wrong_diffusion_is_detected(vp_reference):
    "The marginal test can fail: dropping the score correction (drift u with noise g) leaves the distribution too wide."
    r = vp_reference
    D = r['D']
    class NoCorrection:
        path = D.path
        def __call__(self, x, t):   # the drift then sees score = 0: D := (x - sigma * 0) / alpha is wrong on purpose
            return D(x, t) * 0 + x / D.path.alpha(t)[:, None]
    y = sample_euler_maruyama(NoCorrection(), r['xT'][:500], lsnr_grid(D.path, 50), generator=torch.Generator().manual_seed(7))
    assert not torch.isfinite(y).all() or r['sw'](y) > 3 * r['floor']


PATHS5 = ['vp', 've', 'edm', 'linear', 'trig']
ALL = {'ddim': (sample_ddim, {}), 'ddim eta=0.7': (sample_ddim, dict(eta=0.7)), 'ddpm': (sample_ddpm, {}),
       'euler_ancestral': (sample_euler_ancestral, {}), 'euler_maruyama': (sample_euler_maruyama, {}),
       'dpmpp_2m_sde': (sample_dpmpp_2m_sde, {}), 'dpmpp_3m_sde': (sample_dpmpp_3m_sde, {})}


@pytest.mark.parametrize('path', PATHS5)
@pytest.mark.parametrize('name', list(ALL))
def test_every_sampler_on_every_path(name, path):
    p = get_path(path)
    f, kw = ALL[name]
    # Euler-Maruyama needs g^2 finite at its first point: paths with alpha(1) = 0 start just below 1
    t_max = 0.99 if name == 'euler_maruyama' and path in ('linear', 'trig') else 1.
    D = OracleDenoiser(GM, p)
    x = exact_xt(p, 400, t_max, 3)
    y = f(D, x, lsnr_grid(p, 60, t_max), generator=torch.Generator().manual_seed(4), **kw)
    ll = D.log_prob(GM.sample(400, generator=torch.Generator().manual_seed(8))).mean()
    assert torch.isfinite(y).all()
    assert abs(D.log_prob(y).mean() - ll) < 0.3


def test_per_sample_noise_is_batch_size_invariant():
    D = OracleDenoiser(GM, 'vp')
    ts = lsnr_grid(D.path, 20)
    out = {}
    for seeds in ([0], list(range(8))):
        noise = PerSampleNoise(seeds, (2,), dtype=F64)
        x = noise() * D.path.sigma(torch.tensor(1., dtype=F64))
        out[len(seeds)] = {f.__name__: f(D, x, ts, noise_sampler=noise) for f in (sample_ddpm, sample_dpmpp_2m_sde)}
        noise = BrownianNoise(seeds, (2,), dtype=F64)
        out[len(seeds)]['brownian'] = sample_dpmpp_3m_sde(D, x, ts, noise_sampler=noise)
    for k in out[1]:
        assert (out[1][k][0] - out[8][k][0]).abs().max() < 1e-12, k
    # and a shared generator is not invariant: sample 0 changes with the batch
    g8 = sample_ddpm(D, torch.zeros(8, 2, dtype=F64) + 1, ts, generator=torch.Generator().manual_seed(0))
    g1 = sample_ddpm(D, torch.zeros(1, 2, dtype=F64) + 1, ts, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(g8[0], g1[0])


def test_brownian_noise_converges_pathwise():
    "With one Brownian path the SDE solution converges as the grid is refined; with fresh noise per grid it does not."
    D = OracleDenoiser(GM, 'vp')
    x = exact_xt(D.path, 64, 1., 9)
    grid = lambda n: uniform_grid(n, 1., 1e-3)
    def run(n, noise): return sample_euler_maruyama(D, x, grid(n), noise_sampler=noise)
    bm = lambda: BrownianNoise(11, (64, 2), dtype=F64)
    fine = run(512, bm())
    e_bm = [(run(n, bm()) - fine).norm(dim=1).mean().item() for n in (64, 128)]
    e_fresh = (run(128, GaussianNoise(x, torch.Generator().manual_seed(3))) - fine).norm(dim=1).mean().item()
    assert e_bm[1] < e_bm[0] and e_bm[1] < 0.3 * e_fresh, (e_bm, e_fresh)


def test_input_checks():
    D = OracleDenoiser(GM, 'vp')
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match='strictly decreasing'): sample_ddim(D, x, [0., 1.])
    with pytest.raises(ValueError, match='non-negative float'): sample_ddpm(D, x, [1., 0.], eta=-1)
    with pytest.raises(TypeError, match='expected a GaussianPath'): sample_ddim(lambda x, t: x, x, [1., 0.])
    with pytest.raises(TypeError, match='floating-point'): sample_dpmpp_3m_sde(D, x.long(), [1., 0.])
    with pytest.raises(ValueError, match='depth'): BrownianNoise(0, (2,), depth=0)
