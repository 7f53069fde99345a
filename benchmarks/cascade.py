"""Cascade benchmark on digits: a two-stage cascade (8x8 base + 8->16 super-resolution) against single-stage 16x16 models.

Trains, with step budgets (deterministic) on one thread, and records steps, wall time and CPU time of each model:
  base       class-conditional UNet on 8x8 digits (the 16x16 training split average-pooled)
  sr         8->16 SR UNet (low-res by channel concatenation, labels), noise-conditioning augmentation s ~ U[0, 0.5]
  sr_noaug   the same SR stage trained on clean low-res images (augmentation off)
  bridge     the same SR network trained as a bridge from up(low-res) + 0.1 eps to the image (diffkit.interpolants)
  single     UNet_S on 16x16 trained with the cascade's training FLOPs (base + sr)
  frecas     the zoo's UNet_S fine-tuned on 8x8 and 16x16 digits, for frequency-aware cascaded sampling
and compares, on the classifier's held-out digits (FD / KID / accuracy beside the data floor, 3 seeds):
the cascade against the single-stage models (same-budget and the zoo's digits_unet_s, trained ~2.6x longer) at
sampling cost NFE x FLOPs and interleaved wall time; augmentation on vs off when the base's outputs feed the SR
stage; bridge vs noise-to-image SR at equal NFE (PSNR from real low-res images, FD from base outputs); FreCaS vs
full-resolution sampling of one model.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/cascade.py --workdir runs/cascade     # ~40 CPU-minutes, trains all
    python benchmarks/cascade.py --workdir runs/cascade --save diffkit/assets/digits_cascade   # reuse, ship the stages
    python benchmarks/cascade.py --quick                                                  # smoke run (~2 min)
Ends with one line: RESULT cost_ratio=... fd_cascade=... fd_single=... fd_aug_on=... fd_aug_off=... ...

Measured (2026-12-01, the first command above, one thread beside other jobs; 8.2 CPU-minutes of cascade training):
FD over 3 seeds x 359 samples: cascade 1.11 +- 0.12, aug off 1.13 +- 0.11, bridge SR 1.27 +- 0.20, single stage with the
same training FLOPs 1.44 +- 0.16, zoo single stage 1.03 +- 0.14 (floor 1.53); FreCaS 1.37 vs full resolution 1.21.
RESULT cost_ratio=0.425 wall_ratio=0.424 fd_cascade=1.114 fd_single_same_flops=1.436 fd_single_zoo=1.031 fd_aug_on=1.114
fd_aug_off=1.134 kid_aug_on=-0.04285 kid_aug_off=-0.04132 fd_floor=1.530 aug_level=0 psnr_noise_nfe2=31.75
psnr_bridge_nfe2=29.72 frecas_cost=0.636 fd_frecas=1.373 fd_frecas_full=1.210 cascade_train_cpu_min=8.2
"""
import argparse, statistics, time
from pathlib import Path
import torch
from diffkit.cascade import (BridgePath, Cascade, Stage, bridge_loss, build_stage_model, downsample,
                             psnr, sample_frecas, save_stage_models, sr_loss, upsample)
from diffkit.checkpoint import load_checkpoint, save_checkpoint
from diffkit.classifier import digits_quality, digits_split
from diffkit.models.layers import count_params_flops
from diffkit.objectives import drop_labels, regression_loss
from diffkit.paths import Linear
from diffkit.samplers import get_grid, sample_dpmpp_2m
from diffkit.training import Trainer
from diffkit.zoo import load_zoo

SR_NET = dict(in_channels=2, out_channels=1, channels=(16, 32), num_blocks=1, attn_levels=(), mid_attn=False, num_classes=10)
SPECS = {
    'base': dict(model='UNet_S', kwargs=dict(channels=(32, 64), num_blocks=1, attn_levels=(1,), num_classes=10)),
    'sr': dict(model='UNet_S', kwargs=SR_NET, sr=dict(factor=2)),
    'sr_noaug': dict(model='UNet_S', kwargs=SR_NET, sr=dict(factor=2)),
    'bridge': dict(model='UNet_S', kwargs=SR_NET, sr=dict(factor=2), bridge=dict(prior_std=0.1, noise=1.)),
    'single': dict(model='UNet_S', kwargs=dict(num_classes=10)),
    'frecas': dict(model='UNet_S', kwargs=dict(num_classes=10)),
}
PATH = Linear()


