"Caching wrappers (diffkit.accel.cache, cache_search): identical outputs when every call computes, per-run state, CFG, training, errors."
import pytest
import torch
from torch import nn

from diffkit.accel.cache import (AdaptiveCache, CachedDenoiser, DeepCache, DeltaDiT, FORA, GatedTaylorSeer,
                                 TaylorSeer, nonuniform_steps)
from diffkit.accel.cache_search import dp_schedule, local_segments, search_schedule
from diffkit.denoiser import Denoiser
from diffkit.guidance import CFG
from diffkit.models.dit import DiT
from diffkit.models.unet import UNet, ResBlock, AttnBlock
from diffkit import samplers as S, stochastic as ST

torch.set_num_threads(1)


def _perturbed(net):
    "Break the zero-inits so every block contributes (a random but non-trivial network)."
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ResBlock): nn.init.normal_(m.conv2.weight, std=0.05)
            if isinstance(m, AttnBlock): nn.init.normal_(m.attn.proj.weight, std=0.05)
            if hasattr(m, 'adaLN_modulation'): nn.init.normal_(m.adaLN_modulation[-1].weight, std=0.05)
        if isinstance(net, UNet): nn.init.normal_(net.out[-1].weight, std=0.05)
        else: nn.init.normal_(net.final_layer.linear.weight, std=0.05)
    return net.eval()


@pytest.fixture(scope='module')
def unet():
    torch.manual_seed(0)
    return Denoiser(_perturbed(UNet(channels=(16, 32), num_blocks=1, attn_levels=(1,), num_classes=10)))


@pytest.fixture(scope='module')
def dit():
    torch.manual_seed(0)
    return Denoiser(_perturbed(DiT(input_size=8, hidden_size=32, depth=4, num_heads=2, num_classes=10)))


X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([1, 4, 7])
TS = S.uniform_grid(6)

SAMPLERS = {
    'euler': S.sample_euler, 'heun': S.sample_heun, 'dpmpp_2m': S.sample_dpmpp_2m, 'dpmpp_3m': S.sample_dpmpp_3m,
    'unipc': S.sample_unipc, 'lms': S.sample_lms, 'ipndm': S.sample_ipndm, 'rf_solver': S.sample_rf_solver,
    'ddim': ST.sample_ddim,
    'ddpm': lambda m, x, ts, **kw: ST.sample_ddpm(m, x, ts, generator=torch.Generator().manual_seed(0), **kw),
}
EVERY_CALL = [DeepCache(interval=1), FORA(interval=1), TaylorSeer(order=2, interval=1), GatedTaylorSeer(threshold=0., warmup=0),
              AdaptiveCache(threshold=0.), DeltaDiT(interval=1), FORA(steps=range(50))]


@pytest.mark.parametrize('name', SAMPLERS)
def test_recompute_every_call_is_identical(unet, dit, name):
    sampler = SAMPLERS[name]
    with torch.no_grad():
        for D in (unet, dit):
            ref = sampler(D, X, TS, extra_args=dict(y=Y))
            for pol in EVERY_CALL:
                if isinstance(pol, DeltaDiT) and D is unet: continue
                C = CachedDenoiser(D, pol)
                out = sampler(C, X, TS, extra_args=dict(y=Y))
                assert torch.equal(out, ref), (name, pol)
                assert C.full_fraction == 1.


def test_caching_skips_the_deep_part(unet, dit):
    calls = []
    h = unet.net.middle_block.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            C = CachedDenoiser(unet, DeepCache(interval=3))
            out = S.sample_euler(C, X, S.uniform_grid(9), extra_args=dict(y=Y))
    finally: h.remove()
    assert len(calls) == 3 and C.computed == [True, False, False] * 3
    ref = S.sample_euler(unet, X, S.uniform_grid(9), extra_args=dict(y=Y))
    assert 0 < (out - ref).abs().max() < 0.5
    blocks = []
    hs = [b.register_forward_hook(lambda *a: blocks.append(1)) for b in dit.net.blocks]
    try:
        with torch.no_grad(): S.sample_euler(CachedDenoiser(dit, FORA(interval=2, start=1)), X, S.uniform_grid(6), extra_args=dict(y=Y))
    finally:
        for h in hs: h.remove()
    assert len(blocks) == 6 + 3 * 3        # block 0 on all 6 calls, blocks 1-3 on the 3 full calls


