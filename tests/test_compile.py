"GPU readiness checked on CPU: samplers run a torch.compile'd denoiser and agree with eager (cold compile costs ~10-30 s)."
import torch
from diffkit.denoiser import Denoiser
from diffkit.models.mlp import TimeMLP
from diffkit.samplers import get_grid, sample_dpmpp_2m, sample_heun
from diffkit.stochastic import sample_ddim


def test_samplers_with_compiled_denoiser():
    torch.manual_seed(0)
    D = Denoiser(TimeMLP(2, width=32, depth=2), 'vp', 'eps').eval()
    Dc = torch.compile(D, dynamic=False)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    ts = get_grid('karras', 6, D.path)
    for sampler in (sample_dpmpp_2m, sample_heun, sample_ddim):
        eager, compiled = sampler(D, x, ts), sampler(Dc, x, ts)
        assert compiled.isfinite().all(), sampler.__name__
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5, msg=sampler.__name__)
