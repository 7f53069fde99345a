"""Compression of the zoo's digits UNet and DiT: post-training quantisation (diffkit.accel.quant) and structured pruning
with recovery (diffkit.accel.prune), against fp32 and against the int8 path a PyTorch user would otherwise pick
(torch.ao.quantization.quantize_dynamic: int8 Linear layers, activation ranges measured per call), in one run.

    PYTHONPATH=. python benchmarks/compress.py [--models unet,dit] [--parts quant,prune] [--n 359] [--steps 20] [--quick]

Every setting samples the same n class-conditional digits (labels 0..9 cycling, seeded noise) with DPM-Solver++ 2M,
unguided. Quality: the Frechet distance (and KID) of the held-out digits classifier's features against the held-out
digits (diffkit.classifier.digits_quality; the train-vs-held-out floor at the same n is printed), its change against
the fp32 model, and the per-sample RMSE to the fp32 samples from the same noise (stable where FD on ~359 images is
noisy). Size: bytes of what a checkpoint must hold (integer codes, fp16 scales, float rest; packed_state_dict) against
the fp32 state dict. Latency: one forward at batch --batch, t = 0.5, one thread, all models interleaved (A, B, A, B ...),
median of --repeats; fake-quantised settings simulate integers in float and have no latency of their own ('-').
Activation ranges are calibrated on --n-cal other trajectories of the same sampler and grid.
Pruning: the DiT is cut to half its depth by a learned 1:2 layer mask (TinyFusion) and recovered by distillation from
the unpruned model for a fixed number of steps (wall and CPU seconds printed: the budget is 10 minutes on 2 cores);
the UNet loses a share of its residual-block FLOPs by output-space importance, then recovers the same way.
Ends with one line: RESULT unet_w8a8_size=... unet_w8a8_fd_change_pct=... dit_prune_fd_change_pct=... ...

Measured (2026-12-01, 2-core machine, the two models in two processes side by side, one thread each):
`OMP_NUM_THREADS=1 python benchmarks/compress.py --models unet` (780 CPU-s) and `... --models dit` (898 CPU-s).
  UNet (fp32 FD 0.963): W8A8 4 time groups FD -0.1%, 3.86x smaller, RMSE 0.0052 vs 0.0098 with one input range;
  W7A8 real int8 (oneDNN) 1.11x faster, FD -1.0%; W4 per channel 7.40x, FD +36.7%; W4 group-64 asym 6.73x, +8.7%;
  W4 twin-log 7.17x, +6.4%; channels -30% of block FLOPs + 1200 distillation steps: FD -0.2%, 1.10x faster.
  DiT (fp32 FD 1.882): W8A8 4 time groups FD +0.1%, 3.82x smaller, RMSE 0.0061 vs 0.0098 with one range; W7A8 int8
  1.04x; W4 per channel 7.27x, +27.6%; group-64 asym 5.55x, +24.0%; twin-log 6.84x, +59.6%; torch.ao dynamic int8
  3.89x, +2.0%, 1.14x; depth 8 -> 4 (blocks 1, 2, 5, 7) + 1700 distillation steps: FD 2.075 (+10.3%), 1.97x faster,
  0.50x FLOPs, 583 s on one thread with the mask.
RESULT unet_w8a8_size=3.86 unet_w8a8_fd_change_pct=-0.11 unet_timegroups_rmse_ratio=0.527 unet_w4_size=7.40
unet_w4_fd_change_pct=36.73 dit_w8a8_size=3.82 dit_w8a8_fd_change_pct=0.06 dit_timegroups_rmse_ratio=0.621 dit_w4_size=7.27
dit_w4_fd_change_pct=27.57 dit_prune_fd_change_pct=10.27 dit_prune_latency=1.97 dit_prune_flops=0.501 dit_prune_wall_s=583 (abridged)
"""
import argparse, copy, sys, time
from pathlib import Path
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffkit.accel.prune import (depth_match, group_flops, learn_layer_mask, output_importance, prune_channels,  # noqa: E402
                                 prune_depth, recover, select_groups)
from diffkit.accel.quant import (QuantDenoiser, calibrate, compare_latency, int8_available, int8_weight_bits,  # noqa: E402
                                 packed_state_dict, state_bytes, to_int8)
from diffkit.classifier import digits_quality, digits_split  # noqa: E402
from diffkit.denoiser import Denoiser  # noqa: E402
from diffkit.models.layers import count_params_flops  # noqa: E402
from diffkit.samplers import sample_dpmpp_2m, uniform_grid  # noqa: E402
from diffkit.zoo import load_zoo, zoo_models  # noqa: E402

ZOO = {'unet': 'digits_unet_s', 'dit': 'digits_dit'}


