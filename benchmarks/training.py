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
from diffkit.classifier import digits_quality, digits_split
from diffkit.denoiser import Denoiser
from diffkit.guidance import CFG
from diffkit.interop import DiffusersBackbone
from diffkit.models.layers import count_params_flops
from diffkit.models.registry import get_model
from diffkit.objectives import drop_labels, regression_loss
from diffkit.paths import Linear
from diffkit.samplers import sample_dpmpp_2m, uniform_grid
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


def run(name, data, seconds, batch_size, seed, n_eval, steps_eval, guidance):
    path = Linear()
    torch.manual_seed(seed)
    net = make(name)
    params = sum(p.numel() for p in net.parameters())
    # throughput first (20 steps), so that the cosine schedule ends at the time limit
    probe = Trainer(make(name), loss_fn(path), data, steps=20, batch_size=batch_size, warmup=5, generator=torch.Generator().manual_seed(seed))
    t0 = time.time(); probe.fit(); rate = 20 / (time.time() - t0)
    steps = max(50, int(rate * seconds))
    t_end = [None]
    def stop(tr):
        if time.time() > t_end[0]: raise StopTraining
    tr = Trainer(net, loss_fn(path), data, steps=steps, batch_size=batch_size, lr=2e-3, warmup=min(200, steps // 10),
                 ema_decay=0.999, generator=torch.Generator().manual_seed(seed), callbacks=[stop])
    t0 = time.time(); t_end[0] = t0 + 1.2 * seconds
    model, losses = tr.fit()
    train_s = time.time() - t0
    D = Denoiser(model, path, 'velocity')
    g = torch.Generator().manual_seed(seed + 1)
    x1 = torch.randn(n_eval, 1, 16, 16, generator=g)
    y = torch.arange(n_eval) % 10
    res = dict(name=name, params=params, steps=tr.step, train_seconds=train_s, samples_per_s=tr.step * batch_size / train_s,
               final_loss=sum(losses[-100:]) / len(losses[-100:]))
    with torch.no_grad():
        for label, model_ in (('unguided', D), ('cfg', CFG(D, guidance, null_cond={'y': 10}))):
            t0 = time.time()
            xs = sample_dpmpp_2m(model_, x1, uniform_grid(steps_eval), extra_args=dict(y=y)).clamp(-1, 1)
            q = digits_quality(xs, y, verbose=False)
            res[label] = dict(fd=q['fd'], fd_floor=q['fd_floor'], kid=q['kid'], kid_std=q['kid_std'], kid_floor=q['kid_floor'],
                              acc=q['acc'], acc_floor=q['acc_floor'], sample_seconds=time.time() - t0)
    return res, model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--seconds', type=float, default=420)
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--n-eval', type=int, default=359)
    ap.add_argument('--sample-steps', type=int, default=20)
    ap.add_argument('--guidance', type=float, default=2.)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--save', help='save the diffkit model (EMA) to this safetensors file, with a JSON beside it')
    ap.add_argument('--quick', action='store_true')
    a = ap.parse_args()
    xtr, ytr, _, _ = digits_split(0)                          # the classifier's held-out images stay unseen
    data = torch.cat([xtr.flatten(1), ytr[:, None].float()], 1)
    results = {}
    for name in ('diffkit', 'diffusers'):
        results[name], model = run(name, data, a.seconds, a.batch_size, a.seed, a.n_eval, a.sample_steps, a.guidance)
        if name == 'diffkit' and a.save:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.save)
            Path(a.save).with_suffix('.json').write_text(json.dumps(dict(model='UNet_S', kwargs=dict(num_classes=10), path='linear',
                target='velocity', command='python benchmarks/training.py ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items() if v not in (None, False)),
                metrics=results[name]), indent=1))
    print(f"{'':10}{'params':>9}{'steps':>7}{'samples/s':>11}{'loss':>8} | {'FD':>7}{'KID*1e3':>9}{'acc':>7} (unguided) | {'FD':>7}{'KID*1e3':>9}{'acc':>7} (CFG {a.guidance:g})")
    for n, r in results.items():
        u, c = r['unguided'], r['cfg']
        print(f"{n:10}{r['params'] / 1e6:8.2f}M{r['steps']:7d}{r['samples_per_s']:11.0f}{r['final_loss']:8.4f} | {u['fd']:7.2f}{1e3 * u['kid']:9.2f}{100 * u['acc']:6.1f}% | {c['fd']:7.2f}{1e3 * c['kid']:9.2f}{100 * c['acc']:6.1f}%")
    f = results['diffkit']['unguided']
    print(f"{'floor':10}{'':35} | {f['fd_floor']:7.2f}{1e3 * f['kid_floor']:9.2f}{100 * f['acc_floor']:6.1f}%  (held-out vs {a.n_eval} training images)")
    dk, df = results['diffkit'], results['diffusers']
    print(f"RESULT throughput_ratio={dk['samples_per_s'] / df['samples_per_s']:.3f} fd_diffkit={dk['unguided']['fd']:.3f} fd_diffusers={df['unguided']['fd']:.3f} "
          f"kid_diffkit={dk['unguided']['kid']:.5f} kid_diffusers={df['unguided']['kid']:.5f} fd_floor={f['fd_floor']:.3f} "
          f"acc_cfg_diffkit={dk['cfg']['acc']:.4f} acc_unguided_diffkit={dk['unguided']['acc']:.4f} "
          f"acc_cfg_diffusers={df['cfg']['acc']:.4f} acc_unguided_diffusers={df['unguided']['acc']:.4f} seconds={a.seconds:g}")


if __name__ == '__main__':
    main()
