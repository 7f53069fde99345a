"Schedule search (diffkit.accel.schedules): the issue's must-show on the oracle, teacher forcing for more samplers, the registry."
import json, re
import pytest
import torch
from diffkit.accel.schedules import (FORMAT, LocalError, Reference, TrajectoryError, cached_schedule, evolve_schedule, fixed_grids,
                                     list_schedules, load_schedule, minimize_schedule, sampler_name, save_schedule, schedule_key)
from diffkit import samplers as S, stochastic as ST
from diffkit.paths import get_path
from diffkit.samplers import sample_dpmpp_2m, sample_euler, sample_heun, sample_lms, uniform_grid
from diffkit.stochastic import sample_ddim
from diffkit.toy import OracleDenoiser, eight_gaussians

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def oracle():
    path = get_path('vp')
    model = OracleDenoiser(eight_gaussians(dtype=torch.float64), path)
    g = torch.Generator().manual_seed(5)
    ref = Reference(model, path.prior((256, 2), generator=g, dtype=torch.float64), 150)
    held = Reference(model, path.prior((1024, 2), generator=g, dtype=torch.float64), 150)
    return model, path, ref, held


@pytest.mark.parametrize('sampler', [sample_ddim, sample_euler, sample_dpmpp_2m])
def test_searched_4_steps_beat_best_fixed_grid_by_30pct_on_heldout_noise(oracle, sampler):
    model, path, ref, held = oracle
    fixed = fixed_grids(4, path)
    score = TrajectoryError(model, sampler, ref)
    ts, hist = evolve_schedule(score, 4, seeds=fixed.values(), population=12, generations=8, seed=1)
    assert all(b[1] <= a[1] for a, b in zip(hist, hist[1:]))          # elitism: the best never gets worse
    assert hist[0][1] <= min(score(v) for v in fixed.values())        # the seeds are in the first population
    ts, _ = minimize_schedule(score, ts, iters=80)
    err = TrajectoryError(model, sampler, held)
    best = min(err(v) for v in fixed.values())
    assert err(ts) < 0.7 * best, (sampler.__name__, err(ts), best)


def test_evolution_is_deterministic(oracle):
    model, path, ref, _ = oracle
    score = TrajectoryError(model, sample_euler, ref)
    runs = [evolve_schedule(score, 3, population=6, generations=3, seed=7)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize('sampler', [sample_euler, sample_heun, sample_ddim])
def test_teacher_forcing_equals_one_step_runs(oracle, sampler):
    "A forced step of a one-step method is the method run for one step from the reference state."
    model, path, ref, _ = oracle
    ts = fixed_grids(5, path)['karras']
    per = LocalError(model, sampler, ref)(ts, per_step=True)
    one = [(sampler(model, ref.at(ts[i]), ts[i:i + 2]) - ref.at(ts[i + 1])).pow(2).mean().sqrt().item() for i in range(5)]
    assert per == pytest.approx(one, abs=1e-12)


def test_teacher_forcing_multistep_lms(oracle):
    "LMS keeps eps history from the model's outputs: forcing runs, and its first step (order 1) equals DDIM's."
    model, path, ref, _ = oracle
    ts = uniform_grid(4)
    per = LocalError(model, sample_lms, ref)(ts, per_step=True)
    assert per[0] == pytest.approx(LocalError(model, sample_ddim, ref)(ts, per_step=True)[0], abs=1e-12)
    assert all(e > 0 for e in per)


def test_scores_check_their_inputs(oracle):
    model, path, ref, _ = oracle
    with pytest.raises(TypeError, match='sampler'): TrajectoryError(model, 'euler', ref)
    with pytest.raises(TypeError, match='Reference'): TrajectoryError(model, sample_euler, ref.final)
    with pytest.raises(ValueError, match='like the reference'): TrajectoryError(model, sample_euler, ref)(uniform_grid(4, t_max=0.9))
    with pytest.raises(TypeError, match='GaussianPath'): Reference(lambda x, t: x, ref.noise, 10)


def test_registry_round_trip_and_atomicity(tmp_path):
    f = tmp_path / 'sub' / 's.json'
    ts = torch.tensor([1., 0.7312345678901234, 0.2, 0.], dtype=torch.float64)
    save_schedule('m/euler/nfe3', ts, f, nfe=3)
    assert torch.equal(load_schedule('m/euler/nfe3', f), ts)                  # full float precision
    before = f.read_text()
    with pytest.raises(TypeError, match='JSON'): save_schedule('x', ts, f, bad=object())
    assert f.read_text() == before and sorted(p.name for p in f.parent.iterdir()) == ['s.json']   # no half-written file, no temp file
    with pytest.raises(ValueError, match='search'): cached_schedule('y', lambda: [0., 1.], f)
    assert list(list_schedules(f)) == ['m/euler/nfe3']
    f.write_text('not json')
    with pytest.raises(ValueError, match='not a schedules file'): list_schedules(f)
    assert list_schedules(tmp_path / 'missing.json') == {}


def test_schedule_key_and_names():
    assert schedule_key('digits_unet_s', sample_dpmpp_2m, 6) == 'digits_unet_s/dpmpp_2m/nfe6'
    assert sampler_name(sample_ddim) == 'ddim' and schedule_key('m', 'heun', 7) == 'm/heun/nfe7'
    import functools
    assert sampler_name(functools.partial(sample_ddim, eta=0.)) == 'ddim'
    with pytest.raises(ValueError, match='nfe'): schedule_key('m', 'euler', 0)


def test_shipped_registry_is_valid():
    found = list_schedules()
    assert found, 'diffkit/assets/schedules.json is missing or empty'
    raw = json.loads((__import__('pathlib').Path(S.__file__).parent / 'assets' / 'schedules.json').read_text())
    assert raw['format'] == FORMAT
    known = {k[7:] for m in (S, ST) for k in dir(m) if k.startswith('sample_')}
    for name, info in found.items():
        m = re.fullmatch(r'([a-z0-9_]+)/([a-z0-9_]+)/nfe(\d+)', name)
        assert m and m.group(2) in known and info['sampler'] == m.group(2), name
        ts = load_schedule(name)
        assert len(ts) - 1 == int(m.group(3)) == info['nfe'] and ts[0] == 1 and ts[-1] == 0
    for s in ('ddim', 'euler', 'dpmpp_2m'):
        for n in (4, 6, 8): assert f'digits_unet_s/{s}/nfe{n}' in found
    from diffkit.zoo import zoo_models
    assert 'schedules' not in zoo_models()


def test_shipped_digits_schedule_beats_uniform_on_fresh_noise():
    "The shipped 4-step DPM-Solver++(2M) schedule, on noise no search saw: closer to a 50-step answer than the uniform grid."
    from diffkit.zoo import load_zoo
    model = load_zoo('digits_unet_s')
    g = torch.Generator().manual_seed(1234)
    x, y = torch.randn(24, 1, 16, 16, generator=g), torch.arange(24) % 10
    ref = Reference(model, x, 50, extra_args=dict(y=y))
    err = TrajectoryError(model, sample_dpmpp_2m, ref, extra_args=dict(y=y))
    assert err(load_schedule('digits_unet_s/dpmpp_2m/nfe4')) < 0.85 * err(uniform_grid(4))
