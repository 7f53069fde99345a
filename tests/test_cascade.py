"Cascades: bad pipelines and inputs fail clearly, a two-stage cascade trains and samples by one call, the FreCaS switch is exact where it should be, stage checkpoints round-trip."
import math
import pytest
import torch
from diffkit.cascade import (BridgeDenoiser, BridgePath, Cascade, SRNet, Stage, bridge_loss, detail, downsample, load_stage_models,
                             psnr, sample_frecas, save_stage_models, sr_loss, upsample, upsample_renoise, build_stage_model)
from diffkit.checkpoint import CheckpointError
from diffkit.classifier import digits_split
from diffkit.denoiser import Denoiser
from diffkit.models.unet import UNet
from diffkit.objectives import regression_loss
from diffkit.paths import VPCosine, Linear
from diffkit.samplers import sample_dpmpp_2m
from diffkit.toy import GaussianMixture, OracleDenoiser, mixture_log_prob
from diffkit.training import train


def small(cin=1, classes=10, ch=(16, 32)):
    return UNet(in_channels=cin, out_channels=1, channels=ch, num_blocks=1, attn_levels=(), mid_attn=False, num_classes=classes)


@pytest.fixture(scope='module')
def toy():
    torch.manual_seed(0)
    return Cascade([Stage(Denoiser(small()), 8, steps=3, name='base'), Stage(Denoiser(SRNet(small(2))), 16, steps=2, name='sr')])


def test_bad_pipelines_fail_clearly():
    base = Stage(Denoiser(small()), 8)
    with pytest.raises(ValueError, match='mismatched resolutions: size 12 must be an integer multiple'):
        Cascade([base, Stage(Denoiser(SRNet(small(2))), 12)])
    with pytest.raises(ValueError, match='mismatched resolutions: its SRNet upsamples by 2, but 8 -> 32 is a factor 4'):
        Cascade([base, Stage(Denoiser(SRNet(small(2))), 32)])
    with pytest.raises(ValueError, match='expected a super-resolution model'):
        Cascade([base, Stage(Denoiser(small()), 16)])
    with pytest.raises(ValueError, match='expects 2 condition channels, the stage below makes 1'):
        Cascade([base, Stage(Denoiser(SRNet(small(3))), 16)])
    with pytest.raises(ValueError, match='base stage takes no low-resolution condition'):
        Cascade([Stage(Denoiser(SRNet(small(2))), 16)])
    with pytest.raises(TypeError, match='non-empty list of Stage'):
        Cascade([])
    with pytest.raises(TypeError, match='expected a denoiser with a .path'):
        Stage(small(), 8)
    with pytest.raises(ValueError, match='aug_level: expected a level in'):
        Stage(Denoiser(small()), 8, aug_level=1.5)


def test_bad_inputs_fail_clearly(toy):
    y = torch.arange(3)
    with pytest.raises(ValueError, match=r'stage 0 \(base\) is class-conditional: expected y='):
        toy.sample(3)
    with pytest.raises(ValueError, match=r'expected a \(3,\) tensor of labels'):
        toy.sample(3, y=torch.arange(4))
    with pytest.raises(ValueError, match=r'mismatched resolutions: expected \(1, 8, 8\)'):
        toy.sample(low_res=torch.zeros(3, 1, 4, 4), y=y)
    with pytest.raises(ValueError, match='n: expected 3'):
        toy.sample(5, low_res=torch.zeros(3, 1, 8, 8), y=y)
    with pytest.raises(ValueError, match='n: expected a positive number'):
        toy.sample(0, y=y)
    sr = toy.stages[1].model
    with pytest.raises(ValueError, match='low_res: this super-resolution net is conditioned'):
        sr(torch.zeros(3, 1, 16, 16), 0.5, y=y)
    with pytest.raises(ValueError, match=r'low_res: expected shape \(3, 1, 8, 8\)'):
        sr(torch.zeros(3, 1, 16, 16), 0.5, low_res=torch.zeros(3, 1, 16, 16), y=y)
    with pytest.raises(ValueError, match='aug_level: expected times in'):
        sr(torch.zeros(3, 1, 16, 16), 0.5, low_res=torch.zeros(3, 1, 8, 8), aug_level=2., y=y)
    with pytest.raises(ValueError, match='a bridge stage starts from its low-resolution image'):
        BridgeDenoiser(SRNet(small(2)), BridgePath())(torch.zeros(3, 1, 16, 16), 0.5, y=y)
    with pytest.raises(ValueError, match="mode: expected 'exact' or 'x0'"):
        upsample_renoise(torch.zeros(1, 1, 4, 4), 0.5, Linear(), mode='nearest')
    with pytest.raises(ValueError, match='switch time in'):
        upsample_renoise(torch.zeros(1, 1, 4, 4), 1., Linear())


