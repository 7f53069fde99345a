"""Training benchmark on 16x16 digits: diffkit's UNet_S against diffusers' UNet2DModel of matched width and depth.

Both are trained by the same loop (diffkit.training.Trainer: Adam, warm-up + cosine, EMA), on the same training split,
with the same objective (rectified flow, velocity target, 10% label dropout), for the same wall time; both are sampled
by the same sampler from the same noise. Reported: throughput (samples/s), and Frechet distance / KID / accuracy of a
held-out digits classifier (diffkit.classifier), beside the training-vs-held-out floor at the same sample size.

    python benchmarks/training.py --seconds 420            # the issue's 'equal training time' comparison (~16 min)
    python benchmarks/training.py --seconds 30 --quick     # a smoke run
Ends with one line: RESULT throughput_ratio=... fd_diffkit=... fd_diffusers=... ...
"""
import argparse, json, time
from pathlib import Path
import torch
from diffkit.classifier import digits_split, evaluate_digits
from diffkit.denoiser import Denoiser
from diffkit.interop import DiffusersBackbone
from diffkit.models.layers import count_params_flops
from diffkit.models.registry import get_model
from diffkit.objectives import drop_labels, regression_loss
from diffkit.paths import Linear
from diffkit.training import StopTraining, Trainer


def diffusers_unet():
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 48, 64), layers_per_block=2,
                       down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
                       up_block_types=('AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'), norm_num_groups=8,
                       attention_head_dim=32, num_class_embeds=11)


def make(name):
    if name == 'diffkit': return get_model('UNet_S', num_classes=10)
    return DiffusersBackbone(diffusers_unet(), num_train_timesteps=1000, offset=0.)   # timestep = 1000 t


def loss_fn(path):
    def loss(m, batch, g):
        x0, y = batch[:, :-1].reshape(-1, 1, 16, 16), batch[:, -1].long()
        return regression_loss(m, path, x0, 'velocity', generator=g, y=drop_labels(y, 0.1, 10, g))
    return loss


