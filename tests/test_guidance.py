"""Guidance and inversion (diffkit.guidance): CFG identities with an exact class-conditional oracle, the
Skip-Tuning interface, ODE inversion round trips (error shrinking with steps), and EDICT's exact round trip."""
import pytest
import torch
from diffkit.paths import convert, get_path
from diffkit.toy import GaussianMixture, OracleDenoiser, mixture_x0, random_mixture
from diffkit.samplers import sample_euler, uniform_grid
from diffkit.stochastic import sample_ddim, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde
from diffkit.models.mlp import TimeMLP
from diffkit.denoiser import Denoiser
from diffkit.guidance import CFG, ReversedPath, SkipTuning, edict_invert, invert, sample_edict, skip_scales

F64 = torch.float64
GM = random_mixture()
K = len(GM.weights)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ClassOracle:
    "Exact class-conditional denoiser: class k = component k of the mixture, class K = unconditional."
    def __init__(self, path):
        self.path = get_path(path)
        self.parts = [GaussianMixture(GM.means[k:k + 1], GM.covs[k:k + 1]) for k in range(K)] + [GM]
        self.batches = []
    def __call__(self, x, t, y, **kw):
        self.batches.append(len(x))
        return torch.stack([mixture_x0(p, x, t, self.path) for p in self.parts])[y, torch.arange(len(x))]


def _inputs(n=32, t=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, 2, generator=g, dtype=F64)
    y = torch.randint(0, K, (n,), generator=g)
    return x, torch.full((n,), t, dtype=F64), y


@pytest.mark.parametrize('path', ['vp', 've', 'linear', 'trig'])
def test_cfg_scale_one_and_zero(path):
    D = ClassOracle(path)
    x, t, y = _inputs()
    cond, uncond = D(x, t, y), D(x, t, torch.full_like(y, K))
    assert torch.equal(CFG(D, 1., {'y': K})(x, t, y=y), cond)
    assert torch.allclose(CFG(D, 0., {'y': K})(x, t, y=y), uncond, atol=1e-12, rtol=0)
    w = 2.5
    assert torch.allclose(CFG(D, w, {'y': K})(x, t, y=y), uncond + w * (cond - uncond), atol=1e-12, rtol=0)


def test_cfg_batches_cond_and_uncond_in_one_forward():
    D = ClassOracle('linear')
    x, t, y = _inputs()
    CFG(D, 3., {'y': K})(x, t, y=y)
    assert D.batches == [64]
    D.batches.clear(); CFG(D, 1., {'y': K})(x, t, y=y)
    assert D.batches == [32]


