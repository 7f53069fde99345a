"Backbone presets: shapes, gradients, determinism, eager-only, bf16 autocast on CPU, and the Denoiser/sampler contract."
import pytest, torch
from diffkit.denoiser import Denoiser
from diffkit.models.dit import DiT
from diffkit.models.layers import count_params_flops, null_labels
from diffkit.models.registry import MODELS, get_model
from diffkit.models.unet import UNet_S
from diffkit.samplers import sample_euler, uniform_grid

IMAGE = [n for n in MODELS if not n.startswith('MLP')]


def inputs(name, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, generator=g) if name.startswith('MLP') else torch.randn(b, 1, 16, 16, generator=g)
    return x, torch.rand(b, generator=g), torch.randint(0, 11, (b,), generator=g)  # label 10 = null class


def perturbed(name):
    "A preset whose zero-initialised layers got small random weights, so outputs and gradients are non-trivial."
    torch.manual_seed(0)
    net = get_model(name, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0: p.normal_(0, 0.02)
    return net


@pytest.mark.parametrize('name', list(MODELS))
def test_forward_backward(name):
    net = perturbed(name)
    x, t, y = inputs(name)
    x.requires_grad_(True)
    out = net(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), 'every parameter takes part in the forward'
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('name', list(MODELS))
def test_deterministic(name):
    x, t, y = inputs(name)
    a, b = perturbed(name), perturbed(name)
    with torch.no_grad():
        assert torch.equal(a(x, t, y), b(x, t, y))              # same seed, same weights, same output
        assert torch.equal(a(x, t, y), a(x, t, y))              # no hidden state between calls
        one = a(x[:1], t[:1], y[:1])
    torch.testing.assert_close(one, a(x, t, y)[:1].detach(), rtol=1e-4, atol=1e-5)   # batch-size invariant


@pytest.mark.parametrize('name', list(MODELS))
def test_zero_init(name):
    x, t, y = inputs(name)
    with torch.no_grad(): assert get_model(name, num_classes=10)(x, t, y).abs().max() == 0


@pytest.mark.parametrize('name', IMAGE)
def test_eager_without_compile(name, monkeypatch):
    "Nothing in a forward or backward calls torch.compile."
    def boom(*a, **k): raise AssertionError('torch.compile was called')
    monkeypatch.setattr(torch, 'compile', boom)
    net = perturbed(name)
    x, t, y = inputs(name)
    net(x, t, y).sum().backward()


@pytest.mark.parametrize('name', IMAGE)
def test_bf16_autocast_cpu(name):
    net = perturbed(name)
    x, t, y = inputs(name)
    with torch.no_grad():
        ref = net(x, t, y)
        with torch.autocast('cpu', dtype=torch.bfloat16): low = net(x, t, y)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    err = (low.float() - ref).norm() / ref.norm()
    assert err < 0.1, f'bf16 relative error {err:.3f}'


def test_dit_options():
    torch.manual_seed(0)
    for kw in (dict(rope=True), dict(qk_norm=True), dict(rope=True, qk_norm=True)):
        net = DiT(hidden_size=64, depth=2, num_heads=2, num_classes=10, **kw)
        x, t, y = inputs('DiT')
        out = net(x, t, y)
        assert out.shape == x.shape
        out.sum().backward()


def test_denoiser_and_sampler():
    "A velocity-predicting UNet wrapped by Denoiser samples with sample_euler, conditioned through extra_args."
    torch.manual_seed(0)
    net = UNet_S(num_classes=10)
    with torch.no_grad(): net.out[-1].weight.normal_(0, 0.02)
    D = Denoiser(net, 'linear', 'velocity')
    x1 = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2, 10])
    seen = []
    x0 = sample_euler(D, x1, uniform_grid(3), extra_args={'y': y}, callback=seen.append)
    assert x0.shape == x1.shape and torch.isfinite(x0).all() and len(seen) == 3
    # Euler on the linear path: x_{t'} = x_t + (t' - t) v, with v the network's output
    with torch.no_grad():
        ts = uniform_grid(3).tolist(); x = x1
        for a, b in zip(ts[:-1], ts[1:]): x = x + (b - a) * net(x, torch.full((3,), a), y)
    torch.testing.assert_close(x0, x, rtol=1e-4, atol=1e-5)
    uncond = sample_euler(D, x1, uniform_grid(2), extra_args={'y': null_labels(3, 10)})
    assert uncond.shape == x1.shape


def test_unet_cache_and_skips():
    net = perturbed('UNet_S')
    x, t, y = inputs('UNet_S', 4)
    with torch.no_grad():
        full = net(x, t, y)
        cache = {'depth': 1}
        torch.testing.assert_close(net(x, t, y, cache=cache), full)
        torch.testing.assert_close(net(x, t, y, cache=cache), full)
        x2 = x + 0.1 * torch.randn_like(x)
        assert not torch.allclose(net(x2, t, y, cache=cache), net(x2, t, y))   # the reused deep features are stale
        assert torch.equal(net(x, t, y, skip_scale=1.), full)
    _, f_full = count_params_flops(net, x, t, y, verbose=False)
    _, f_shallow = count_params_flops(net, x, t, y, cache=cache, verbose=False)
    assert 0 < f_shallow < 0.5 * f_full


@pytest.mark.parametrize('fn,exc,msg', [
    (lambda: get_model('UNet_XL'), ValueError, "unknown model 'UNet_XL'"),
    (lambda: UNet_S(num_classes=10)(torch.randn(2, 1, 16, 16), 0.5, torch.tensor([0, 11])), ValueError, 'expected labels in 0..10'),
    (lambda: UNet_S()(torch.randn(2, 3, 16, 16), 0.5), ValueError, 'expected (batch, 1, H, W)'),
    (lambda: UNet_S()(torch.randn(2, 1, 16, 16), 0.5, skip_scale=[1.]), ValueError, 'expected a float or'),
    (lambda: UNet_S()(torch.randn(2, 1, 16, 16), 0.5, cache={'depth': 99}), ValueError, "cache['depth']"),
    (lambda: DiT()(torch.randn(2, 1, 16), 0.5), ValueError, 'expected 4 dimensions'),
    (lambda: DiT(num_classes=3)(torch.randn(2, 1, 16, 16), 0.5, torch.tensor([0.5, 1.])), TypeError, 'integer tensor'),
    (lambda: DiT(rope=True, hidden_size=36, num_heads=6), ValueError, 'head size divisible by 4'),
])
def test_bad_input(fn, exc, msg):
    with pytest.raises(exc) as e: fn()
    assert msg in str(e.value), str(e.value)
