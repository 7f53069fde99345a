"Training loop: exact resume, atomic and verified checkpoints, objectives' weightings and time densities, NaN guard, AMP, callbacks."
import json, math
import pytest
import torch
from torch import nn
from diffkit import checkpoint as ck
from diffkit.checkpoint import CheckpointError, load_checkpoint
from diffkit.models.mlp import TimeMLP
from diffkit.objectives import TIME_DENSITIES, drop_labels, loss_weight, regression_loss, sample_t
from diffkit.paths import EDM, Linear, VPCosine, VPLinear
from diffkit.training import ProgressBar, SampleGrid, StopTraining, Trainer, latest_checkpoint, train


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: threads only add synchronisation overhead on a shared 2-core machine
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DATA = torch.randn(400, 2, generator=torch.Generator().manual_seed(9)) * 0.7 + 0.5


def make(tmp, steps=16, seed=0, data=DATA, **kw):
    "A trainer whose randomness all flows from `seed` (model init via the global seed, data/t/eps via the generator)."
    torch.manual_seed(seed)
    net = TimeMLP(dim=2, width=32, depth=2)
    path = VPCosine()
    loss = lambda m, x0, g: regression_loss(m, path, x0, 'eps', generator=g, density='logit_normal', weighting='min_snr')
    return Trainer(net, loss, data, steps=steps, batch_size=32, lr=3e-3, warmup=3, ema_decay=0.9,
                   generator=torch.Generator().manual_seed(seed), checkpoint_dir=tmp, checkpoint_every=4, **kw)


def crash_at(k):
    def cb(tr):
        if tr.step == k: raise RuntimeError(f'simulated crash at step {k}')
    return cb


def states_equal(a: Trainer, b: Trainer):
    for x, y in ((a.model, b.model), (a.ema.model, b.ema.model)):
        sa, sb = x.state_dict(), y.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa: assert torch.equal(sa[k], sb[k]), k
    oa, ob = a.opt.state_dict()['state'], b.opt.state_dict()['state']
    for i in oa:
        for k in oa[i]: assert torch.equal(oa[i][k], ob[i][k]), (i, k)
    assert a.losses == b.losses
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


@pytest.mark.parametrize('data', [DATA, lambda n, g: torch.randn(n, 2, generator=g) + 1], ids=['tensor', 'function'])
def test_exact_resume(tmp_path, data):
    ref = make(tmp_path / 'ref', data=data); ref.fit()
    run = make(tmp_path / 'run', data=data, callbacks=[crash_at(10)])
    with pytest.raises(RuntimeError, match='simulated crash at step 10'): run.fit()
    assert latest_checkpoint(tmp_path / 'run').name == 'step_0000008'
    # fresh process state: another seed for the model init and the generator; the checkpoint must override both
    res = make(tmp_path / 'run', seed=123, data=data)
    assert not torch.equal(res.model.inp.weight, ref.model.inp.weight)
    torch.rand(7); res.fit(resume=True)
    assert res.step == 16 and len(res.losses) == 16
    states_equal(ref, res)


def test_resume_twice_and_without_checkpoint(tmp_path):
    ref = make(tmp_path / 'ref'); ref.fit()
    for k in (5, 13):   # crash twice; the second run resumes from step 4 and crashes again
        with pytest.raises(RuntimeError): make(tmp_path / 'run', callbacks=[crash_at(k)]).fit(resume=True)
    res = make(tmp_path / 'run', seed=7); res.fit(resume=True)
    states_equal(ref, res)
    fresh = make(tmp_path / 'empty'); fresh.fit(resume=True)   # nothing to resume from: a fresh run
    states_equal(ref, fresh)


def test_resume_with_other_settings_is_refused(tmp_path):
    make(tmp_path, steps=8).fit()
    with pytest.raises(ValueError, match="other settings.*'steps': \\(8, 12\\)"):
        make(tmp_path, steps=12).fit(resume=True)


def test_atomic_checkpoint_write(tmp_path, monkeypatch):
    ref = make(tmp_path / 'ref'); ref.fit()
    run = make(tmp_path / 'run')
    real_replace, calls = ck.os.replace, []
    def flaky_replace(src, dst):   # the write of the step-8 checkpoint dies before its rename
        calls.append(dst)
        if 'step_0000008' in str(dst): raise OSError('simulated power cut during the write')
        return real_replace(src, dst)
    monkeypatch.setattr(ck.os, 'replace', flaky_replace)
    with pytest.raises(OSError, match='simulated power cut'): run.fit()
    monkeypatch.setattr(ck.os, 'replace', real_replace)
    d = tmp_path / 'run'
    assert sorted(p.name for p in d.iterdir()) == ['latest.json', 'step_0000004.json', 'step_0000004.safetensors']  # no temp files
    assert latest_checkpoint(d).name == 'step_0000004'
    state, cfg = load_checkpoint(d / 'step_0000004')   # the old checkpoint is intact
    assert state['step'] == 4 and cfg['steps'] == 16
    res = make(d, seed=5); res.fit(resume=True)
    states_equal(ref, res)