def test_cfg_interval():
    D = ClassOracle('trig')
    x, _, y = _inputs()
    t = torch.linspace(0.05, 0.95, 32, dtype=F64)
    guided = CFG(D, 4., {'y': K}, interval=(0.3, 0.6))(x, t, y=y)
    full = CFG(D, 4., {'y': K})(x, t, y=y)
    inside = (t >= 0.3) & (t <= 0.6)
    assert torch.equal(guided[~inside], D(x, t, y)[~inside])     # outside: unguided (the conditional model)
    assert torch.allclose(guided[inside], full[inside], atol=1e-12, rtol=0)
    D.batches.clear()
    out = CFG(D, 4., {'y': K}, interval=(0.7, 1.))(x, torch.full((32,), 0.5, dtype=F64), y=y)
    assert D.batches == [32] and torch.equal(out, D(x, torch.full((32,), 0.5, dtype=F64), y))


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale):
    "diffusers' `rescale_noise_cfg` (pipeline_stable_diffusion.py), written out: importing it needs transformers."
    dims = list(range(1, noise_cfg.ndim))
    rescaled = noise_cfg * (noise_pred_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def test_cfg_rescale_matches_diffusers_formula():
    D = ClassOracle('vp')
    x, t, y = _inputs(t=0.4)
    w, phi = 6., 0.7
    e_c, e_u = [convert(D(x, t, c), 'x0', 'eps', x, t, D.path) for c in (y, torch.full_like(y, K))]
    ref = rescale_noise_cfg(e_u + w * (e_c - e_u), e_c, guidance_rescale=phi)
    ours = convert(CFG(D, w, {'y': K}, rescale=phi)(x, t, y=y), 'x0', 'eps', x, t, D.path)
    assert torch.allclose(ours, ref, atol=1e-10, rtol=0)


def test_cfg_passes_other_conditions_to_both_halves():
    seen = {}
    class M:
        path = get_path('linear')
        def __call__(self, x, t, y, low_res=None, skip_scale=None):
            seen.update(y=y.clone(), low_res=low_res, skip_scale=skip_scale); return x
    x, t, y = _inputs(n=4)
    lr = torch.arange(4.).double()[:, None]
    CFG(SkipTuning(M(), 0.8), 2., {'y': K})(x, t, y=y, low_res=lr)
    assert seen['skip_scale'] == 0.8 and torch.equal(seen['low_res'], torch.cat([lr, lr]))
    assert torch.equal(seen['y'], torch.cat([y, torch.full_like(y, K)]))


def test_cfg_with_timemlp_null_class():
    torch.manual_seed(0)
    net = TimeMLP(2, width=16, depth=1, num_classes=K).double()
    D = Denoiser(net, 'linear', 'velocity')
    x, t, y = _inputs(n=8)
    with torch.no_grad():
        out = CFG(D, 3., {'y': K})(x, t, y=y)
        c, u = D(x, t, y=y), D(x, t, y=torch.full_like(y, K))
    assert torch.allclose(out, u + 3 * (c - u), atol=1e-10, rtol=0)


def test_input_checks():
    D = ClassOracle('linear')
    x, t, y = _inputs(n=4)
    with pytest.raises(ValueError, match='null_cond'): CFG(D, 2.)
    with pytest.raises(ValueError, match='rescale'): CFG(D, 2., {'y': K}, rescale=2.)
    with pytest.raises(ValueError, match="the condition 'y'"): CFG(D, 2., {'y': K})(x, t)
    with pytest.raises(ValueError, match='levels'): skip_scales(0)
    with pytest.raises(ValueError, match='sigma = 0'): invert(sample_euler, OracleDenoiser(GM, 'linear'), x, uniform_grid(4))
    with pytest.raises(ValueError, match='alpha > 0'): edict_invert(OracleDenoiser(GM, 'linear'), x, uniform_grid(4))
    with pytest.raises(ValueError, match='mixing weight'): edict_invert(OracleDenoiser(GM, 'vp'), x, uniform_grid(4), p=0.)


def test_skip_scales():
    assert skip_scales(1, 0.8) == [0.8]
    s = skip_scales(3, 0.6)
    assert s[0] == 1. and abs(s[1] - 0.8) < 1e-12 and abs(s[2] - 0.6) < 1e-12


def test_reversed_path_velocity():
    p = get_path('vp'); r = ReversedPath(p)
    s = torch.linspace(0.1, 0.9, 5, dtype=F64)
    h = 1e-6
    assert torch.allclose(r.d_alpha(s), (r.alpha(s + h) - r.alpha(s - h)) / (2 * h), atol=1e-6)
    assert torch.allclose(r.t_from_log_snr(r.log_snr(s)), s, atol=1e-9)


def _data(path, n=128, t=0.02, seed=1):
    g = torch.Generator().manual_seed(seed)
    p = get_path(path)
    tt = torch.tensor(t, dtype=F64)
    return p.alpha(tt) * GM.sample(n, generator=g) + p.sigma(tt) * torch.randn(n, 2, generator=g, dtype=F64)


@pytest.mark.parametrize('path', ['vp', 'linear', 'trig'])
@pytest.mark.parametrize('sampler,kw', [(sample_euler, {}), (sample_ddim, {}), (sample_dpmpp_2m_sde, dict(eta=0.))],
                         ids=['euler', 'ddim', 'dpmpp_2m'])
def test_ode_inversion_round_trip_shrinks_with_steps(sampler, kw, path):
    D = OracleDenoiser(GM, path)
    x = _data(path)
    def err(m):
        ts = uniform_grid(m, 0.98, 0.02)
        return (sampler(D, invert(sampler, D, x, ts, **kw), ts, **kw) - x).norm(dim=1).mean().item()
    e = [err(m) for m in (10, 20, 40)]
    assert e[2] < e[1] < e[0] and e[2] < e[0] / 2, e   # at least first order (Euler on the stiff VP end is pre-asymptotic here)


@pytest.mark.parametrize('path', ['vp', 've', 'edm', 'linear', 'trig'])
def test_edict_round_trip_is_exact(path):
    D = OracleDenoiser(GM, path)
    x = GM.sample(128, generator=torch.Generator().manual_seed(2))
    for m in (5, 30):
        ts = uniform_grid(m, 0.98, 0.)
        zx, zy = edict_invert(D, x, ts)
        bx, by = sample_edict(D, zx, zy, ts)
        assert (bx - x).abs().max() < 1e-8 and (by - x).abs().max() < 1e-8, (path, m, (bx - x).abs().max())


def test_edict_round_trip_with_network():
    torch.manual_seed(0)
    D = Denoiser(TimeMLP(2, width=32, depth=2).double().eval(), 'linear', 'velocity')
    x = GM.sample(64, generator=torch.Generator().manual_seed(3))
    ts = uniform_grid(20, 0.95, 0.)
    zx, zy = edict_invert(D, x, ts)
    bx, _ = sample_edict(D, zx, zy, ts)
    assert (bx - x).abs().max() < 1e-8