def sample(model, x1, y, steps, chunk=120):
    "Samples from noise x1 (in chunks, so memory stays small), clamped to the data range."
    with torch.no_grad():
        return torch.cat([sample_dpmpp_2m(model, x1[i:i + chunk], uniform_grid(steps), extra_args=dict(y=y[i:i + chunk]))
                          for i in range(0, len(x1), chunk)]).clamp(-1, 1)


def tensor_bytes(sd) -> int:
    "Bytes of a state dict, counting the (weight, bias) tuples of torch.ao's packed parameters and quantised tensors."
    total = 0
    for v in sd.values():
        for t in (v if isinstance(v, tuple) else (v,)):
            if isinstance(t, torch.Tensor): total += t.numel() * t.element_size() + (8 * t.q_per_channel_scales().numel() if t.is_quantized and t.qscheme() == torch.per_channel_affine else 0)
    return total


def dynamic_int8(D):
    "The peer: torch.ao's dynamic int8 quantisation of every nn.Linear (convolutions stay fp32)."
    import warnings
    from torch.ao.quantization import quantize_dynamic
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        net = quantize_dynamic(copy.deepcopy(D.net), {nn.Linear}, dtype=torch.qint8)
    out = Denoiser(net, D.path, D.target)
    return out, tensor_bytes(net.state_dict())


def quant_settings(D, a, full_bytes):
    "(name, model, size ratio, real kernels?) of every quantisation setting."
    g = torch.Generator().manual_seed(1234)
    x_cal, y_cal = torch.randn(a.n_cal, 1, 16, 16, generator=g), torch.arange(a.n_cal) % 10
    ts = uniform_grid(a.steps)
    t0 = time.time()
    w8a8 = calibrate(QuantDenoiser(D, wbits=8, abits=8), x_cal, ts, 1, extra_args=dict(y=y_cal))
    print(f'calibration: {a.n_cal} trajectories of {a.steps} steps, {time.time() - t0:.0f} s', flush=True)
    G = a.groups
    tg = copy.deepcopy(w8a8).set_groups(G)
    rows = [('W8 (weights only)*', QuantDenoiser(D, wbits=8, abits=None), False),
            ('W8A8, one input range', w8a8, False),
            (f'W8A8, {G} time groups', tg, False),
            (f'W8A8, {a.steps} time groups (per step)*', copy.deepcopy(w8a8).set_groups(a.steps), False),
            (f'W8A8, {G} time groups + Hadamard (auto)*', copy.deepcopy(w8a8).set_groups(G, 'auto'), False)]
    if int8_available():
        q = calibrate(QuantDenoiser(D, wbits=int8_weight_bits(), abits=8), x_cal, ts, G, extra_args=dict(y=y_cal))
        rows.append((f'W{int8_weight_bits()}A8 int8 oneDNN, {G} time groups', to_int8(q), True))
        rows[-1] = rows[-1] + (state_bytes(packed_state_dict(q)),)
    rows += [('W4 per channel', QuantDenoiser(D, wbits=4, abits=None), False),
             ('W4 per group of 64, asym', QuantDenoiser(D, wbits=4, abits=None, granularity='group', w_symmetric=False), False),
             ('W4 twin-log per channel', QuantDenoiser(D, wbits=4, abits=None, wlog=True), False),
             ('W4 g64 asym + A8, time groups*', calibrate(QuantDenoiser(D, wbits=4, abits=8, granularity='group', w_symmetric=False), x_cal, ts, G, extra_args=dict(y=y_cal)), False)]
    out = []
    for r in rows:
        name, model, real = r[:3]
        nbytes = r[3] if len(r) > 3 else state_bytes(packed_state_dict(model))
        out.append((name, model, full_bytes / nbytes, real))
    dyn, nbytes = dynamic_int8(D)
    out.append(('peer: torch.ao dynamic int8 (Linear only)', dyn, full_bytes / nbytes, True))
    return out