def test_two_stage_cascade_trains_and_samples_by_one_call():
    "Both stages train (loss falls) and one call samples the pipeline; the SR stage reproduces real 16x16 digits better than bilinear upsampling."
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = digits_split(0)
    data = torch.cat([xtr.flatten(1), ytr[:, None].float()], 1)
    unpack = lambda b: (b[:, :-1].reshape(-1, 1, 16, 16), b[:, -1].long())
    torch.manual_seed(0)
    base, lb = train(small(), lambda m, b, g: regression_loss(m, Linear(), downsample(unpack(b)[0]), y=unpack(b)[1], generator=g), data,
                     steps=60, batch_size=64, lr=3e-3, warmup=5, generator=torch.Generator().manual_seed(0))
    sr, ls = train(SRNet(small(2)), lambda m, b, g: sr_loss(m, Linear(), unpack(b)[0], max_aug=0.3, y=unpack(b)[1], generator=g), data,
                   steps=120, batch_size=64, lr=3e-3, warmup=5, generator=torch.Generator().manual_seed(1))
    for losses in (lb, ls): assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    cas = Cascade([Stage(Denoiser(base), 8, steps=10), Stage(Denoiser(sr), 16, steps=6, aug_level=0.05)])
    lo, hi = cas.sample(20, generator=torch.Generator().manual_seed(2), return_all=True, y=torch.arange(20) % 10)
    assert lo.shape == (20, 1, 8, 8) and hi.shape == (20, 1, 16, 16) and hi.isfinite().all() and hi.abs().max() <= 1
    low = downsample(xte[:100])
    x = cas.sample(low_res=low, generator=torch.Generator().manual_seed(3), y=yte[:100])
    assert psnr(x, xte[:100]) > psnr(upsample(low).clamp(-1, 1), xte[:100])
    assert [c['nfe'] for c in cas.cost(y=torch.tensor([0]))] == [10, 6]


def test_bridge_trains_and_samples_in_a_cascade():
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = digits_split(0)
    bp = BridgePath(0.1, 1.)
    torch.manual_seed(0)
    net, ls = train(SRNet(small(2, 0)), lambda m, x, g: bridge_loss(m, bp, x, max_aug=0., generator=g), xtr, steps=100, batch_size=64, lr=3e-3,
                    warmup=5, generator=torch.Generator().manual_seed(0))
    cas = Cascade([Stage(Denoiser(small(1, 0)), 8), Stage(BridgeDenoiser(net, bp), 16, steps=2)])
    low = downsample(xte[:100])
    x = cas.sample(low_res=low, generator=torch.Generator().manual_seed(1))
    assert psnr(x, xte[:100]) > psnr(upsample(low).clamp(-1, 1), xte[:100])    # two steps from the upsampled image already improve on it


def test_renoise_makes_white_noise_on_any_path():
    "With x0 = 0 the switched state must be N(0, sigma(t_h)^2 I) exactly, with sigma/alpha multiplied by the factor."
    g = torch.Generator().manual_seed(0)
    for path, factor in ((Linear(), 2), (VPCosine(), 2), (Linear(), 4)):
        x = path.sample(torch.zeros(40000, 1, 2, 2, dtype=torch.float64), 0.4, generator=g)[0]
        xh, th = upsample_renoise(x, 0.4, path, factor=factor, generator=g)
        tt = torch.tensor(th, dtype=torch.float64)
        lam = path.log_snr(torch.tensor(0.4, dtype=torch.float64))
        assert abs(float(path.log_snr(tt) - (lam - 2 * math.log(factor)))) < 1e-6
        c = torch.cov(xh.flatten(1).T)
        s2 = float(path.sigma(tt)) ** 2
        assert torch.allclose(c.diagonal(), torch.full_like(c.diagonal(), s2), rtol=0.04)
        assert (c - torch.diag(c.diagonal())).abs().max() < 0.04 * s2
    z = torch.randn(3, 1, 8, 8, generator=g)
    assert torch.allclose(downsample(detail(z)), torch.zeros(3, 1, 4, 4), atol=1e-6)