def test_tampered_or_truncated_checkpoint(tmp_path):
    make(tmp_path, steps=4).fit()
    prefix = tmp_path / 'step_0000004'
    st, js = prefix.with_suffix('.safetensors'), prefix.with_suffix('.json')
    blob, meta = st.read_bytes(), js.read_text()
    st.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match='truncated'): make(tmp_path, steps=4).fit(resume=True)
    for pos in (20, len(blob) // 2, len(blob) - 3):   # header, middle of the tensors, the last bytes
        bad = bytearray(blob); bad[pos] ^= 0x10; st.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match='sha256 mismatch'): load_checkpoint(prefix)
    st.write_bytes(blob)
    m = json.loads(meta); m['config']['lr'] = 1.0; js.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match='JSON itself'): load_checkpoint(prefix)
    js.write_text(meta[: len(meta) // 2])
    with pytest.raises(CheckpointError, match='corrupt JSON'): load_checkpoint(prefix)
    js.write_text(meta)
    assert load_checkpoint(prefix)[0]['step'] == 4


def test_loading_never_unpickles(tmp_path, monkeypatch):
    make(tmp_path, steps=4).fit()
    import pickle
    def boom(*a, **k): raise AssertionError('unpickling attempted')
    monkeypatch.setattr(pickle, 'loads', boom); monkeypatch.setattr(pickle, 'load', boom)
    monkeypatch.setattr(torch, 'load', boom)
    make(tmp_path, steps=4).fit(resume=True)


def test_nan_guard_names_the_step():
    calls = []
    def loss(m, x, g):
        calls.append(1); out = m(x).pow(2).mean()
        return out * float('nan') if len(calls) == 6 else out
    with pytest.raises(FloatingPointError, match='loss is nan at step 5'):
        train(nn.Linear(2, 2), loss, DATA, steps=10, batch_size=8, generator=torch.Generator().manual_seed(0))


def test_stop_training_and_callbacks(tmp_path):
    import io
    out, seen = io.StringIO(), []
    def stop(tr):
        seen.append(tr.step)
        if tr.step == 6: raise StopTraining
    grid = SampleGrid(lambda m, step: torch.rand(4, 1, 5, 5) * 2 - 1, every=3, folder=tmp_path)
    tr = make(None, steps=10, callbacks=[ProgressBar(every=2, stream=out), grid, stop])
    tr.checkpoint_dir = None
    model, losses = tr.fit()
    assert seen == [1, 2, 3, 4, 5, 6] and len(losses) == 6 and not model.training
    assert '6/10' in out.getvalue().split('\r')[-1] and 'it/s' in out.getvalue()
    assert [p.name for p in grid.saved] == ['samples_0000003.png', 'samples_0000006.png']
    assert grid.saved[0].stat().st_size > 50
    with pytest.raises(TypeError, match='expected Callback instances or functions'): make(None, callbacks=[3])


@pytest.mark.parametrize('precision', ['bf16', 'fp16', 'auto'])
def test_mixed_precision_cpu(precision):
    # autocast runs (or falls back to fp32 with a warning) and learns a linear map about as well as fp32
    W = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    def fit(prec):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 64), nn.SiLU(), nn.Linear(64, 4))
        mse = lambda m, x, g: (m(x).float() - x @ W).pow(2).mean()
        _, ls = train(net, mse, lambda n, g: torch.randn(n, 4, generator=g), steps=150, batch_size=64, lr=1e-2, warmup=5,
                      ema_decay=None, generator=torch.Generator().manual_seed(0), precision=prec)
        return ls
    ls, ref = fit(precision), fit('fp32')
    assert all(math.isfinite(v) for v in ls)
    assert sum(ls[-10:]) < 0.05 * sum(ls[:10]), (ls[:10], ls[-10:])
    assert sum(ls[-10:]) < 3 * sum(ref[-10:]) + 0.05 * sum(ref[:10]), (ls[-10:], ref[-10:])


def test_train_backward_compatible():
    # the call cli.demo makes: positional model, loss, data; keyword steps/batch_size/lr/warmup/ema_decay/generator/log_every
    torch.manual_seed(0)
    net = TimeMLP(dim=2, width=16, depth=1)
    loss = lambda m, x0, gen: regression_loss(m, Linear(), x0, 'velocity', generator=gen)
    model, losses = train(net, loss, lambda n, g: torch.randn(n, 2, generator=g), steps=5, batch_size=16, lr=1e-3,
                          warmup=2, ema_decay=0.999, generator=torch.Generator().manual_seed(0), log_every=0)
    assert isinstance(model, nn.Module) and len(losses) == 5 and model is not net


# ---- objectives: time densities against their CDFs, weightings against closed forms --------------------------------

def _ks(x, cdf):
    x = x.double().sort().values; n = len(x); F = cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - F).max().item(), (F - (i - 1) / n).max().item())


_Phi = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))
_CDF = {'uniform': lambda t, p: t,
        'logit_normal': lambda t, p: _Phi(torch.logit(t.clamp(1e-12, 1 - 1e-12))),
        'u_shaped': lambda t, p: 0.5 + torch.sinh(4 * (t - 0.5)) / (2 * math.sinh(2)),
        'lognormal': lambda t, p: _Phi((-p.log_snr(t.clamp(1e-9, 1 - 1e-9)) / 2 + 1.2) / 1.2)}


