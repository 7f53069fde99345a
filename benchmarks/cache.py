"""Training-free caching on the zoo's digits UNet and DiT: wall-clock speed-up and quality of every method, against the
same sampler with fewer steps (the baseline that needs no machinery), in one run.

    PYTHONPATH=. python benchmarks/cache.py [--quick] [--models unet,dit] [--n 360] [--batch 60] [--steps 20] [--sampler dpmpp_2m]

Every configuration of a model samples the same n class-conditional digits (labels 0..9 cycling, noise seeded per
chunk) in chunks of `batch`. The configurations run interleaved chunk by chunk (A, B, C, ..., A, B, C, ...) on one
thread, so a shared machine's load falls on all of them alike; speed-up = median over chunks of (uncached time /
configuration time) on the same chunk. Quality: the Frechet distance (and KID) of a held-out digits classifier's
features against the held-out digits (diffkit.classifier.digits_quality; the train-vs-held-out floor is printed), and
the per-sample RMSE to the uncached samples from the same noise. "fewer steps @ same speed" interpolates the
fewer-steps baseline's FD and RMSE at the configuration's speed-up: a method is only worth its machinery where it
beats that. DeepCache rows print the shallow share (FLOPs of a call that reuses the deep features / a full call),
which caps DeepCache's speed-up at 1 / share (DESIGN.md, section 7). Searched schedules come from a separate
calibration batch (16 digits, other noise).
Ends with one line: RESULT unet_share=... unet_deepcache_speedup=... unet_deepcache_fd_ratio=... dit_taylorseer_speedup=...
"""
import argparse, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffkit.accel.cache import (AdaptiveCache, CachedDenoiser, DeepCache, DeltaDiT, FORA, GatedTaylorSeer,  # noqa: E402
                                 TaylorSeer, nonuniform_steps, skip_share)
from diffkit.accel.cache_search import dp_schedule, search_schedule  # noqa: E402
from diffkit.classifier import digits_quality, load_digits_classifier  # noqa: E402
from diffkit import samplers as S  # noqa: E402
from diffkit.zoo import load_zoo  # noqa: E402


def configs(kind, D, steps, sampler, quick):
    "(name, model or None for the uncached model, grid steps) per configuration."
    fewer = (10, 7) if quick else (15, 12, 10, 8, 6)
    rows = [('uncached', None, steps)] + [(f'{s} steps', None, s) for s in fewer]
    g = torch.Generator().manual_seed(123)
    xc, yc = torch.randn(16, 1, 16, 16, generator=g), torch.arange(16) % 10
    K = -(-steps // 3)                                            # the budget of interval 3
    info = {}
    if not quick:                                                 # one search: the reuse costs serve every budget and both FORA and TaylorSeer
        search_schedule(D, DeepCache() if kind == 'unet' else FORA(), sampler, xc, S.uniform_grid(steps), K, extra_args=dict(y=yc), info=info)
    dp = lambda k: dp_schedule(info['costs'], k)
    if kind == 'unet':
        pols = [(f'DeepCache N={N}', DeepCache(interval=N)) for N in ((2, 3) if quick else (2, 3, 4))]
        pols += [] if quick else [(f'DeepCache non-uniform {K}/{steps}', DeepCache(steps=nonuniform_steps(steps, K))),
                                  *[(f'DeepCache DP {k}/{steps}', DeepCache(steps=dp(k))) for k in (K, K + 1, K + 2)],
                                  ('TaylorSeer N=3', TaylorSeer(interval=3)),
                                  ('adaptive 0.3', AdaptiveCache(threshold=0.3)),
                                  ('adaptive+Taylor 0.3', AdaptiveCache(threshold=0.3, order=1)),
                                  ('gated TaylorSeer 0.2', GatedTaylorSeer(threshold=0.2))]
    else:
        Ns = (2, 3) if quick else (2, 3, 4)
        pols = [(f'FORA N={N}', FORA(interval=N)) for N in Ns] + [(f'TaylorSeer N={N}', TaylorSeer(interval=N)) for N in Ns]
        pols += [] if quick else [('TaylorSeer o2 N=3', TaylorSeer(order=2, interval=3)),
                                  (f'FORA DP {K}/{steps}', FORA(steps=dp(K))),
                                  (f'TaylorSeer DP {K}/{steps}', TaylorSeer(steps=dp(K))),
                                  ('Delta-DiT N=2', DeltaDiT(interval=2)), ('Delta-DiT N=3', DeltaDiT(interval=3)),
                                  ('adaptive 0.05', AdaptiveCache(threshold=0.05)),
                                  ('adaptive+Taylor 0.05', AdaptiveCache(threshold=0.05, order=1)),
                                  ('gated TaylorSeer 0.03', GatedTaylorSeer(threshold=0.03))]
    return rows + [(name, CachedDenoiser(D, pol), steps) for name, pol in pols]


def shallow_share(D, policy, b=8):
    "FLOPs of a call that skips the policy's span / FLOPs of a full call."
    return skip_share(D, policy, torch.randn(b, 1, 16, 16), 0.5, y=torch.arange(b) % 10)[0]


def interp(xs, ys, x):
    "Piecewise-linear interpolation of ys(xs) at x; None outside the range."
    pts = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1: return y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-12)
    return None