def run(name, data, seconds, batch_size, seed, n_eval, steps_eval, guidance, fd_every=0):
    path = Linear()
    torch.manual_seed(seed)
    net = make(name)
    params = sum(p.numel() for p in net.parameters())
    # throughput first (20 steps), so that the cosine schedule ends at the time limit
    probe = Trainer(make(name), loss_fn(path), data, steps=20, batch_size=batch_size, warmup=5, generator=torch.Generator().manual_seed(seed))
    t0 = time.time(); probe.fit(); rate = 20 / (time.time() - t0)
    steps = max(50, int(rate * seconds))
    clock = dict(t0=None, paused=0.)                      # training time excludes the FD evaluations
    curve = []
    def train_time(): return time.time() - clock['t0'] - clock['paused']
    def stop(tr):
        if train_time() > 1.2 * seconds: raise StopTraining
    def fd_probe(tr):
        if not fd_every or tr.step % fd_every: return
        t1, at = time.time(), train_time()
        ev = evaluate_digits(Denoiser(tr.sample_model, path, 'velocity'), n=n_eval, steps=steps_eval, guidance=None)
        clock['paused'] += time.time() - t1
        curve.append((tr.step, at, ev['unguided']['fd']))
    tr = Trainer(net, loss_fn(path), data, steps=steps, batch_size=batch_size, lr=2e-3, warmup=min(200, steps // 10),
                 ema_decay=0.999, generator=torch.Generator().manual_seed(seed), callbacks=[stop, fd_probe])
    clock['t0'] = time.time()
    model, losses = tr.fit()
    train_s = train_time()
    res = dict(name=name, params=params, steps=tr.step, train_seconds=train_s, samples_per_s=tr.step * batch_size / train_s,
               final_loss=sum(losses[-100:]) / len(losses[-100:]), fd_curve=curve)
    ev = evaluate_digits(Denoiser(model, path, 'velocity'), n=n_eval, steps=steps_eval, guidance=guidance, seed=seed + 1)
    for label, q in ev.items():
        res[label] = {k: q[k] for k in ('fd', 'fd_floor', 'kid', 'kid_std', 'kid_floor', 'acc', 'acc_floor', 'sample_seconds')}
    return res, model


def time_to(curve, target):
    "Training seconds at the first probe whose FD is at most `target` (None if never)."
    return next((s for _, s, fd in curve if fd <= target), None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--seconds', type=float, default=420)
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--n-eval', type=int, default=359)
    ap.add_argument('--sample-steps', type=int, default=20)
    ap.add_argument('--guidance', type=float, default=2.)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--save', help='save the diffkit model (EMA) to this safetensors file, with a JSON beside it')
    ap.add_argument('--fd-every', type=int, default=0, help='score the EMA model every this many steps (0: only at the end)')
    ap.add_argument('--fd-target', type=float, default=3.0, help='the FD whose time-to-reach is reported (with --fd-every)')
    ap.add_argument('--quick', action='store_true')
    a = ap.parse_args()
    if a.quick: a.seconds, a.n_eval, a.sample_steps, a.fd_every = min(a.seconds, 30), min(a.n_eval, 100), min(a.sample_steps, 10), a.fd_every or 20
    xtr, ytr, _, _ = digits_split(0)                          # the classifier's held-out images stay unseen
    data = torch.cat([xtr.flatten(1), ytr[:, None].float()], 1)
    results = {}
    for name in ('diffkit', 'diffusers'):
        results[name], model = run(name, data, a.seconds, a.batch_size, a.seed, a.n_eval, a.sample_steps, a.guidance, a.fd_every)
        if name == 'diffkit' and a.save:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.save)
            Path(a.save).with_suffix('.json').write_text(json.dumps(dict(model='UNet_S', kwargs=dict(num_classes=10), path='linear',
                target='velocity', command='python benchmarks/training.py ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items() if v not in (None, False)),
                metrics={k: v for k, v in results[name].items() if k != 'fd_curve'}), indent=1))
    print(f"{'':10}{'params':>9}{'steps':>7}{'samples/s':>11}{'loss':>8} | {'FD':>7}{'KID*1e3':>9}{'acc':>7} (unguided) | {'FD':>7}{'KID*1e3':>9}{'acc':>7} (CFG {a.guidance:g})")
    for n, r in results.items():
        u, c = r['unguided'], r['cfg']
        print(f"{n:10}{r['params'] / 1e6:8.2f}M{r['steps']:7d}{r['samples_per_s']:11.0f}{r['final_loss']:8.4f} | {u['fd']:7.2f}{1e3 * u['kid']:9.2f}{100 * u['acc']:6.1f}% | {c['fd']:7.2f}{1e3 * c['kid']:9.2f}{100 * c['acc']:6.1f}%")
    f = results['diffkit']['unguided']
    print(f"{'floor':10}{'':35} | {f['fd_floor']:7.2f}{1e3 * f['kid_floor']:9.2f}{100 * f['acc_floor']:6.1f}%  (held-out vs {a.n_eval} training images)")
    dk, df = results['diffkit'], results['diffusers']
    tt = {}
    if a.fd_every:
        print(f"\nunguided FD of the EMA model during training (every {a.fd_every} steps; seconds of training, evaluation excluded)")
        for n, r in results.items():
            print(f"{n:10}" + '  '.join(f"{s:5.0f}s:{fd:6.2f}" for _, s, fd in r['fd_curve']))
            tt[n] = time_to(r['fd_curve'], a.fd_target)
            print(f"{'':10}time to FD <= {a.fd_target:g}: " + (f"{tt[n]:.0f} s" if tt[n] is not None else 'not reached'))
    print(f"RESULT throughput_ratio={dk['samples_per_s'] / df['samples_per_s']:.3f} fd_diffkit={dk['unguided']['fd']:.3f} fd_diffusers={df['unguided']['fd']:.3f} "
          f"kid_diffkit={dk['unguided']['kid']:.5f} kid_diffusers={df['unguided']['kid']:.5f} fd_floor={f['fd_floor']:.3f} "
          f"acc_cfg_diffkit={dk['cfg']['acc']:.4f} acc_unguided_diffkit={dk['unguided']['acc']:.4f} "
          f"acc_cfg_diffusers={df['cfg']['acc']:.4f} acc_unguided_diffusers={df['unguided']['acc']:.4f} seconds={a.seconds:g}"
          + (f" time_to_fd{a.fd_target:g}_diffkit={tt['diffkit']} time_to_fd{a.fd_target:g}_diffusers={tt['diffusers']}" if tt else '')
          + (f" time_to_fd_ratio={tt['diffkit'] / tt['diffusers']:.3f}" if tt and tt['diffkit'] and tt['diffusers'] else ''))


if __name__ == '__main__':
    main()