@pytest.mark.parametrize('density', TIME_DENSITIES)
@pytest.mark.parametrize('path', [Linear(), VPLinear(), EDM()], ids=['linear', 'vp', 'edm'])
def test_time_density_matches_cdf(density, path):
    # Kolmogorov-Smirnov at n = 40 000: the 0.1% critical value is 1.95 / sqrt(n) ~ 0.0098
    n = 40_000
    t = sample_t(n, density, torch.Generator().manual_seed(2), path=path)
    assert 0 <= t.min() and t.max() <= 1
    assert _ks(t, lambda u: _CDF[density](u, path)) < 1.95 / math.sqrt(n)
    other = 'uniform' if density != 'uniform' else 'u_shaped'   # the check has power: a wrong CDF fails
    assert _ks(t, lambda u: _CDF[other](u, path)) > 3 * 1.95 / math.sqrt(n)


def test_weightings_closed_forms():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    for path in (VPCosine(), VPLinear()):
        snr = (path.alpha(t) / path.sigma(t)) ** 2
        for g in (1., 5.):
            torch.testing.assert_close(loss_weight(t, path, 'eps', 'min_snr', gamma=g), snr.clamp(max=g) / snr)
            torch.testing.assert_close(loss_weight(t, path, 'x0', 'min_snr', gamma=g), snr.clamp(max=g))
            torch.testing.assert_close(loss_weight(t, path, 'v', 'min_snr', gamma=g), snr.clamp(max=g) / (snr + 1))
        torch.testing.assert_close(loss_weight(t, path, 'eps', 'snr'), torch.ones_like(t))
        torch.testing.assert_close(loss_weight(t, path, 'x0', 'snr'), snr)
    edm = EDM(); s = edm.sigma(t)
    for sd in (0.5, 1.0):
        torch.testing.assert_close(loss_weight(t, edm, 'x0', 'edm', sigma_data=sd), (s ** 2 + sd ** 2) / (s * sd) ** 2)
        # on an alpha = 1 path the eps error is the x0 error divided by sigma: weight lambda(sigma) * sigma^2
        torch.testing.assert_close(loss_weight(t, edm, 'eps', 'edm', sigma_data=sd), (s ** 2 + sd ** 2) / sd ** 2)
    lin = Linear()
    torch.testing.assert_close(loss_weight(t, lin, 'velocity', 'uniform'), torch.ones_like(t))
    with pytest.raises(ValueError, match='unknown weighting'): loss_weight(t, lin, 'eps', 'p2')


def test_weighted_loss_is_a_weighted_mean():
    # regression_loss with a weighting equals the hand-written weighted mean of per-example errors
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(32, 3, generator=g), torch.randn(32, 3, generator=g), torch.rand(32, generator=g) * 0.9 + 0.05
    path, net = VPCosine(), (lambda x, t: 0.5 * x)
    got = regression_loss(net, path, x0, 'v', t, eps, weighting='min_snr', gamma=3.)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    xt, v = a * x0 + s * eps, a * eps - s * x0
    snr = (a / s).squeeze(1) ** 2
    want = (snr.clamp(max=3.) / (snr + 1) * (0.5 * xt - v).pow(2).mean(1)).mean()
    torch.testing.assert_close(got, want)


def test_drop_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (50_000,), generator=g)
    for p in (0.1, 0.5):
        frac = (drop_labels(y, p, 10, g) == 10).double().mean().item()
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / len(y)), (p, frac)
    with pytest.raises(ValueError, match='probability'): drop_labels(y, 1.5, 10)


def test_posthoc_ema_reconstructs_untracked_widths_and_steps():
    from diffkit.training import PostHocEMA, PowerEMA, sigma_rel_to_gamma
    m = nn.Linear(1, 1, bias=False)
    cb = PostHocEMA(every=50)
    fake = type('T', (), dict(step=0, steps=1000, model=m))()
    cb.before_fit(fake)
    direct = {s: PowerEMA(m, sigma_rel_to_gamma(s)) for s in (0.06, 0.09)}
    at600 = {}
    for k in range(1, 1001):
        with torch.no_grad(): m.weight.fill_(math.cos(k / 70) + k / 800)
        fake.step = k; cb.after_step(fake)
        for e in direct.values(): e.update(m)
        if k == 600: at600 = {s: e.model.weight.item() for s, e in direct.items()}
    gap = abs(cb.emas[0].model.weight.item() - cb.emas[1].model.weight.item())
    assert gap > 0.04   # the widths differ measurably; the reconstructions must land within 2% of that gap
    for s, e in direct.items():
        assert abs(cb.reconstruct(s).weight.item() - e.model.weight.item()) < 0.02 * gap
        assert abs(cb.reconstruct(s, step=600).weight.item() - at600[s]) < 0.02 * gap
    with pytest.raises(ValueError, match='sigma_rel'): sigma_rel_to_gamma(0.5)
