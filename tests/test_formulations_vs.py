"Heavier checks of diffkit.variational and diffkit.score: peers (diffusers schedulers) and the exported module itself."
import math
from test_docs import assert_typeset, chromium, load, server, site  # noqa: F401  (fixtures and helpers of the browser check)
import pytest
import torch
from torch import nn
from diffkit.paths import VPLinear
from diffkit.toy import OracleDenoiser, random_mixture
from diffkit.stochastic import sample_ddim, sample_ddpm
from diffkit.variational import (DiscreteVP, discrete_to_t, hybrid_loss, linear_betas,
                                 vlb_bpd, betas_from_path, discrete_grid)
from diffkit.score import dsm_loss, edm_precond, sample_pc
from diffkit.stochastic import sample_euler_maruyama

N = 1000


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)  # the oracle's tiny batched solves are much faster on one thread
    yield
    torch.set_num_threads(n)


def _setup(n=32):
    gm = random_mixture()
    sched = DiscreteVP(linear_betas(N))
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return gm, sched, OracleDenoiser(gm, sched), x


def test_ddim_matches_diffusers():
    diffusers = pytest.importorskip('diffusers')
    gm, sched, D, x = _setup()
    ds = diffusers.DDIMScheduler(num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule='linear',
                                 clip_sample=False, set_alpha_to_one=True, prediction_type='epsilon')
    ds.set_timesteps(20)
    ks = ds.timesteps.tolist()
    y = x.clone()
    for k in ks:
        eps = D.predict(y, discrete_to_t(torch.tensor(k), N).expand(len(y)), 'eps')
        y = ds.step(eps, k, y, eta=0.).prev_sample
    ts = torch.cat([discrete_to_t(torch.tensor(ks), N), torch.zeros(1, dtype=torch.float64)])
    ours = sample_ddim(D, x, ts)
    assert (ours - y).pow(2).mean() < 1e-12


def test_ddpm_matches_diffusers():
    diffusers = pytest.importorskip('diffusers')
    gm, sched, D, x = _setup()
    ds = diffusers.DDPMScheduler(num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule='linear',
                                 clip_sample=False, variance_type='fixed_small', prediction_type='epsilon')
    ds.set_timesteps(N)
    ks = ds.timesteps.tolist()
    # one step, the same noise: the posterior mean and variance agree
    for k in (999, 500, 10, 1):
        t = discrete_to_t(torch.tensor(k), N).item()
        eps = D.predict(x, torch.tensor(t, dtype=torch.float64), 'eps')
        theirs = ds.step(eps, k, x, generator=torch.Generator().manual_seed(3)).prev_sample
        ours = sample_ddpm(D, x, [t, k / N], generator=torch.Generator().manual_seed(3))
        assert (ours - theirs).pow(2).mean() < 1e-8, k   # diffusers keeps its schedule in float32
    assert ks[0] == N - 1 and ks[-1] == 0


def test_hybrid_loss_trains_both_heads():
    gm, sched, D, _ = _setup()
    sched = DiscreteVP(linear_betas(50))
    net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 4)).double()
    f = lambda x, t: net(torch.cat([x, t[:, None]], 1))
    x0 = gm.sample(64, generator=torch.Generator().manual_seed(0))
    k = torch.arange(64) % 50                     # includes k = 0, the decoder term
    loss = hybrid_loss(f, sched, x0, k=k, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match='expected 4 channels'):
        hybrid_loss(lambda x, t: x, sched, x0)


def test_vlb_bpd_upper_bounds_nll():
    gm = random_mixture()
    x0 = gm.sample(500, generator=torch.Generator().manual_seed(0))
    sched = DiscreteVP(betas_from_path(VPLinear(), 32))
    bpd = vlb_bpd(OracleDenoiser(gm, sched), x0, sched, generator=torch.Generator().manual_seed(1))
    from diffkit.toy import mixture_log_prob
    nll = -mixture_log_prob(gm, x0, 0.) / (2 * math.log(2))
    d = bpd - nll
    assert d.mean() > 3 * d.std() / len(d) ** .5
    with pytest.raises(TypeError, match='DiscreteVP'):
        vlb_bpd(OracleDenoiser(gm, sched), x0, VPLinear())


def test_score_samplers_module_level():
    gm = random_mixture()
    D = OracleDenoiser(gm, VPLinear())
    x1 = VPLinear().sample(gm.sample(256, generator=torch.Generator().manual_seed(0)), 1.)[0]
    seen = []
    out = sample_pc(D, x1, discrete_grid(20), snr=0.1, callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert out.shape == x1.shape and torch.isfinite(out).all() and [s['i'] for s in seen] == list(range(20))
    a = sample_euler_maruyama(D, x1, discrete_grid(20), generator=torch.Generator().manual_seed(5))
    b = sample_euler_maruyama(D, x1, discrete_grid(20), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)                        # randomness only through the generator
    net = nn.Linear(2, 2).double()
    loss = dsm_loss(lambda x, t: net(x), VPLinear(), gm.sample(64), generator=torch.Generator().manual_seed(0))
    loss.backward(); assert net.weight.grad is not None
    c_skip, c_out, c_in, c_noise = edm_precond(torch.tensor([1.]), 0.5)
    assert torch.allclose(torch.stack([c_skip, c_out, c_in]).flatten(), torch.tensor([0.2, 0.5 / 1.25 ** .5, 1 / 1.25 ** .5]))


@pytest.mark.parametrize('page,api', [('variational.html', 'vlb_bpd'), ('score.html', 'sample_pc'),
                                      ('flow.html', 'straightness'), ('interpolants.html', 'PathChange')])
def test_docs_pages_typeset_maths(page, api, chromium, server, tmp_path):  # noqa: F811 (fixtures imported from test_docs)
    "The docs pages of the four formulation notebooks render their equations (the browser check of tests/test_docs.py)."
    dom, text = load(chromium, server, page, tmp_path)
    assert_typeset(dom, page)
    assert api in text
