"Bad input gets a clear error that names what was expected and what came."
import pytest, torch
from torch import nn
from diffkit.core import as_time, append_dims
from diffkit.denoiser import Denoiser
from diffkit.metrics import sliced_wasserstein
from diffkit.models.mlp import TimeMLP
from diffkit.objectives import regression_loss
from diffkit.paths import Linear, convert, get_path
from diffkit.samplers import check_grid, sample_euler
from diffkit.toy import GaussianMixture, OracleDenoiser, toy_data
from diffkit.training import train

x = torch.randn(4, 2)
CASES = [
    (lambda: as_time(-0.1, x), ValueError, 'expected times in [0, 1]'),
    (lambda: as_time(torch.rand(3), x), ValueError, 'expected 4 times'),
    (lambda: Linear().sample(torch.randn(4), 0.5), ValueError, 'at least 2 dimensions'),
    (lambda: Linear().sample(x.long(), 0.5), TypeError, 'floating-point'),
    (lambda: Linear().sample([[1., 2.]], 0.5), TypeError, 'expected a torch.Tensor'),
    (lambda: convert(x, 'noise', 'x0', x, 0.5, Linear()), ValueError, "unknown prediction 'noise'"),
    (lambda: Denoiser(nn.Identity(), 'linear', 'epsilon'), ValueError, "unknown prediction 'epsilon'"),
    (lambda: get_path('flow'), ValueError, "unknown path 'flow'"),
    (lambda: regression_loss(TimeMLP(), Linear(), x, target='flow'), ValueError, 'unknown prediction'),
    (lambda: TimeMLP()(torch.randn(4, 3), 0.5), ValueError, 'expected (batch, 2), got (4, 3)'),
    (lambda: toy_data('moons', 10), ValueError, "unknown toy dataset 'moons'"),
    (lambda: train(TimeMLP(), lambda m, b, g: m(b, 0.5).pow(2).mean(), torch.zeros(0, 2), steps=2), ValueError, 'non-empty dataset'),
    (lambda: check_grid([0., 1.]), ValueError, 'strictly decreasing'),
    (lambda: sample_euler(OracleDenoiser(GaussianMixture(torch.zeros(1, 2))), x, [1.0, 0.5, 0.5]), ValueError, 'strictly decreasing'),
    (lambda: GaussianMixture(torch.zeros(2, 2), -torch.ones(2)), Exception, ''),
    (lambda: sliced_wasserstein(x, torch.randn(4, 3)), ValueError, 'the same dimension'),
    (lambda: append_dims(torch.ones(2, 2), 1), ValueError, 'ndim >= 2'),
]


@pytest.mark.parametrize('fn,exc,msg', CASES)
def test_bad_input(fn, exc, msg):
    with pytest.raises(exc) as e: fn()
    assert msg in str(e.value), str(e.value)
