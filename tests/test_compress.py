"Compression (diffkit.accel.quant, diffkit.accel.prune) on the zoo UNet and small DiTs: time-grouped calibration beats one range, int8 kernels match fake quantisation, packed sizes, pruning mechanics and TinyFusion's mask."
import copy
import pytest
import torch
from torch import nn
from diffkit.accel.prune import (LayerMask, channel_groups, group_flops, learn_layer_mask, magnitude_importance, output_importance,
                                 prune_channels, prune_depth, recover, resblocks, select_groups)
from diffkit.accel.quant import (Int8Conv2d, Int8Linear, QuantConv2d, QuantContext, QuantDenoiser, QuantLinear, calibrate, cpu_has_vnni,
                                 dequantize_weight, int8_available, int8_weight_bits, log_dequantize_weight, packed_state_dict,
                                 quant_params, state_bytes, to_int8, unpack_int4)
from diffkit.classifier import digits_split
from diffkit.denoiser import Denoiser
from diffkit.guidance import CFG
from diffkit.models.registry import get_model
from diffkit.samplers import sample_dpmpp_2m, sample_euler, uniform_grid
from diffkit.zoo import load_zoo

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def unet():
    return load_zoo('digits_unet_s')


def _noise(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.arange(n) % 10


def _dit(depth=4, seed=0):
    "A small class-conditional DiT with non-zero adaLN gates (the zero init would make every block the identity)."
    torch.manual_seed(seed)
    net = get_model('DiT_XS_2', num_classes=10, depth=depth)
    for b in net.blocks: nn.init.normal_(b.adaLN_modulation[-1].weight, std=0.05)
    nn.init.normal_(net.final_layer.linear.weight, std=0.05)
    return net.eval().requires_grad_(False)


def test_time_groups_beat_one_range(unet):
    "W8A8 with input ranges per group of timesteps is closer to fp32 than the same quantiser with one range, on other noise."
    ts = uniform_grid(10)
    (xc, yc), (xe, ye) = _noise(16, 1), _noise(16, 2)
    ref = sample_dpmpp_2m(unet, xe, ts, extra_args=dict(y=ye))
    q = calibrate(QuantDenoiser(unet, wbits=8, abits=8), xc, ts, 1, extra_args=dict(y=yc))
    err = lambda m: float((sample_dpmpp_2m(m, xe, ts, extra_args=dict(y=ye)) - ref).pow(2).mean().sqrt())
    one, five = err(q), err(q.set_groups(5))
    assert five < 0.8 * one, (one, five)
    # the wrapper keeps the denoiser signature: another sampler and CFG run unchanged, and close to fp32
    x = sample_euler(CFG(q, 2., null_cond={'y': 10}), xe[:4], ts, extra_args=dict(y=ye[:4]))
    x_ref = sample_euler(CFG(unet, 2., null_cond={'y': 10}), xe[:4], ts, extra_args=dict(y=ye[:4]))
    assert float((x - x_ref).pow(2).mean().sqrt()) < 0.05


def test_mixed_times_split_by_group(unet):
    "A batch whose samples fall in different time groups equals the per-sample calls."
    ts = uniform_grid(6)
    xc, yc = _noise(4, 3)
    q = calibrate(QuantDenoiser(unet, wbits=8, abits=8), xc, ts, 3, extra_args=dict(y=yc))
    x, y = _noise(3, 4)
    t = torch.tensor([0.9, 0.5, 0.1])
    together = q(x, t, y=y)
    apart = torch.cat([q(x[i:i + 1], t[i:i + 1], y=y[i:i + 1]) for i in range(3)])
    edges, q.edges = q.edges, torch.zeros(0, dtype=torch.float64)           # every sample in group 0: the wrong ranges for two of them
    wrong = q(x, t, y=y); q.edges = edges
    d, d_wrong = float((together - apart).abs().max()), float((wrong - apart).abs().max())
    assert d < 0.1 * d_wrong, (d, d_wrong)              # equal up to float noise (a batch of 3 and of 1 round differently)
    assert torch.bucketize(t.double(), q.edges).tolist() == [2, 1, 0]


@pytest.mark.skipif(not int8_available(), reason='no oneDNN quantised kernels in this PyTorch')
def test_int8_kernels_match_fake_quant(unet):
    "oneDNN int8 layers equal their fake-quantised twins; the int8 UNet tracks the fake one; 8-bit weights are refused where u8 x s8 saturates."
    g = torch.Generator().manual_seed(0)
    ctx = QuantContext(); ctx.mode, ctx.group = 'quant', torch.zeros(3, dtype=torch.long)
    for layer, x in ((nn.Conv2d(24, 40, 3, stride=2, padding=1), torch.randn(3, 24, 8, 8, generator=g)),
                     (nn.Conv2d(16, 8, 1), torch.rand(3, 16, 4, 4, generator=g) * 3),
                     (nn.Linear(48, 80), torch.randn(3, 7, 48, generator=g) * 2 - 1)):
        Q, I = (QuantConv2d, Int8Conv2d) if isinstance(layer, nn.Conv2d) else (QuantLinear, Int8Linear)
        q = Q(layer, ctx, wbits=int8_weight_bits(), abits=8)
        q.a_scale, q.a_zero = quant_params(x.min()[None], x.max()[None], 8, False)
        assert torch.allclose(I(q)(x), q(x), atol=1e-4)
        if not cpu_has_vnni():
            q8 = Q(layer, ctx, wbits=8, abits=8); q8.a_scale, q8.a_zero = q.a_scale, q.a_zero
            with pytest.raises(ValueError, match='saturating'): I(q8)
    ts = uniform_grid(8)
    xc, yc = _noise(8, 5)
    q = calibrate(QuantDenoiser(unet, wbits=int8_weight_bits(), abits=8), xc, ts, 2, extra_args=dict(y=yc))
    qi = to_int8(q)
    x, y = _noise(8, 6)
    t = torch.full((8,), 0.6)
    xt = 0.4 * torch.tanh(x) + 0.6 * torch.randn(x.shape, generator=g)
    d_int8, d_quant = (float((qi(xt, t, y=y) - m(xt, t, y=y)).pow(2).mean().sqrt()) for m in (q, unet))
    assert d_int8 < 0.5 * d_quant, (d_int8, d_quant)
    with pytest.raises(ValueError, match='8-bit inputs'): to_int8(QuantDenoiser(unet, wbits=int8_weight_bits(), abits=None))


@pytest.mark.skipif(not int8_available(), reason='no oneDNN quantised kernels in this PyTorch')
def test_int8_dit():
    "The DiT's token Linears (3-D inputs) and patch convolution run in int8 too."
    net = _dit()
    D = Denoiser(net, 'linear', 'velocity')
    xc, yc = _noise(4, 7)
    q = calibrate(QuantDenoiser(D, wbits=int8_weight_bits(), abits=8), xc, uniform_grid(6), 2, extra_args=dict(y=yc))
    x, y = _noise(4, 8)
    t = torch.full((4,), 0.7)
    a, b, c = to_int8(q)(x, t, y=y), q(x, t, y=y), D(x, t, y=y)
    assert float((a - b).pow(2).mean().sqrt()) < 0.5 * float((b - c).pow(2).mean().sqrt()) + 1e-6


def test_packed_sizes_and_codes(unet):
    "Checkpoint payloads: int8 about 4x and int4 about 8x smaller than fp32; the stored codes rebuild the fake-quantised weights."
    full = state_bytes(unet.state_dict())
    q8, q4 = QuantDenoiser(unet, wbits=8, abits=None), QuantDenoiser(unet, wbits=4, abits=None)
    r8, r4 = full / state_bytes(packed_state_dict(q8)), full / state_bytes(packed_state_dict(q4))
    assert 3.8 < r8 <= 4 and 7.0 < r4 <= 8, (r8, r4)
    name = 'net.middle_block.0.conv2'
    for kw in (dict(wbits=4, granularity='group', group_size=64, w_symmetric=False), dict(wbits=4, wlog=True), dict(wbits=8)):
        q = QuantDenoiser(unet, abits=None, **kw)
        sd, layer = packed_state_dict(q), q.layers()['denoiser.' + name]
        w = layer.weight
        if f'{name}.qweight4' in sd:
            codes = unpack_int4(sd[f'{name}.qweight4'], layer.codes[0].shape)
        else: codes = sd[f'{name}.qweight']
        if kw.get('wlog'): w_hat = log_dequantize_weight(codes, sd[f'{name}.scale'].float(), sd[f'{name}.bases'].float(), 4, w.shape)
        else:
            zero = sd.get(f'{name}.zero')
            zero = torch.zeros(1) if zero is None else zero.float()[..., None]
            w_hat = dequantize_weight(codes.float(), sd[f'{name}.scale'].float()[..., None], zero, w.shape)
        assert torch.allclose(w_hat, layer.w_hat, atol=2e-3 * float(w.abs().max())), kw    # fp16 scales


def test_quant_errors(unet):
    with pytest.raises(ValueError, match='granularity'): QuantDenoiser(unet, granularity='row')
    with pytest.raises(ValueError, match='abits'): QuantDenoiser(unet, abits=16)
    with pytest.raises(ValueError, match='calibrate'): QuantDenoiser(unet).set_groups(2)
    with pytest.raises(ValueError, match='rotate'): QuantDenoiser(unet).set_groups(2, rotate='yes')
    with pytest.raises(TypeError, match='QuantDenoiser'): calibrate(unet, *_noise(2, 0), uniform_grid(4))
    with pytest.raises(ValueError, match='Linear or nn.Conv2d'): QuantDenoiser(nn.Sequential(nn.ReLU()))


def test_channel_pruning_exact_and_smaller(unet):
    "Removing a GroupNorm group equals zeroing it; keeping all reproduces the net; output importance beats magnitude at equal FLOPs."
    net = unet.net
    x, y = _noise(8, 9)
    t = torch.rand(8, generator=torch.Generator().manual_seed(1))
    xt = (1 - t[:, None, None, None]) * torch.tanh(2 * x) + t[:, None, None, None] * torch.randn(x.shape)
    every = {n: list(range(len(channel_groups(b)))) for n, b in resblocks(net).items()}
    assert torch.allclose(prune_channels(net, every)(xt, t, y=y), net(xt, t, y=y), atol=1e-5)
    imp = output_importance(unet, xt, t, y=y)
    cost = group_flops(net, xt[:1], t[:1], y=y[:1])
    keep = select_groups(imp, 0.3, cost)
    removed = sum(cost[(n, j)] for n, gs in every.items() for j in gs if j not in keep[n])
    assert removed >= 0.3 * sum(cost.values()) and all(len(v) >= 1 for v in keep.values())
    small = prune_channels(net, keep)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    err = lambda k: float((prune_channels(net, k)(xt, t, y=y) - net(xt, t, y=y)).pow(2).mean())
    assert err(keep) < err(select_groups(magnitude_importance(net), 0.3, cost))
    with pytest.raises(ValueError, match='fraction'): select_groups(imp, 1.2)
    with pytest.raises(ValueError, match='unknown residual block'): prune_channels(net, {'nope': [0]})


def test_layer_mask_learns_which_blocks_matter():
    "A teacher whose blocks 1 and 2 are no-ops (zero gates): TinyFusion's 1:2 mask learns to keep blocks 0 and 3."
    teacher = _dit(depth=4, seed=1)
    for i in (1, 2): nn.init.zeros_(teacher.blocks[i].adaLN_modulation[-1].weight); nn.init.zeros_(teacher.blocks[i].adaLN_modulation[-1].bias)
    xtr, ytr, _, _ = digits_split()
    mask, _, hist = learn_layer_mask(teacher, teacher, 'linear', xtr[:256], ytr[:256], keep=1, group=2, steps=30, batch_size=8,
                                     lr_mask=0.2, lr_weights=0., seed=0)
    assert mask.best() == [0, 3], mask.probs()
    assert float(mask.probs()[0, 0]) > 0.7 and float(mask.probs()[1, 1]) > 0.7
    small = prune_depth(teacher, mask.best())
    assert len(small.blocks) == 2 and small.config['kept_blocks'] == [0, 3]
    with pytest.raises(ValueError, match='group dividing'): LayerMask(4, 1, 3)
    with pytest.raises(ValueError, match='ModuleList'): learn_layer_mask(nn.Linear(2, 2), teacher, 'linear', xtr[:8])


def test_recover_lowers_distillation_loss():
    "A depth-pruned DiT distilled from its teacher for a few steps reduces the loss and keeps wall and CPU time."
    teacher = _dit(depth=4, seed=2)
    xtr, ytr, _, _ = digits_split()
    student, info = recover(prune_depth(teacher, [0, 2]), teacher, 'linear', xtr[:512], ytr[:512], steps=40, batch_size=16, lr=2e-3, ema_decay=None)
    assert info['loss_end'] < 0.8 * info['loss_start'], info
    assert info['cpu_s'] > 0 and info['wall_s'] > 0 and not any(p.requires_grad for p in student.parameters())
