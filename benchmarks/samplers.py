"""Sampler loop overhead and accuracy, diffkit against diffusers on the same model and inputs, in one run.

    PYTHONPATH=. python benchmarks/samplers.py [--quick]

Loop overhead = wall time of a whole sampling run / (NFE x one bare network forward), so 1.00 means the sampler
costs nothing beyond the network. Both sides call the same network: diffkit through `Denoiser` (its prediction
conversion counts as overhead), diffusers through `scale_model_input` + `step` (and `set_timesteps`, as our
coefficient precomputation is counted). Models: the registry's small UNet (`UNet_S`, 1.3M parameters, 16x16, batch 16;
RESULT's overhead_unet), a tiny conv net on 16x16 images (`TinyConvStandIn`, four 3x3 convs, whose forward is cheap
enough for the loop to show; overhead_conv) and a tiny 2-D MLP at batch 64, where loop overhead dominates.
Accuracy: the exact denoiser of a Gaussian mixture (the oracle), started from the same noise at diffusers' largest
noise level; the exact answer is the PF-ODE solution from that noise (adaptive Dormand-Prince, rtol 1e-10).
Timings are the minimum over interleaved repeats (the least-disturbed run), single-threaded (torch.set_num_threads(1))
so that a shared machine disturbs them less; even so, on a loaded machine treat differences under ~10% as noise.

Measured (2026-12-01, `OMP_NUM_THREADS=1 python benchmarks/samplers.py`, 2-core machine with one other single-thread
job on the second core): MLP (0.615 ms forward) ours euler 1.041, DPM++ 2M 1.061, 3M 1.068, iPNDM 1.073, UniPC 1.106,
LMS 1.109; diffusers DDIM 1.351, euler 1.288, DPM++ 2M 1.540, UniPC 2.364. UNet_S (48 ms forward) ours 0.99-1.09
(single UNet ratios carry about +-10% timing noise here), diffusers 1.01-1.06.
RESULT overhead_unet=0.991 overhead_conv=1.028 overhead_mlp=1.061 overhead_vs_diffusers_mlp=0.689
err_nfe10_vs_diffusers=0.719 worst_multistep_mlp=1.109 worst_unet=1.092
"""
import argparse, sys, time
from pathlib import Path
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffkit.denoiser import Denoiser  # noqa: E402
from diffkit.models.layers import TimeEmbedding  # noqa: E402
from diffkit.models.mlp import TimeMLP  # noqa: E402
from diffkit.models.registry import get_model  # noqa: E402
from diffkit.paths import EDM, VPLinear  # noqa: E402
from diffkit.samplers import (get_grid, sample_adaptive, sample_dpmpp_2m, sample_dpmpp_3m, sample_euler, sample_ipndm,  # noqa: E402
                              sample_lms, sample_unipc)
from diffkit.toy import random_mixture  # noqa: E402

try:
    import diffusers
except ImportError as e:  # pragma: no cover
    raise SystemExit(f"this benchmark compares against diffusers: pip install diffusers ({e})")


class TinyConvStandIn(nn.Module):
    "Stand-in for a small UNet: four 3x3 convs at 16x16, time embedding added after the first (eps prediction)."
    def __init__(self, ch: int = 3, width: int = 64):
        super().__init__()
        self.inp, self.temb = nn.Conv2d(ch, width, 3, padding=1), TimeEmbedding(width)
        self.mid = nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.out = nn.Conv2d(width, ch, 3, padding=1)
    def forward(self, x, t):
        return self.out(self.mid(self.inp(x) + self.temb(t)[:, :, None, None]))


class SigmaLinear(EDM):
    "The VE view of a discrete VP schedule with sigma linear in t (alpha = 1, sigma = S t): EDM's map with rho = 1, sigma_min = 0."
    def __init__(self, S: float): super().__init__(sigma_min=0., sigma_max=S, rho=1.); self.S = S


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return out


def diffusers_loop(sched, steps, net, x):
    sched.set_timesteps(steps)
    for tau in sched.timesteps:
        x = sched.step(net(sched.scale_model_input(x, tau), tau), tau, x).prev_sample
    return x


@torch.no_grad()
def overhead_table(name, net, x, steps, reps):
    "Overheads of our samplers and diffusers' schedulers on one network; all runs interleaved."
    path = VPLinear()
    D = Denoiser(net, path, 'eps')
    ts = get_grid('uniform', steps, t_max=1., t_min=1e-3)
    tbs = [x.new_full((x.shape[0],), t) for t in ts.tolist()[:-1]]
    dnet = lambda xx, tau: net(xx, tau.float().expand(xx.shape[0]) / 1000)     # same network, diffusers' timestep
    sch = dict(ddim=diffusers.DDIMScheduler(clip_sample=False), euler=diffusers.EulerDiscreteScheduler(),
               dpmpp_2m=diffusers.DPMSolverMultistepScheduler(), unipc=diffusers.UniPCMultistepScheduler())
    runs = {
        'forward floor': lambda: [net(x, tb) for tb in tbs],
        'ours euler': lambda: sample_euler(D, x, ts), 'ours dpmpp_2m': lambda: sample_dpmpp_2m(D, x, ts),
        'ours dpmpp_3m': lambda: sample_dpmpp_3m(D, x, ts), 'ours unipc': lambda: sample_unipc(D, x, ts),
        'ours lms': lambda: sample_lms(D, x, ts), 'ours ipndm': lambda: sample_ipndm(D, x, ts),
        **{f'diffusers {k}': (lambda s=s: diffusers_loop(s, steps, dnet, x.clone())) for k, s in sch.items()},
    }
    for f in runs.values(): f()                                                    # warm-up
    times = {k: [] for k in runs}
    for _ in range(reps):
        for k, f in runs.items(): times[k] += timed(f, 1)
    floor = min(times['forward floor']) / steps
    res = {k: min(v) / (steps * floor) for k, v in times.items()}
    print(f"\n{name}: one forward {floor * 1e3:.3f} ms, NFE {steps}, {reps} interleaved repeats (min)")
    for k, v in res.items(): print(f"  {k:22s} {v:6.3f}x")
    return res