def test_frecas_on_the_exact_denoiser():
    "A Gaussian mixture of 8x8 images and its 4x4 average-pooled mixture: the derived switch keeps the likelihood and the block-mean variance; the naive switch does not."
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 1, 8, 8, generator=g) * 0.5
    gm_hi, gm_lo = GaussianMixture(mu.flatten(1), 0.25 ** 2), GaussianMixture(downsample(mu).flatten(1), 0.125 ** 2)

    class Oracle:
        path = Linear()
        o = {8: OracleDenoiser(gm_hi), 4: OracleDenoiser(gm_lo)}
        def __call__(self, x, t, **cond): return self.o[x.shape[-1]](x.flatten(1), t).view_as(x)
    D, n = Oracle(), 300
    ll = lambda x: mixture_log_prob(gm_hi, x.flatten(1)).mean().item()
    ref = ll(gm_hi.sample(n, generator=g).view(n, 1, 8, 8))
    noise = torch.randn(n, 1, 4, 4, generator=g)
    exact = sample_frecas(D, noise, 0.5, (10, 10), mode='exact', generator=torch.Generator().manual_seed(1))
    mid = sample_dpmpp_2m(D, noise, torch.linspace(1, 0.5, 11, dtype=torch.float64))
    naive = sample_dpmpp_2m(D, upsample(mid, 2, 'nearest'), torch.linspace(0.5, 0, 11, dtype=torch.float64))
    assert abs(ll(exact) - ref) < 2. and ll(naive) < ll(exact) - 2.     # measured: |exact - ref| 0.64 nats, naive 3.8 below exact
    def block_var(x):                                                   # within-component variance of the 2x2 block means / the truth's
        e = x - mu[torch.cdist(x.flatten(1), gm_hi.means).argmin(1)]
        return (downsample(e).pow(2).mean() / (0.25 ** 2 / 4)).item()
    assert 0.8 < block_var(exact) < 1.25 and block_var(naive) > 2.5     # measured: 1.02 and 3.75


def test_stage_models_round_trip(tmp_path):
    specs = {'base': dict(model='UNet_S', kwargs=dict(channels=(16, 32), num_blocks=1, attn_levels=(), mid_attn=False, num_classes=10)),
             'bridge': dict(model='UNet_S', kwargs=dict(in_channels=2, out_channels=1, channels=(16, 32), num_blocks=1, attn_levels=(), mid_attn=False),
                            sr=dict(factor=2), bridge=dict(prior_std=0.2, noise=0.5))}
    torch.manual_seed(0)
    models = {k: build_stage_model(s) for k, s in specs.items()}
    for m in models.values():
        for p in m.parameters(): torch.nn.init.normal_(p, std=0.05)
    save_stage_models(tmp_path / 'c', models, specs, dict(note='x'))
    back, info = load_stage_models(tmp_path / 'c')
    assert info == dict(note='x') and isinstance(back['bridge'], BridgeDenoiser) and back['bridge'].path.prior_std == 0.2
    x, lo = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 8, 8)
    assert torch.allclose(back['bridge'](x, 0.5, low_res=lo), models['bridge'](x, 0.5, low_res=lo), atol=2e-2)   # fp16 weights
    (tmp_path / 'c.safetensors').write_bytes((tmp_path / 'c.safetensors').read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        load_stage_models(tmp_path / 'c')
    with pytest.raises(ValueError, match='one spec per model'):
        save_stage_models(tmp_path / 'd', models, {'base': specs['base']})

