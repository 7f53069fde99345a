"Flow and interpolants: exact checks against the oracle, error messages, and the cross-formulation sampling demonstration."
import itertools, math
import pytest
import torch
from diffkit.paths import PATHS, Linear, VPCosine, get_path
from diffkit.toy import OracleDenoiser, eight_gaussians
from diffkit.models.mlp import TimeMLP
from diffkit.training import train
from diffkit.denoiser import Denoiser
from diffkit.objectives import regression_loss
from diffkit.samplers import sample_euler, uniform_grid
from diffkit.metrics import sliced_wasserstein
from diffkit.flow import cfm_loss, fm_loss, ot_couple, sinkhorn, straightness, straight_path, logit_normal_pdf
from diffkit.interpolants import PathChange, sample_sde, sample_ode, two_sided, mirror, velocity_loss, score_loss


def test_exact_assignment_is_optimal():
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        a, b = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
        cost = lambda p: (a - b[list(p)]).pow(2).sum().item()
        best = min(cost(p) for p in itertools.permutations(range(6)))
        assert abs((a - ot_couple(a, b)).pow(2).sum().item() - best) < 1e-5


def test_cfm_minus_fm_is_model_independent():
    # Both losses on one draw; the difference minus C is a zero-mean term: within 4 standard errors for any model.
    gm = eight_gaussians(dtype=torch.float64)
    u = lambda x, t: OracleDenoiser(gm, 'linear').predict(x, t, 'velocity')
    g = torch.Generator().manual_seed(3)
    n = 10000
    x0, x1 = gm.sample(n, generator=g), torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    xt, uc = straight_path(x0, x1, t)
    C = (uc - u(xt, t)).pow(2).sum(1).mean()
    for v in [lambda x, t: torch.tanh(x) * 3, lambda x, t: -x * t[:, None]]:
        diff = 2 * (cfm_loss(v, x0, x1, t) - fm_loss(v, u, x0, x1, t))
        se = (2 * ((uc - u(xt, t)) * (u(xt, t) - v(xt, t))).sum(1)).std() / math.sqrt(n)
        assert abs(diff - C) < 4 * se


def test_pathchange_oracle_exact_all_pairs():
    gm = eight_gaussians(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(128, 2, generator=g, dtype=torch.float64)
    t = torch.rand(128, generator=g, dtype=torch.float64) * 0.96 + 0.02
    for src, dst in itertools.product(PATHS, PATHS):
        lam, ends = get_path(dst).log_snr(t), get_path(src).log_snr(torch.tensor([1., 0.], dtype=torch.float64))
        ok = (lam > ends[0]) & (lam < ends[1])
        got = PathChange(OracleDenoiser(gm, src), src, dst)(x, t)[ok]
        torch.testing.assert_close(got, OracleDenoiser(gm, dst)(x, t)[ok], rtol=1e-6, atol=1e-6)


def test_sde_family_same_marginals_oracle():
    gm = eight_gaussians()
    orc = OracleDenoiser(gm, 'linear')
    g = torch.Generator().manual_seed(0)
    ref = Linear().sample(gm.sample(1500, generator=g), 0.05, generator=g)[0]
    floor = sum(sliced_wasserstein(Linear().sample(gm.sample(1500, generator=g), 0.05, generator=g)[0], ref, generator=torch.Generator().manual_seed(0))
                for _ in range(4)) / 4
    x1 = torch.randn(1500, 2, generator=g)
    for eps in (0., lambda t: t):
        xs = sample_sde(orc, x1, uniform_grid(100, 1., 0.05), eps, generator=torch.Generator().manual_seed(1))
        assert sliced_wasserstein(xs, ref, generator=torch.Generator().manual_seed(0)) < 2 * floor


def test_cross_formulation_sampling_trained():
    "An eps-prediction model trained on VPCosine, moved by PathChange, samples correctly with Euler on Linear."
    torch.manual_seed(0)
    gm = eight_gaussians()
    net, _ = train(TimeMLP(2, 64, 2), lambda m, x, g: regression_loss(m, VPCosine(), x, 'eps', generator=g),
                   lambda n, g: gm.sample(n, generator=g), steps=500, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.99,
                   generator=torch.Generator().manual_seed(0))
    D_vp = Denoiser(net, VPCosine(), 'eps')
    lam = torch.tensor(-4.)
    T_vp, T_lin = VPCosine().t_from_log_snr(lam).item(), Linear().t_from_log_snr(lam).item()
    a, s = VPCosine().alpha(torch.tensor(T_vp)), VPCosine().sigma(torch.tensor(T_vp))
    x_vp = VPCosine().sample(gm.sample(2000, generator=torch.Generator().manual_seed(6)), T_vp, generator=torch.Generator().manual_seed(7))[0]
    native = sample_euler(D_vp, x_vp, uniform_grid(50, T_vp))
    moved = sample_euler(PathChange(D_vp, VPCosine(), Linear()), x_vp / (a + s), uniform_grid(50, T_lin))
    naive = sample_euler(Denoiser(net, Linear(), 'eps'), x_vp / (a + s), uniform_grid(50, T_lin))
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(8))
    sw = lambda x: sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
    floor = sum(sw(gm.sample(2000, generator=torch.Generator().manual_seed(9 + i))) for i in range(4)) / 4
    assert (native - moved).pow(2).sum(1).mean().sqrt() < 0.1
    assert sw(moved) < 1.1 * sw(native) + 0.02 and sw(moved) < 4 * floor and sw(naive) > 2 * sw(moved)


@pytest.mark.parametrize('call,msg', [
    (lambda: ot_couple(torch.zeros(3, 2), torch.zeros(4, 2)), 'like x0'),
    (lambda: ot_couple(torch.zeros(3, 2), torch.zeros(3, 2), 'emd'), "expected 'exact' or 'sinkhorn'"),
    (lambda: sinkhorn(torch.ones(3, 3), reg=0.), 'positive regularisation'),
    (lambda: logit_normal_pdf(torch.tensor([0., 0.5])), 'strictly inside'),
    (lambda: straightness(lambda x, t: x, torch.zeros(2, 2), [0., 1.], Linear()), 'strictly decreasing'),
    (lambda: two_sided(-1.), 'non-negative'),
    (lambda: mirror(0.), 'positive latent'),
    (lambda: sample_ode(lambda x, t: x, torch.zeros(2, 2), [0., 0.5, 0.4]), 'strictly monotone'),
    (lambda: sample_sde(OracleDenoiser(eight_gaussians()), torch.zeros(2, 2), [1., 0.5], lambda t: -1.), 'eps(t) >= 0'),
    (lambda: score_loss(lambda x, t: x, two_sided(1.), torch.zeros(2, 2), torch.zeros(2, 2), latent='eps'), "expected 'z' or 'x1'"),
])
def test_errors(call, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')):
        call()


def test_velocity_loss_is_shifted_mse():
    I = two_sided(0.5, 'trig')
    g = torch.Generator().manual_seed(0)
    x0, x1, z = (torch.randn(64, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(64, generator=g, dtype=torch.float64)
    net = lambda x, t: torch.cos(x) + t[:, None]
    u, b = I.velocity(x0, x1, t, z), net(I.sample(x0, x1, t, z), t)
    torch.testing.assert_close(velocity_loss(net, I, x0, x1, t, z), 0.5 * (b - u).pow(2).sum(1).mean() - 0.5 * u.pow(2).sum(1).mean())