def run_model(kind, args, clf):
    D = load_zoo('digits_unet_s' if kind == 'unet' else 'digits_dit')
    sampler = getattr(S, f'sample_{args.sampler}')
    t0 = time.time()
    rows = configs(kind, D, args.steps, sampler, args.quick)
    print(f'\n== {kind}: {D.info["model"]}, {args.sampler}, {args.steps} steps, n = {args.n} in chunks of {args.batch}; '
          f'{len(rows)} configurations (schedule search {time.time() - t0:.0f} s)', flush=True)
    outs, times, fulls = {r[0]: [] for r in rows}, {r[0]: [] for r in rows}, {r[0]: [] for r in rows}
    labels = torch.arange(args.n) % 10
    cpu0 = time.process_time()
    with torch.no_grad():
        for c, lo in enumerate(range(0, args.n, args.batch)):
            g = torch.Generator().manual_seed(1000 + c)
            x, y = torch.randn(min(args.batch, args.n - lo), 1, 16, 16, generator=g), labels[lo:lo + args.batch]
            order = rows[c % len(rows):] + rows[:c % len(rows)]                # rotate who goes first
            for name, model, steps in order:
                t1 = time.perf_counter()
                out = sampler(model or D, x, S.uniform_grid(steps), extra_args=dict(y=y))
                times[name].append(time.perf_counter() - t1)
                outs[name].append(out)
                if model is not None: fulls[name].append(sum(model.computed))
            print(f'  chunk {c + 1}/{-(-args.n // args.batch)} done ({time.time() - t0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU)', flush=True)
    base = torch.cat(outs['uncached'])
    res = {}
    for name, model, steps in rows:
        xs = torch.cat(outs[name])
        q = digits_quality(xs.clamp(-1, 1), labels, model=clf, verbose=False)
        sp = torch.tensor([b / t for b, t in zip(times['uncached'], times[name])]).median().item()
        rmse = (xs - base).pow(2).flatten(1).mean(1).sqrt().mean().item()
        full = f'{sum(fulls[name]) / len(fulls[name]):.0f}/{len(model.computed)}' if model is not None else f'{steps}/{steps}'
        share = shallow_share(D, model.policy) if model is not None and kind == 'unet' else None
        res[name] = dict(speedup=sp, fd=q['fd'], kid=q['kid'], rmse=rmse, full=full, share=share, floor=q['fd_floor'], acc=q['acc'],
                         sec=torch.tensor(times[name]).median().item(), fewer=model is None)
    few = {k: v for k, v in res.items() if v['fewer']}
    fd0 = res['uncached']['fd']
    print(f"{'configuration':28}{'full calls':>11}{'speed-up':>9}{'s/chunk':>8}{'FD':>7}{'FD/unc.':>8}{'KID e3':>7}{'acc %':>6}{'RMSE':>7}"
          f"{'| fewer steps @ same speed: FD':>31}{'RMSE':>7}{'shallow share':>14}")
    for name, r in res.items():
        fx = [v['speedup'] for v in few.values()]
        ffd, frm = interp(fx, [v['fd'] for v in few.values()], r['speedup']), interp(fx, [v['rmse'] for v in few.values()], r['speedup'])
        r['fewer_fd'], r['fewer_rmse'] = ffd, frm
        cmp = '' if r['fewer'] or ffd is None else f"{ffd:29.2f}{frm:7.3f}"
        print(f"{name:28}{r['full']:>11}{r['speedup']:8.2f}x{r['sec']:8.1f}{r['fd']:7.2f}{r['fd'] / fd0:8.2f}{1e3 * r['kid']:7.1f}{100 * r['acc']:6.1f}"
              f"{r['rmse']:7.3f}{cmp:36}" + (f"{r['share']:14.1%}" if r['share'] is not None else ''))
    print(f"FD floor (real training digits vs the same held-out reference, n = {args.n}): {res['uncached']['floor']:.2f}; "
          f"total {time.time() - t0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU for sampling")
    return res


def pick(res, prefix, min_speed):
    "The configuration of a family with the lowest RMSE among those at least `min_speed` faster (else the fastest)."
    fam = {k: v for k, v in res.items() if k.startswith(prefix)}
    ok = {k: v for k, v in fam.items() if v['speedup'] >= min_speed}
    return min(ok.items(), key=lambda kv: kv[1]['rmse']) if ok else max(fam.items(), key=lambda kv: kv[1]['speedup'])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--models', default='unet,dit')
    ap.add_argument('--n', type=int, default=360)
    ap.add_argument('--batch', type=int, default=60)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--sampler', default='dpmpp_2m')
    ap.add_argument('--quick', action='store_true', help='n = 64, fewer configurations: a smoke run')
    args = ap.parse_args()
    if args.quick: args.n, args.batch = 64, 32
    torch.set_num_threads(1)
    print(f'one thread; {torch.__version__}; the machine may be shared with other jobs: compare rows, not absolute times')
    clf = load_digits_classifier()
    out = []
    res = {m: run_model(m, args, clf) for m in args.models.split(',')}
    if 'unet' in res:
        name, r = pick(res['unet'], 'DeepCache N=', 1.8)
        out += [f"unet_share={r['share']:.3f}", f"unet_deepcache={name.split('=')[1]}", f"unet_deepcache_speedup={r['speedup']:.2f}",
                f"unet_deepcache_fd_ratio={r['fd'] / res['unet']['uncached']['fd']:.3f}"]
    if 'dit' in res:
        name, r = pick(res['dit'], 'TaylorSeer N=', 2.0)
        fora = res['dit'].get(name.replace('TaylorSeer', 'FORA'))
        out += [f"dit_taylorseer={name.split('=')[1]}", f"dit_taylorseer_speedup={r['speedup']:.2f}", f"dit_taylorseer_rmse={r['rmse']:.4f}",
                f"dit_fora_speedup={fora['speedup']:.2f}", f"dit_fora_rmse={fora['rmse']:.4f}",
                f"dit_taylorseer_fd_ratio={r['fd'] / res['dit']['uncached']['fd']:.3f}"]
    print('RESULT ' + ' '.join(out))


if __name__ == '__main__':
    main()