def test_runs_reset_themselves(unet):
    with torch.no_grad():
        C = CachedDenoiser(unet, TaylorSeer(interval=3))
        a = S.sample_dpmpp_2m(C, X, TS, extra_args=dict(y=Y))
        b = S.sample_dpmpp_2m(C, X, TS, extra_args=dict(y=Y))            # time goes back up: a new run
        assert torch.equal(a, b)
        x2 = torch.randn_like(X)
        c = S.sample_dpmpp_2m(C, x2, TS, extra_args=dict(y=Y))
        assert torch.equal(c, S.sample_dpmpp_2m(CachedDenoiser(unet, TaylorSeer(interval=3)), x2, TS, extra_args=dict(y=Y)))
        # a one-step grid twice in a row: the second run starts at the same time and must not reuse the first one's features
        one = S.uniform_grid(1, t_min=0.3)
        C1 = CachedDenoiser(unet, DeepCache(interval=5))
        S.sample_euler(C1, X, one, extra_args=dict(y=Y))
        assert torch.equal(S.sample_euler(C1, x2, one, extra_args=dict(y=Y)), S.sample_euler(unet, x2, one, extra_args=dict(y=Y)))
        # Heun calls t_{i+1} twice within one run: no reset there
        C2 = CachedDenoiser(unet, DeepCache(interval=100))
        S.sample_heun(C2, X, TS, extra_args=dict(y=Y))
        assert C2.calls == 11 and sum(C2.computed) == 1
        # explicit resets when automatic detection is off; a partial run followed by a run that starts lower
        C3 = CachedDenoiser(unet, DeepCache(interval=100), auto_reset=False)
        with C3: S.sample_euler(C3, X, S.uniform_grid(3, t_max=0.9, t_min=0.5), extra_args=dict(y=Y))
        assert C3.calls == 0
        with C3: d = S.sample_euler(C3, x2, S.uniform_grid(3, t_max=0.4), extra_args=dict(y=Y))
        assert torch.equal(d, S.sample_euler(CachedDenoiser(unet, DeepCache(interval=100)), x2, S.uniform_grid(3, t_max=0.4), extra_args=dict(y=Y)))
        # churn raises t within a run: the wrapper resets there, which costs speed but not correctness
        C4 = CachedDenoiser(unet, DeepCache(interval=1))
        ch = lambda m: S.sample_heun(m, X, S.uniform_grid(6, t_max=0.9), extra_args=dict(y=Y), s_churn=2.,
                                     generator=torch.Generator().manual_seed(0))
        assert torch.equal(ch(C4), ch(unet))


def test_policies_are_stateless(unet):
    pol = GatedTaylorSeer(threshold=0.5)
    with torch.no_grad():
        a = S.sample_euler(CachedDenoiser(unet, pol), X, TS, extra_args=dict(y=Y))
        C = CachedDenoiser(unet, pol)
        S.sample_euler(C, torch.randn_like(X), TS, extra_args=dict(y=Y))
        assert torch.equal(S.sample_euler(C, X, TS, extra_args=dict(y=Y)), a)


def test_cfg_both_orders_and_guidance_interval(unet):
    with torch.no_grad():
        inner = S.sample_dpmpp_2m(CFG(CachedDenoiser(unet, DeepCache(interval=2)), 2., {'y': 10}), X, TS, extra_args=dict(y=Y))
        outer = S.sample_dpmpp_2m(CachedDenoiser(CFG(unet, 2., {'y': 10}), DeepCache(interval=2)), X, TS, extra_args=dict(y=Y))
        assert torch.equal(inner, outer)
        # a guidance interval switches the batch between B and 2B: kept features are only used on their own batch shape
        C = CachedDenoiser(unet, DeepCache(interval=1))
        g = CFG(C, 2., {'y': 10}, interval=(0.25, 0.75))
        ref = S.sample_euler(CFG(unet, 2., {'y': 10}, interval=(0.25, 0.75)), X, S.uniform_grid(10), extra_args=dict(y=Y))
        assert torch.equal(S.sample_euler(g, X, S.uniform_grid(10), extra_args=dict(y=Y)), ref)
        C = CachedDenoiser(unet, DeepCache(interval=4))
        out = S.sample_euler(CFG(C, 2., {'y': 10}, interval=(0.25, 0.75)), X, S.uniform_grid(10), extra_args=dict(y=Y))
        # calls at t = 1, .9, ..., .1: batch 2B inside [0.25, 0.75]; each switch of batch shape computes afresh
        assert C.computed == [True, False, False, True, False, False, False, True, True, False] and out.isfinite().all()


def test_training_is_unaffected(unet):
    net = UNet(channels=(16, 32), num_blocks=1, attn_levels=(1,), num_classes=10)
    D = Denoiser(_perturbed(net))
    C = CachedDenoiser(D, DeepCache(interval=3))
    net.train()
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    C(x, t, y=Y[:2]).pow(2).mean().backward()
    g1 = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    D(x, t, y=Y[:2]).pow(2).mean().backward()
    assert all(torch.equal(a, b.grad) for a, b in zip(g1, net.parameters()))
    assert C.calls == 0 and not C.tracks


class LinearFeature(nn.Module):
    "A backbone whose cached span is exactly linear in t: first-order forecasting is exact, reuse is not."
    def forward(self, x, t, cache=None):
        f = lambda h: h + (1 + 2 * t[:, None, None, None]) * torch.ones_like(h)
        if cache is None: return f(x)
        a, b = cache.span(3)
        return cache(x, f, residual=True)