def losses(name, max_aug=0.5):
    "loss_fn(net, batch, generator) of each model; a batch row is a flattened 16x16 digit and its label."
    def unpack(batch, g):
        return batch[:, :-1].reshape(-1, 1, 16, 16), drop_labels(batch[:, -1].long(), 0.1, 10, g)
    def base(net, batch, g):
        x, y = unpack(batch, g); return regression_loss(net, PATH, downsample(x), 'velocity', generator=g, y=y)
    def single(net, batch, g):
        x, y = unpack(batch, g); return regression_loss(net, PATH, x, 'velocity', generator=g, y=y)
    def sr(net, batch, g):
        x, y = unpack(batch, g); return sr_loss(net, PATH, x, factor=2, max_aug=max_aug, generator=g, y=y)
    def bridge(net, batch, g):
        x, y = unpack(batch, g); return bridge_loss(net, BridgePath(**SPECS['bridge']['bridge']), x, factor=2, max_aug=max_aug, generator=g, y=y)
    def frecas(net, batch, g):                       # one model for both resolutions: half the steps at 8x8
        x, y = unpack(batch, g)
        if float(torch.rand(1, generator=g)) < 0.5: x = downsample(x)
        return regression_loss(net, PATH, x, 'velocity', generator=g, y=y)
    return dict(base=base, single=single, sr=sr, sr_noaug=sr, bridge=bridge, frecas=frecas)[name]


