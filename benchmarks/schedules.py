"""Searched sampling schedules against the fixed grids (uniform, Karras, log-SNR), on the exact oracle and on digits.

    PYTHONPATH=. python benchmarks/schedules.py [--quick] [--part all|oracle|digits] [--cache FILE] [--save FILE]

For DDIM (eta = 0), Euler and DPM-Solver++(2M) at 4, 6 and 8 steps, a schedule is searched on one noise batch
(evolutionary search, AutoDiffusion-style, seeded with the three fixed grids, then Nelder-Mead), scored by the RMS
error to a many-step reference from the same noise (`TrajectoryError`). Every figure in the tables comes from a second,
held-out noise batch that no search saw, against that batch's own reference.

* oracle: the exact denoiser of eight Gaussians (`diffkit.toy`) on DDPM's VP path; error = RMS distance to a 200-step
  DPM-Solver++(2M) log-SNR reference (within ~2e-4 of 400 steps). At 4 steps the local-truncation-error bound is also
  minimised (Nelder-Mead on `LocalError`) and reported.
* digits: the zoo's class-conditional UNet (`load_zoo('digits_unet_s')`, rectified flow, unguided, labels 0-9 in
  turn); RMS error to a 60-step reference, and Frechet distance / KID of classifier features against the held-out
  digits (`diffkit.classifier.digits_quality`, 360 samples vs 359 images, beside the data's own floor). On this path
  DDIM and Euler are the same method, so the digits DDIM schedule is the Euler search (checked: the two samplers agree
  to float rounding on it) unless --ddim-search.

Searches are cached by (model, sampler, NFE) in --cache, so an interrupted run resumes; --save writes the digits
schedules (with their search facts) into a registry file, e.g. diffkit/assets/schedules.json.
Single-threaded; wall and CPU seconds are printed (other agents were loading the machine: compare CPU seconds).
"""
import argparse, resource, sys, tempfile, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffkit.accel.schedules import (LocalError, Reference, TrajectoryError, cached_schedule, evolve_schedule,  # noqa: E402
                                     fixed_grids, list_schedules, minimize_schedule, save_schedule, schedule_key)
from diffkit.paths import get_path  # noqa: E402
from diffkit.samplers import sample_dpmpp_2m, sample_euler  # noqa: E402
from diffkit.stochastic import sample_ddim  # noqa: E402
from diffkit.toy import OracleDenoiser, eight_gaussians  # noqa: E402

SAMPLERS = dict(ddim=sample_ddim, euler=sample_euler, dpmpp_2m=sample_dpmpp_2m)


def cpu(): return resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime


def search(score, steps, fixed, budget, log):
    "Evolution seeded with the fixed grids, then Nelder-Mead; returns (grid, search-batch score, facts)."
    pop, gens, nm = budget
    t0, c0 = time.time(), cpu()
    ts, hist = evolve_schedule(score, steps, seeds=fixed.values(), population=pop, generations=gens, parents=min(4, pop // 2))
    ts, val = minimize_schedule(score, ts, iters=nm)
    facts = dict(search=f'evolve_schedule(population={pop}, generations={gens}) + minimize_schedule(iters={nm})',
                 evolution_evaluations=hist[-1][0], search_score=val, wall_s=round(time.time() - t0, 1), cpu_s=round(cpu() - c0, 1))
    log(f"    searched in {facts['wall_s']:.0f} s wall / {facts['cpu_s']:.0f} s CPU: {[round(v, 4) for v in ts.tolist()]}")
    return ts, facts


def oracle_part(args, cache):
    path = get_path('vp')
    model = OracleDenoiser(eight_gaussians(dtype=torch.float64), path)
    n_search, n_held = (256, 2048) if args.quick else (512, 4096)
    budget = (8, 6, 60) if args.quick else (16, 10, 150)
    g = torch.Generator().manual_seed(0)
    ref = Reference(model, path.prior((n_search, 2), generator=g, dtype=torch.float64), 200)
    ref_held = Reference(model, path.prior((n_held, 2), generator=g, dtype=torch.float64), 200)
    print(f"\noracle: eight Gaussians on the VP path; search batch {n_search}, held-out batch {n_held}; RMS error to a 200-step reference")
    rows = {}
    for steps in (4, 6, 8):
        fixed = fixed_grids(steps, path)
        for name, sampler in SAMPLERS.items():
            print(f"  {steps} steps, {name}")
            key = schedule_key('oracle_8gauss_vp', sampler, steps) + ('_quick' if args.quick else '')
            ts = cached_schedule(key, lambda: search(TrajectoryError(model, sampler, ref), steps, fixed, budget, print),
                                 cache, model='oracle_8gauss_vp', sampler=name, nfe=steps)
            held = TrajectoryError(model, sampler, ref_held)
            row = {k: held(v) for k, v in fixed.items()}
            row['searched'] = held(ts)
            if steps == 4:
                lte = LocalError(model, sampler, ref)
                row['bound-min'] = held(minimize_schedule(lte, min(fixed.values(), key=lte), iters=budget[2])[0])
            rows[steps, name] = row
    print(f"\noracle, held-out RMS error ({n_held} samples); ratio = searched / best fixed grid")
    print(f"{'steps':>5} {'sampler':>9}{'uniform':>10}{'karras':>10}{'logsnr':>10}{'searched':>10}{'bound-min':>10}{'ratio':>8}")
    for (steps, name), r in rows.items():
        best = min(r[k] for k in ('uniform', 'karras', 'logsnr'))
        print(f"{steps:5d} {name:>9}" + ''.join(f"{r[k]:10.4f}" for k in ('uniform', 'karras', 'logsnr', 'searched')) +
              (f"{r['bound-min']:10.4f}" if 'bound-min' in r else f"{'':10}") + f"{r['searched'] / best:8.3f}")
    return {f'oracle{s}_{n}': r['searched'] / min(r[k] for k in ('uniform', 'karras', 'logsnr')) for (s, n), r in rows.items()}


def digits_part(args, cache):
    from diffkit.classifier import digits_quality, load_digits_classifier
    from diffkit.zoo import load_zoo
    model, clf = load_zoo('digits_unet_s'), load_digits_classifier()
    path = model.path
    n_search, n_held, ref_steps = (8, 40, 10) if args.smoke else (24, 200, 40) if args.quick else (32, 360, 60)
    budget = (3, 1, 3) if args.smoke else (6, 3, 15) if args.quick else (8, 5, 30)
    g = torch.Generator().manual_seed(10)
    xs, ys = torch.randn(n_search, 1, 16, 16, generator=g), torch.arange(n_search) % 10
    xh, yh = torch.randn(n_held, 1, 16, 16, generator=g), torch.arange(n_held) % 10
    t0, c0 = time.time(), cpu()
    ref = Reference(model, xs, ref_steps, extra_args=dict(y=ys))
    ref_held = Reference(model, xh, ref_steps, extra_args=dict(y=yh))
    print(f"\ndigits: zoo digits_unet_s; search batch {n_search}, held-out batch {n_held}; {ref_steps}-step references "
          f"({time.time() - t0:.0f} s wall / {cpu() - c0:.0f} s CPU)")
    q_ref = digits_quality(ref_held.final.clamp(-1, 1), yh, model=clf, verbose=False)
    print(f"  the {ref_steps}-step reference itself: FD {q_ref['fd']:.2f} (data floor {q_ref['fd_floor']:.2f}), accuracy {100 * q_ref['acc']:.1f}%")
    rows, schedules = {}, {}
    for steps in ((4,) if args.smoke else (4, 6, 8)):
        fixed = fixed_grids(steps, path)
        for name in ('euler', 'ddim', 'dpmpp_2m'):                      # Euler first: DDIM reuses its search
            sampler = SAMPLERS[name]
            print(f"  {steps} steps, {name}")
            key = schedule_key('digits_unet_s', sampler, steps) + ('_smoke' if args.smoke else '_quick' if args.quick else '')
            if name == 'ddim' and not args.ddim_search:
                ts = schedules[steps, 'euler'][0]
                facts = dict(schedules[steps, 'euler'][1], note='the Euler search: DDIM and Euler are the same method on the rectified-flow path')
                gap = (sample_ddim(model, xs, ts, extra_args=dict(y=ys)) - sample_euler(model, xs, ts, extra_args=dict(y=ys))).abs().max().item()
                print(f"    DDIM = Euler on this path: max |difference| on the search batch {gap:.1e}")
                assert gap < 1e-4, gap
            else:
                ts = cached_schedule(key, lambda: search(TrajectoryError(model, sampler, ref, extra_args=dict(y=ys)), steps, fixed, budget, print),
                                     cache, model='digits_unet_s', sampler=name, nfe=steps)
                facts = {k: v for k, v in list_schedules(cache)[key].items() if k not in ('ts', 'model', 'sampler', 'nfe')}
            schedules[steps, name] = (ts, facts)
            row = {}
            for k, v in (fixed | {'searched': ts}).items():
                x = sampler(model, xh, v, extra_args=dict(y=yh))
                q = digits_quality(x.clamp(-1, 1), yh, model=clf, verbose=False)
                row[k] = dict(rmse=(x - ref_held.final).pow(2).mean().sqrt().item(), fd=q['fd'], kid=q['kid'], acc=q['acc'])
            rows[steps, name] = row
    print(f"\ndigits, held-out ({n_held} samples): RMS error to the {ref_steps}-step reference | Frechet distance (KID x 1e3); "
          f"reference FD {q_ref['fd']:.2f}, data floor {q_ref['fd_floor']:.2f}")
    names = ('uniform', 'karras', 'logsnr', 'searched')
    print(f"{'steps':>5} {'sampler':>9}" + ''.join(f"{k:>10}" for k in names) + f"{'ratio':>7} |" + ''.join(f"{k:>15}" for k in names) + f"{'ratio':>7}")
    res = {}
    for (steps, name), r in rows.items():
        br = min(r[k]['rmse'] for k in names[:3]); bf = min(r[k]['fd'] for k in names[:3])
        print(f"{steps:5d} {name:>9}" + ''.join(f"{r[k]['rmse']:10.4f}" for k in names) + f"{r['searched']['rmse'] / br:7.3f} |" +
              ''.join(f"{r[k]['fd']:7.2f} ({1e3 * r[k]['kid']:5.1f})" for k in names) + f"{r['searched']['fd'] / bf:7.3f}")
        res[f'digits{steps}_{name}_rmse'], res[f'digits{steps}_{name}_fd'] = r['searched']['rmse'] / br, r['searched']['fd'] / bf
    if args.save:
        for (steps, name), (ts, facts) in schedules.items():
            r = rows[steps, name]
            save_schedule(schedule_key('digits_unet_s', name, steps), ts, args.save, model='digits_unet_s', sampler=name, nfe=steps,
                          proxy=f'TrajectoryError vs a {ref_steps}-step DPM-Solver++(2M) reference, {n_search} search samples',
                          heldout_rmse=round(r['searched']['rmse'], 5), heldout_rmse_best_fixed=round(min(r[k]['rmse'] for k in names[:3]), 5),
                          heldout_fd=round(r['searched']['fd'], 3), heldout_fd_best_fixed=round(min(r[k]['fd'] for k in names[:3]), 3),
                          command='python benchmarks/schedules.py --part digits --save diffkit/assets/schedules.json', **facts)
        print(f"saved {len(schedules)} digits schedules to {args.save}")
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='smaller batches and search budgets')
    ap.add_argument('--smoke', action='store_true', help='digits only, tiny sizes: checks that the script runs, measures nothing')
    ap.add_argument('--part', default='all', choices=('all', 'oracle', 'digits'))
    ap.add_argument('--cache', default=str(Path(tempfile.gettempdir()) / 'diffkit_schedules_cache.json'),
                    help='searched schedules by (model, sampler, NFE); a rerun resumes from it')
    ap.add_argument('--save', default=None, help='registry file to write the digits schedules into')
    ap.add_argument('--ddim-search', action='store_true', help='search DDIM on digits too instead of reusing the Euler search')
    args = ap.parse_args()
    torch.manual_seed(0); torch.set_num_threads(1)
    t0, c0 = time.time(), cpu()
    res = {}
    if args.part in ('all', 'oracle'): res |= oracle_part(args, args.cache)
    if args.part in ('all', 'digits'): res |= digits_part(args, args.cache)
    print(f"\ntotal {time.time() - t0:.0f} s wall, {cpu() - c0:.0f} s CPU (single thread; other agents were loading the machine)")
    print('RESULT ' + ' '.join(f'{k}={v:.3f}' for k, v in res.items()))