def test_custom_backbone_and_taylor_exactness():
    D = Denoiser(LinearFeature(), 'linear', 'x0')
    ts = S.get_grid('karras', 9, path=D.path, t_max=0.95)          # calls 0, 1, 4, 7 compute; call 8 forecasts
    with torch.no_grad():
        ref = S.sample_euler(D, X, ts)
        ts_out = S.sample_euler(CachedDenoiser(D, TaylorSeer(interval=3, warmup=2)), X, ts)   # two full calls give the slope
        fora = S.sample_euler(CachedDenoiser(D, FORA(interval=3, warmup=2)), X, ts)
    torch.testing.assert_close(ts_out, ref, atol=1e-5, rtol=1e-5)
    assert (fora - ref).abs().max() > 1e-2


def test_gated_and_adaptive_decide_from_the_span_input(dit):
    with torch.no_grad():
        C = CachedDenoiser(dit, GatedTaylorSeer(threshold=float('inf'), max_skip=2, warmup=2))
        S.sample_euler(C, X, S.uniform_grid(11), extra_args=dict(y=Y))
        assert C.computed == [True, True, False, False, True, False, False, True, False, False, True]
        C = CachedDenoiser(dit, AdaptiveCache(threshold=float('inf'), max_skip=3))
        S.sample_euler(C, X, S.uniform_grid(9), extra_args=dict(y=Y))
        assert C.computed == [True, False, False, False, True, False, False, False, True]
        C = CachedDenoiser(dit, AdaptiveCache(threshold=0.05))
        S.sample_euler(C, X, S.uniform_grid(10), extra_args=dict(y=Y))
        assert 0.2 < C.full_fraction < 1


def test_errors(unet, dit):
    with pytest.raises(ValueError, match='cache span'):
        with torch.no_grad(): CachedDenoiser(unet, DeltaDiT(interval=2))(X, torch.full((3,), 0.2), y=Y)
    with pytest.raises(ValueError, match='cache span'):
        with torch.no_grad(): CachedDenoiser(dit, FORA(start=3, stop=2))(X, 0.5, y=Y)
    with pytest.raises(ValueError, match='interval'): DeepCache(interval=0)
    with pytest.raises(ValueError, match='order'): TaylorSeer(order=-1)
    with pytest.raises(ValueError, match='steps'): FORA(steps=())
    with pytest.raises(ValueError, match='boundary'): DeltaDiT(boundary=2.)
    with pytest.raises(ValueError, match='threshold'): AdaptiveCache(threshold=-1.)
    with pytest.raises(TypeError, match='CachePolicy'): CachedDenoiser(unet, None)
    with pytest.raises(TypeError, match='cache='): CachedDenoiser(Denoiser(nn.Conv2d(1, 1, 1)), DeepCache())
    with pytest.raises(ValueError, match='full'): nonuniform_steps(10, 11)
    with pytest.raises(TypeError, match='steps'): search_schedule(unet, DeltaDiT(), S.sample_euler, X, TS, 2, extra_args=dict(y=Y))
    with pytest.raises(ValueError, match='budget'): search_schedule(unet, DeepCache(), S.sample_euler, X, TS, 7, extra_args=dict(y=Y))
    with pytest.raises(ValueError, match='method'): search_schedule(unet, DeepCache(), S.sample_euler, X, TS, 2, method='x')


def test_search(unet, dit):
    ts = S.uniform_grid(7)
    with torch.no_grad():
        for D, pol in ((unet, DeepCache()), (dit, TaylorSeer())):
            ref = S.sample_dpmpp_2m(D, X, ts, extra_args=dict(y=Y))
            err = lambda p: (S.sample_dpmpp_2m(CachedDenoiser(D, p), X, ts, extra_args=dict(y=Y)) - ref).pow(2).mean().item()
            gi, di = {}, {}
            greedy = search_schedule(D, pol, S.sample_dpmpp_2m, X, ts, 3, extra_args=dict(y=Y), method='greedy', info=gi)
            dp = search_schedule(D, pol, S.sample_dpmpp_2m, X, ts, 3, extra_args=dict(y=Y), info=di)
            assert type(dp) is type(pol) and len(greedy.steps) == len(dp.steps) == 3 and greedy.steps[0] == dp.steps[0] == 0
            assert len(gi['trace']) == 4 and abs(gi['trace'][-1] - err(greedy)) <= 1e-6 * max(1., err(greedy))
            C = di['costs']
            cost = lambda s: sum(C[a, b].item() for a, b in zip(s, list(s[1:]) + [7]))
            assert cost(dp.steps) <= cost((0, 3, 5)) + 1e-15       # the DP is optimal for its own segment costs
            local = search_schedule(D, pol, S.sample_dpmpp_2m, X, ts, 3, extra_args=dict(y=Y), method='dp_local')
            assert len(local.steps) == 3


def test_dp_matches_brute_force():
    from itertools import combinations
    g = torch.Generator().manual_seed(0)
    for n, K in ((9, 3), (10, 4), (8, 2)):
        R = torch.rand(n, n, generator=g, dtype=torch.float64).triu(1)
        R[0, 5:] = float('inf')                                            # some reuses not allowed
        def cost(s):
            return sum(R[a, k].item() for a, b in zip(s, list(s[1:]) + [n]) for k in range(a + 1, b))
        best = min(((0,) + c for c in combinations(range(1, n), K - 1)), key=cost)
        assert abs(cost(dp_schedule(local_segments(R), K)) - cost(best)) < 1e-9