def prune_settings(kind, D, a):
    "(name, model, size ratio, real, info) of the pruned model after recovery."
    xtr, ytr, _, _ = digits_split()
    net = D.net
    if kind == 'dit':
        if not hasattr(net, 'blocks'): return []
        keep = 1
        mask, student, _ = learn_layer_mask(net, net, D.path, xtr, ytr, keep=keep, group=2, steps=a.mask_steps, batch_size=a.prune_batch, seed=0)
        kept = mask.best()
        small = prune_depth(student if a.warm_start else net, kept)
        steps, lr = a.recover_steps or 1700, a.prune_lr or 2e-3
        match = depth_match(kept, 2) if a.match_weight > 0 else None
        small, info = recover(small, net, D.path, xtr, ytr, steps=steps, batch_size=a.prune_batch, lr=lr, match=match, match_weight=a.match_weight)
        info.update(mask_wall_s=mask.info['wall_s'], mask_cpu_s=mask.info['cpu_s'], mask_steps=a.mask_steps, kept=kept, match_weight=a.match_weight)
        name = f'depth {len(net.blocks)} -> {len(kept)} (TinyFusion 1:2) + {steps} distillation steps'
    else:
        g = torch.Generator().manual_seed(3)
        idx = torch.randperm(len(xtr), generator=g)[:64]
        t = torch.rand(64, generator=g)
        xt = D.path.sample(xtr[idx], t, torch.randn(64, 1, 16, 16, generator=g))[0]
        t0 = time.time()
        imp = output_importance(D, xt, t, y=ytr[idx])
        keep = select_groups(imp, a.unet_prune, group_flops(net, xt[:1], t[:1], y=ytr[idx][:1]))
        steps, lr = a.recover_steps or 1200, a.prune_lr or 5e-4
        small, info = recover(prune_channels(net, keep), net, D.path, xtr, ytr, steps=steps, batch_size=a.prune_batch, lr=lr)
        info.update(importance_wall_s=time.time() - t0 - info['wall_s'])
        name = f'channels -{a.unet_prune:.0%} of block FLOPs (output importance) + {steps} distillation steps'
    Dp = Denoiser(small, D.path, D.target)
    x1, y1, t1 = torch.randn(1, 1, 16, 16), torch.zeros(1, dtype=torch.long), torch.rand(1)
    (p0, f0), (p1, f1) = (count_params_flops(m, x1, t1, y=y1, verbose=False) for m in (net, small))
    info.update(params_ratio=p1 / p0, flops_ratio=f1 / f0)
    return [(name, Dp, state_bytes(net.state_dict()) / state_bytes(small.state_dict()), True, info)]