def make_eps_unet(sched, S, gm):
    "The mixture's exact denoiser as diffusers' eps(x_vp, timestep), and as our x0 denoiser on the SigmaLinear view."
    from diffkit.toy import mixture_x0
    full = np.sqrt((1 - sched.alphas_cumprod.double().numpy()) / sched.alphas_cumprod.double().numpy())
    path = SigmaLinear(S)
    class D:
        def __init__(self): self.path = path
        def __call__(self, x, t): return mixture_x0(gm, x, t, path)
    d = D()
    def unet(x_vp, tau):
        sig = float(np.interp(float(tau), np.arange(len(full)), full))
        a = 1 / (1 + sig ** 2) ** 0.5
        x0 = d(x_vp / a, torch.full((x_vp.shape[0],), sig / S, dtype=torch.float64))
        return (x_vp - a * x0) / (a * sig)
    return unet, d, full


@torch.no_grad()
def accuracy(n=512, nfes=(5, 10, 20)):
    gm = random_mixture(k=4, dim=2, scale=1.5, seed=4)
    probe = diffusers.DPMSolverMultistepScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012)
    probe.set_timesteps(10)
    S = float(probe.sigmas.max())                                # 14.61: the first noise level of every grid below
    unet, D, full = make_eps_unet(probe, S, gm)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_ve = noise * (1 + S ** 2) ** 0.5
    s_min = float(full[0]) / S
    exact = sample_adaptive(D, x_ve, [1., s_min, 0.], rtol=1e-10, atol=1e-10)
    # the last jump from sigma_min = full[0] to 0 is part of every sampler; the "exact" run does it too (x = D at sigma_min)
    rows = {}
    for nfe in nfes:
        sched = diffusers.DPMSolverMultistepScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012)
        theirs = diffusers_loop(sched, nfe, unet, noise.clone())
        sched.set_timesteps(nfe)
        same_grid = sample_dpmpp_2m(D, x_ve, sched.sigmas.double() / S)
        ours = sample_dpmpp_2m(D, x_ve, torch.cat([get_grid('logsnr', nfe - 1, D.path, t_max=1., t_min=s_min), torch.zeros(1, dtype=torch.float64)]))
        err = lambda y: (y - exact).norm(dim=1).mean().item()
        rows[nfe] = (err(theirs), err(same_grid), err(ours))
    print("\nDPM-Solver++(2M) error against the exact PF-ODE solution (oracle, SD scaled_linear schedule, same noise)")
    print(f"  {'NFE':>4s} {'diffusers':>10s} {'ours, their grid':>17s} {'ours, logSNR grid':>18s}")
    for nfe, (a, b, c) in rows.items(): print(f"  {nfe:4d} {a:10.3e} {b:17.3e} {c:18.3e}")
    return rows


if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--quick', action='store_true'); args = ap.parse_args()
    torch.manual_seed(0); torch.set_num_threads(1)
    reps = 3 if args.quick else 9
    unet = get_model('UNet_S').eval()
    torch.nn.init.normal_(unet.out[-1].weight, std=0.02)                     # a non-zero (untrained) eps prediction
    unet_res = overhead_table('UNet_S (16x16x1, batch 16)', unet, torch.randn(16, 1, 16, 16), 20, reps)
    conv = TinyConvStandIn().eval()
    conv_res = overhead_table('TinyConvStandIn (16x16x3, batch 16)', conv, torch.randn(16, 3, 16, 16), 20, reps)
    mlp = TimeMLP(dim=2, width=128, depth=3).eval()
    torch.nn.init.normal_(mlp.out[-1].weight, std=0.1)
    mlp_res = overhead_table('TimeMLP (2-D, width 128, depth 3, batch 64)', mlp, torch.randn(64, 2), 20, reps * 3)
    rows = accuracy()
    worst_ours = max(v for k, v in mlp_res.items() if k.startswith('ours') and k != 'ours euler')
    print(f"\nworst multistep loop of ours on the MLP: {worst_ours:.3f}x")
    worst_unet = max(v for k, v in unet_res.items() if k.startswith('ours'))
    print(f"RESULT overhead_unet={unet_res['ours dpmpp_2m']:.3f} overhead_conv={conv_res['ours dpmpp_2m']:.3f} overhead_mlp={mlp_res['ours dpmpp_2m']:.3f} "
          f"overhead_vs_diffusers_mlp={mlp_res['ours dpmpp_2m'] / mlp_res['diffusers dpmpp_2m']:.3f} "
          f"err_nfe10_vs_diffusers={rows[10][2] / rows[10][0]:.3f} worst_multistep_mlp={worst_ours:.3f} worst_unet={worst_unet:.3f}")