def train(name, data, steps, batch_size, lr, seed, workdir, init=None):
    "Train model `name` (or load it from workdir); return (denoiser in eval mode, stats)."
    ck = Path(workdir) / name if workdir else None
    if ck is not None and ck.with_suffix('.json').exists():
        st, cfg = load_checkpoint(ck)
        model = build_stage_model(SPECS[name]); model.load_state_dict(st['model'])
        print(f'{name}: loaded from {ck} ({cfg["stats"]["steps"]} steps, {cfg["stats"]["cpu_s"]:.0f} CPU-s)', flush=True)
        return model.eval().requires_grad_(False), cfg['stats']
    torch.manual_seed(seed)
    model = build_stage_model(SPECS[name])
    if init is not None: model.load_state_dict(init.state_dict())
    max_aug = 0. if name == 'sr_noaug' else 0.5
    tr = Trainer(model.net, losses(name, max_aug), data, steps=steps, batch_size=batch_size, lr=lr, warmup=min(100, steps // 10),
                 ema_decay=0.999, generator=torch.Generator().manual_seed(seed))
    w0, c0 = time.time(), time.process_time()
    ema, ls = tr.fit()
    stats = dict(steps=steps, batch_size=batch_size, lr=lr, wall_s=time.time() - w0, cpu_s=time.process_time() - c0,
                 threads=torch.get_num_threads(), final_loss=sum(ls[-50:]) / len(ls[-50:]), params=sum(p.numel() for p in ema.parameters()))
    model.net = ema
    model = model.eval().requires_grad_(False)
    print(f"{name}: {steps} steps x {batch_size}, {stats['wall_s']:.0f} s wall, {stats['cpu_s']:.0f} s CPU ({stats['threads']} thread), loss {stats['final_loss']:.4f}", flush=True)
    if ck is not None: save_checkpoint(ck, dict(model=model.state_dict()), dict(stats=stats, spec=SPECS[name]))
    return model, stats


def flops(model, size, **cond):
    return count_params_flops(model, torch.zeros(1, 1, size, size), torch.full((1,), 0.5), verbose=False, **cond)[1]


def quality(xs, ys, **kw):
    q = digits_quality(xs, ys, verbose=False, **kw)
    return dict(fd=q['fd'], kid=q['kid'], acc=q['acc'], fd_floor=q['fd_floor'], kid_floor=q['kid_floor'], acc_floor=q['acc_floor'])


def mean_sd(rows, key):
    v = [r[key] for r in rows]
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--base-steps', type=int, default=1200)
    ap.add_argument('--sr-steps', type=int, default=600)
    ap.add_argument('--frecas-steps', type=int, default=300)
    ap.add_argument('--sr-sample-steps', type=int, default=10)
    ap.add_argument('--n-eval', type=int, default=359)
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--workdir', default=None, help='cache trained models here and reuse them on the next run')
    ap.add_argument('--save', default=None, help='write the base and SR stages (fp16) as one checkpoint PREFIX.{safetensors,json}')
    ap.add_argument('--quick', action='store_true')
    a = ap.parse_args()
    if a.quick: a.base_steps, a.sr_steps, a.frecas_steps, a.n_eval, a.seeds = 40, 20, 10, 100, 1
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = digits_split(0)                     # the classifier's held-out images stay unseen in training
    data = torch.cat([xtr.flatten(1), ytr[:, None].float()], 1)

    # ---- training (step budgets); the single-stage model gets the cascade's training FLOPs
    M, S = {}, {}
    M['base'], S['base'] = train('base', data, a.base_steps, 128, 2e-3, 0, a.workdir)
    M['sr'], S['sr'] = train('sr', data, a.sr_steps, 64, 2e-3, 1, a.workdir)
    y1 = torch.zeros(1, dtype=torch.long)
    f_base, f_sr = flops(M['base'], 8, y=y1), flops(M['sr'], 16, y=y1, low_res=torch.zeros(1, 1, 8, 8))
    f_single = flops(build_stage_model(SPECS['single']), 16, y=y1)
    train_flops = 3 * (a.base_steps * 128 * f_base + a.sr_steps * 64 * f_sr)   # forward + backward ~ 3 forwards
    single_steps = max(10, round(train_flops / (3 * 128 * f_single)))
    M['single'], S['single'] = train('single', data, single_steps, 128, 2e-3, 2, a.workdir)
    M['sr_noaug'], S['sr_noaug'] = train('sr_noaug', data, a.sr_steps, 64, 2e-3, 1, a.workdir)
    M['bridge'], S['bridge'] = train('bridge', data, a.sr_steps, 64, 2e-3, 1, a.workdir)
    zoo = load_zoo('digits_unet_s')
    M['frecas'], S['frecas'] = train('frecas', data, a.frecas_steps, 64, 5e-4, 3, a.workdir, init=zoo)
    cas_cpu, cas_wall = S['base']['cpu_s'] + S['sr']['cpu_s'], S['base']['wall_s'] + S['sr']['wall_s']
    print(f"\ncascade training: {a.base_steps} + {a.sr_steps} steps, {cas_wall / 60:.1f} min wall, {cas_cpu / 60:.1f} min CPU on 1 thread "
          f"({train_flops / 1e12:.2f} TFLOP); single-stage with the same FLOPs: {single_steps} steps, {S['single']['cpu_s'] / 60:.1f} min CPU")

    n, ys = a.n_eval, torch.arange(a.n_eval) % 10
    noise = lambda seed, size: torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(1000 + seed))
    single_sample = lambda m, seed: sample_dpmpp_2m(m, noise(seed, 16), get_grid('uniform', 20), extra_args=dict(y=ys)).clamp(-1, 1)
    base_stage = Stage(M['base'], 8, steps=20, name='base 8x8')

    # ---- choose the augmentation level at sampling on the training images (not the held-out reference)
    base_x = {s: base_stage.sample(n, generator=torch.Generator().manual_seed(2000 + s), y=ys) for s in range(a.seeds)}
    levels = (0., 0.05, 0.1, 0.2, 0.3)
    sweep = {}
    for lv in levels:
        x = Stage(M['sr'], 16, steps=a.sr_sample_steps, aug_level=lv).sample(n, base_x[0], torch.Generator().manual_seed(7), y=ys)
        sweep[lv] = quality(x, ys, ref='train')['fd']
    s_star = min(sweep, key=sweep.get)
    print('aug level sweep (FD vs training images, base outputs, seed 0): ' + ', '.join(f'{k:g}: {v:.2f}' for k, v in sweep.items()) + f' -> s = {s_star:g}')

    # ---- quality: cascades (shared base outputs per seed, paired) and single-stage models
    sr_variants = {'cascade (aug on)': (M['sr'], s_star), 'aug-trained SR at s=0': (M['sr'], 0.), 'cascade (aug off)': (M['sr_noaug'], 0.),
                   'cascade (bridge SR)': (M['bridge'], s_star)}
    Q = {k: [] for k in ('single (zoo, 2.6x training)', 'single (same training FLOPs)', *sr_variants)}
    for seed in range(a.seeds):
        Q['single (zoo, 2.6x training)'].append(quality(single_sample(zoo, seed), ys))
        Q['single (same training FLOPs)'].append(quality(single_sample(M['single'], seed), ys))
        for k, (m, lv) in sr_variants.items():
            x = Stage(m, 16, steps=a.sr_sample_steps, aug_level=lv).sample(n, base_x[seed], torch.Generator().manual_seed(3000 + seed), y=ys)
            Q[k].append(quality(x, ys))
    floor = Q['cascade (aug on)'][0]

    # ---- cost: NFE x FLOPs per image, and wall time interleaved (single, cascade, single, cascade, ...)
    cascade = Cascade([base_stage, Stage(M['sr'], 16, steps=a.sr_sample_steps, aug_level=s_star, name='SR 8->16')])
    cost_c = sum(c['total'] for c in cascade.cost(y=y1))
    cost_s = 20 * f_single
    tw = {'single': [], 'cascade': []}
    for r in range(3):
        for k in tw:
            t0 = time.perf_counter()
            if k == 'single': single_sample(zoo, r)
            else: cascade.sample(n, generator=torch.Generator().manual_seed(r), y=ys)
            tw[k].append(time.perf_counter() - t0)
    wall_ratio = statistics.median(tw['cascade']) / statistics.median(tw['single'])

    # ---- fidelity from real low-res images (held-out split): PSNR at equal NFE, noise-to-image vs bridge
    low_te = downsample(xte)
    fid = {'bilinear': psnr(upsample(low_te).clamp(-1, 1), xte)}
    nfes = (1, 2, 4, 10)
    for k, m in (('noise SR (aug on, s=0)', M['sr']), ('noise SR (aug off)', M['sr_noaug']), ('bridge SR (s=0)', M['bridge'])):
        for nfe in nfes:
            x = Cascade([Stage(M['base'], 8), Stage(m, 16, steps=nfe)]).sample(low_res=low_te, generator=torch.Generator().manual_seed(5), y=yte)
            fid[f'{k} NFE {nfe}'] = psnr(x, xte)
    real_bridge = {}
    for nfe in nfes:      # realism at equal NFE from the base's outputs (seed 0)
        for k, m in (('noise', M['sr']), ('bridge', M['bridge'])):
            x = Stage(m, 16, steps=nfe, aug_level=s_star).sample(n, base_x[0], torch.Generator().manual_seed(9), y=ys)
            real_bridge[(k, nfe)] = quality(x, ys)['fd']

    # ---- FreCaS: one model, 10 steps at 8x8, switch, 10 steps at 16x16, against 20 steps at 16x16
    fre = {'full 20 steps': [], 'FreCaS exact': [], 'FreCaS x0': []}
    f16, f8 = flops(M['frecas'], 16, y=y1), flops(M['frecas'], 8, y=y1)
    for seed in range(a.seeds):
        fre['full 20 steps'].append(quality(single_sample(M['frecas'], seed), ys))
        for mode in ('exact', 'x0'):
            x = sample_frecas(M['frecas'], noise(seed, 8), t_switch=0.5, steps=(10, 10), mode=mode, extra_args=dict(y=ys),
                              generator=torch.Generator().manual_seed(4000 + seed)).clamp(-1, 1)
            fre[f'FreCaS {mode}'].append(quality(x, ys))
    fre_cost = (11 * f8 + 10 * f16) / (20 * f16)

    # ---- report
    print(f"\nquality on {n} samples x {a.seeds} seeds vs {len(xte)} held-out digits (mean +- sd over seeds); floor = {n} training digits vs the same reference")
    print(f"{'':32}{'FD':>14}{'KID x 1e3':>16}{'accuracy':>10}")
    for k, rows in Q.items():
        (fd, fsd), (kd, ksd), (ac, _) = mean_sd(rows, 'fd'), mean_sd(rows, 'kid'), mean_sd(rows, 'acc')
        print(f"{k:32}{fd:8.2f} +- {fsd:4.2f}{1e3 * kd:9.2f} +- {1e3 * ksd:4.2f}{100 * ac:9.1f}%")
    print(f"{'floor':32}{floor['fd_floor']:8.2f}{'':8}{1e3 * floor['kid_floor']:9.2f}{'':8}{100 * floor['acc_floor']:9.1f}%")
    print(f"\nsampling cost per image: cascade {cost_c / 1e6:.0f} MFLOP (20 NFE x {f_base / 1e6:.1f} at 8x8 + {a.sr_sample_steps} NFE x {f_sr / 1e6:.1f} at 16x16), "
          f"single {cost_s / 1e6:.0f} MFLOP (20 NFE x {f_single / 1e6:.1f}): ratio {cost_c / cost_s:.3f}; wall (batch {n}, median of 3, interleaved, "
          f"1 thread, other agents loading the CPU): cascade {statistics.median(tw['cascade']):.2f} s, single {statistics.median(tw['single']):.2f} s, ratio {wall_ratio:.3f}")
    print(f"\nSR fidelity from real 8x8 held-out images (PSNR dB, {len(xte)} images): bilinear {fid['bilinear']:.2f}")
    print(f"{'NFE':>34}" + ''.join(f'{k:>8}' for k in nfes))
    for k in ('noise SR (aug on, s=0)', 'noise SR (aug off)', 'bridge SR (s=0)'):
        print(f"{k:>34}" + ''.join(f"{fid[f'{k} NFE {nfe}']:8.2f}" for nfe in nfes))
    print(f"{'FD from base outputs: noise SR':>34}" + ''.join(f"{real_bridge[('noise', nfe)]:8.2f}" for nfe in nfes))
    print(f"{'bridge SR':>34}" + ''.join(f"{real_bridge[('bridge', nfe)]:8.2f}" for nfe in nfes))
    print(f"\nFreCaS on one model (zoo UNet_S fine-tuned {a.frecas_steps} steps on 8x8 + 16x16): cost {fre_cost:.3f} of full resolution (11 NFE at 8x8 + 10 at 16x16 vs 20 at 16x16)")
    for k, rows in fre.items():
        (fd, fsd), (kd, ksd), (ac, _) = mean_sd(rows, 'fd'), mean_sd(rows, 'kid'), mean_sd(rows, 'acc')
        print(f"{k:32}{fd:8.2f} +- {fsd:4.2f}{1e3 * kd:9.2f} +- {1e3 * ksd:4.2f}{100 * ac:9.1f}%")
    print('\ntraining (1 thread): ' + '; '.join(f"{k} {s['steps']} x {s['batch_size']} steps, {s['cpu_s']:.0f} CPU-s, {s['wall_s']:.0f} wall-s" for k, s in S.items()))

    fd = {k: mean_sd(v, 'fd')[0] for k, v in Q.items()}
    kidm = {k: mean_sd(v, 'kid')[0] for k, v in Q.items()}
    if a.save:
        info = dict(command='python benchmarks/cascade.py ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items() if v not in (None, False)),
                    training={k: S[k] for k in ('base', 'sr', 'sr_noaug', 'bridge')}, aug_level=s_star, sr_sample_steps=a.sr_sample_steps,
                    fd={k: round(v, 3) for k, v in fd.items()}, cost_ratio=cost_c / cost_s)
        print('saved', save_stage_models(a.save, {k: M[k] for k in ('base', 'sr', 'sr_noaug', 'bridge')},
                                         {k: SPECS[k] for k in ('base', 'sr', 'sr_noaug', 'bridge')}, info))
    print(f"RESULT cost_ratio={cost_c / cost_s:.3f} wall_ratio={wall_ratio:.3f} fd_cascade={fd['cascade (aug on)']:.3f} "
          f"fd_single_same_flops={fd['single (same training FLOPs)']:.3f} fd_single_zoo={fd['single (zoo, 2.6x training)']:.3f} "
          f"fd_aug_on={fd['cascade (aug on)']:.3f} fd_aug_off={fd['cascade (aug off)']:.3f} kid_aug_on={kidm['cascade (aug on)']:.5f} "
          f"kid_aug_off={kidm['cascade (aug off)']:.5f} fd_floor={floor['fd_floor']:.3f} aug_level={s_star:g} "
          f"psnr_noise_nfe2={fid['noise SR (aug on, s=0) NFE 2']:.2f} psnr_bridge_nfe2={fid['bridge SR (s=0) NFE 2']:.2f} "
          f"frecas_cost={fre_cost:.3f} fd_frecas={mean_sd(fre['FreCaS exact'], 'fd')[0]:.3f} fd_frecas_full={mean_sd(fre['full 20 steps'], 'fd')[0]:.3f} "
          f"cascade_train_cpu_min={cas_cpu / 60:.1f}")


if __name__ == '__main__':
    main()