def run(kind, a):
    D = load_zoo(ZOO[kind])
    print(f'\n=== {ZOO[kind]} ({D.info["model"]}) ===', flush=True)
    full_bytes = state_bytes(D.state_dict())
    g = torch.Generator().manual_seed(0)
    x1, y = torch.randn(a.n, 1, 16, 16, generator=g), torch.arange(a.n) % 10
    rows = [('fp32', D, 1.0, True, {})]
    if 'quant' in a.parts: rows += [r + ({},) for r in quant_settings(D, a, full_bytes)]
    if 'prune' in a.parts: rows += prune_settings(kind, D, a)
    xb, yb, tb = torch.randn(a.batch, 1, 16, 16, generator=g), torch.arange(a.batch) % 10, torch.full((a.batch,), 0.5)
    lat = compare_latency({r[0]: r[1] for r in rows if r[3]}, xb, tb, y=yb, repeats=a.repeats)
    res, ref = {}, None
    for name, model, size, real, info in rows:
        t0 = time.time()
        sub = name.endswith('*') and not a.all_fd                         # secondary settings: RMSE on the first --n-sub samples only
        k = a.n_sub if sub else a.n
        xs = sample(model, x1[:k], y[:k], a.steps)
        q = dict(fd=float('nan'), kid=float('nan'), acc=float('nan')) if sub else digits_quality(xs, y, verbose=name == 'fp32')
        if ref is None: ref = xs
        rmse = float((xs - ref[:len(xs)]).pow(2).flatten(1).mean(1).sqrt().mean())
        res[name] = dict(size=size, latency=lat['fp32'] / lat[name] if name in lat else None, rmse=rmse, fd=q['fd'], kid=q['kid'],
                         acc=q['acc'], fd_floor=q.get('fd_floor'), info=info)
        print(f'  {name}: FD {q["fd"]:.3f}, RMSE {rmse:.4f} ({time.time() - t0:.0f} s)', flush=True)
    fd0 = res['fp32']['fd']
    print(f"\n{ZOO[kind]}: {a.n} samples, DPM-Solver++ 2M {a.steps} steps, unguided; FD floor {res['fp32']['fd_floor']:.3f} (training vs held-out, same n); "
          f"latency: batch {a.batch}, median of {a.repeats}, one thread, interleaved; other jobs were loading the CPU")
    print(f"(* RMSE on the first {a.n_sub} samples only, no FD; --all-fd evaluates them fully)")
    print(f"{'setting':58}{'size':>7}{'latency':>9}{'RMSE':>8}{'FD':>8}{'FD chg':>8}{'KIDx1e3':>9}{'acc':>7}")
    for name, r in res.items():
        lat_s = f"{r['latency']:.2f}x" if r['latency'] else '-'
        print(f"{name:58}{r['size']:6.2f}x{lat_s:>9}{r['rmse']:8.4f}{r['fd']:8.3f}{100 * (r['fd'] / fd0 - 1):+7.1f}%{1e3 * r['kid']:9.2f}{100 * r['acc']:6.1f}%")
        if r['info']: print(f"{'':6}{', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in r['info'].items())}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--models', default='unet,dit')
    ap.add_argument('--parts', default='quant,prune')
    ap.add_argument('--n', type=int, default=359, help='samples per setting (359 = the held-out set)')
    ap.add_argument('--n-sub', type=int, default=120, help='samples of the secondary (*) settings, RMSE only')
    ap.add_argument('--all-fd', action='store_true', help='evaluate every setting on all n samples with FD')
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--n-cal', type=int, default=64, help='calibration trajectories')
    ap.add_argument('--groups', type=int, default=4, help='time groups of the headline W8A8 setting')
    ap.add_argument('--batch', type=int, default=64, help='batch of the latency measurement')
    ap.add_argument('--repeats', type=int, default=9)
    ap.add_argument('--mask-steps', type=int, default=100)
    ap.add_argument('--recover-steps', type=int, default=None, help='distillation steps after pruning (default: DiT 1700, ~9 CPU-minutes with the mask; UNet 1200)')
    ap.add_argument('--prune-batch', type=int, default=32)
    ap.add_argument('--prune-lr', type=float, default=None, help='peak learning rate of the recovery (default: DiT 2e-3, UNet 5e-4)')
    ap.add_argument('--match-weight', type=float, default=1., help="weight of the DiT student's block outputs against the teacher's run ends (0: output only)")
    ap.add_argument('--warm-start', action='store_true', help='recover the DiT from the weights trained jointly with the mask')
    ap.add_argument('--unet-prune', type=float, default=0.3, help='share of the UNet residual-block FLOPs to remove')
    ap.add_argument('--quick', action='store_true', help='a smoke run: 60 samples, 10 steps, few recovery steps')
    a = ap.parse_args()
    if a.quick: a.n, a.n_sub, a.steps, a.n_cal, a.repeats, a.mask_steps, a.recover_steps, a.batch = 60, 30, 10, 16, 3, 10, 20, 32
    torch.set_num_threads(1)
    models = [m for m in a.models.split(',') if m]
    missing = [m for m in models if ZOO.get(m) not in zoo_models()]
    if missing: print(f'skipping {missing}: not in the zoo ({sorted(zoo_models())})'); models = [m for m in models if m not in missing]
    c0, t0 = time.process_time(), time.time()
    res = {m: run(m, a) for m in models}
    out = []
    for m, r in res.items():
        fd0 = r['fp32']['fd']
        chg = lambda k: 100 * (r[k]['fd'] / fd0 - 1)
        tg = next((k for k in r if k.startswith('W8A8,') and 'time groups' in k and 'Hadamard' not in k and 'per step' not in k), None)
        if tg:
            one = 'W8A8, one input range'
            out += [f'{m}_w8a8_size={r[tg]["size"]:.2f}', f'{m}_w8a8_fd_change_pct={chg(tg):.2f}', f'{m}_w8a8_rmse={r[tg]["rmse"]:.4f}',
                    f'{m}_w8a8_one_range_rmse={r[one]["rmse"]:.4f}', f'{m}_w8a8_one_range_fd_change_pct={chg(one):.2f}',
                    f'{m}_timegroups_rmse_ratio={r[tg]["rmse"] / r[one]["rmse"]:.3f}']
            i8 = next((k for k in r if 'int8 oneDNN' in k), None)
            if i8: out += [f'{m}_int8_latency={r[i8]["latency"]:.2f}', f'{m}_int8_fd_change_pct={chg(i8):.2f}']
            out += [f'{m}_w8a8_perstep_rmse={r[next(k for k in r if "per step" in k)]["rmse"]:.4f}',
                    f'{m}_w4_size={r["W4 per channel"]["size"]:.2f}', f'{m}_w4_fd_change_pct={chg("W4 per channel"):.2f}',
                    f'{m}_w4g64_size={r["W4 per group of 64, asym"]["size"]:.2f}', f'{m}_w4g64_fd_change_pct={chg("W4 per group of 64, asym"):.2f}',
                    f'{m}_w4log_fd_change_pct={chg("W4 twin-log per channel"):.2f}',
                    f'{m}_dynamic_latency={r["peer: torch.ao dynamic int8 (Linear only)"]["latency"]:.2f}']
        pr = next((k for k in r if 'distillation steps' in k), None)
        if pr:
            i = r[pr]['info']
            out += [f'{m}_prune_fd_change_pct={chg(pr):.2f}', f'{m}_prune_latency={r[pr]["latency"]:.2f}', f'{m}_prune_flops={i["flops_ratio"]:.3f}',
                    f'{m}_prune_params={i["params_ratio"]:.3f}', f'{m}_prune_cpu_s={i["cpu_s"] + i.get("mask_cpu_s", 0):.0f}',
                    f'{m}_prune_wall_s={i["wall_s"] + i.get("mask_wall_s", 0):.0f}']
    print(f'\ntotal: {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU')
    print('RESULT ' + ' '.join(out))


if __name__ == '__main__':
    main()
