"""diffkit.interop against diffusers: small randomly initialised diffusers models (no download), same model,
same noise, diffusers' own schedulers and loops on one side, diffkit samplers on the other."""
import pytest
import torch
from diffkit.interop import (DiffusersBackbone, diffusers_timestep_to_t, from_diffusers, sigma_kdiffusion_to_t,
                             t_to_diffusers_timestep, t_to_sigma_kdiffusion)
from diffkit.paths import Linear
from diffkit.samplers import sample_euler
from diffkit.variational import DiscreteVP
from diffkit.stochastic import (grid_from_timesteps, sample_ddim, sample_ddpm, sample_dpmpp_2m_sde,
                                sample_euler_ancestral, sample_euler_maruyama)

diffusers = pytest.importorskip('diffusers')
F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(a, b):
    "Largest error relative to max(1, |b|): random networks give large early x0 estimates."
    return ((a - b).abs() / b.abs().clamp_min(1)).max().item()


def ddim(pt='epsilon', one=True):
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear', clip_sample=False,
                                   prediction_type=pt, set_alpha_to_one=one)


@pytest.fixture(scope='module')
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                                 down_block_types=('DownBlock2D', 'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
                                 norm_num_groups=8, num_class_embeds=10).eval()


@pytest.fixture(scope='module')
def dit():
    torch.manual_seed(1)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2, num_layers=1,
                                           sample_size=16, patch_size=4, norm_num_groups=1, num_embeds_ada_norm=10).eval()


X1 = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
Y = torch.tensor([1, 5, 9])


# ---------------------------------------------------------------------------------------------------------
# time conversions

@pytest.mark.parametrize('sched', [ddim(), diffusers.DDPMScheduler(num_train_timesteps=500),
                                   diffusers.FlowMatchEulerDiscreteScheduler(), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.)])
def test_time_round_trip(sched):
    t = torch.rand(100, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(diffusers_timestep_to_t(t_to_diffusers_timestep(t, sched), sched), t, atol=1e-12)
    k = torch.arange(sched.config.num_train_timesteps, dtype=F64)
    assert torch.allclose(t_to_diffusers_timestep(diffusers_timestep_to_t(k, sched), sched), k, atol=1e-9)


def test_time_closed_forms():
    s, f = ddim(), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.)
    assert diffusers_timestep_to_t(torch.tensor([999., 0., -1.]), s).tolist() == [1., 0.001, 0.]
    f.set_timesteps(8)    # diffusers: timestep = 1000 sigma, whatever the shift
    assert torch.allclose(diffusers_timestep_to_t(f.timesteps, f), f.sigmas[:-1].double(), atol=1e-6)
    # DiscreteVP at t = (k+1)/N is diffusers' alphas_cumprod[k]
    vp = DiscreteVP.from_alphas_cumprod(s.alphas_cumprod)
    k = torch.arange(0, 1000, 37)
    assert torch.allclose(vp.alpha(diffusers_timestep_to_t(k, s)) ** 2, s.alphas_cumprod[k].double(), rtol=1e-6)


def test_kdiffusion_sigmas_match_euler_discrete():
    s = ddim()
    vp = DiscreteVP.from_alphas_cumprod(s.alphas_cumprod)
    e = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule='linear', timestep_spacing='trailing')
    e.set_timesteps(10)
    ours = t_to_sigma_kdiffusion(diffusers_timestep_to_t(e.timesteps, s), vp)
    assert torch.allclose(ours, e.sigmas[:-1].double(), rtol=1e-5)
    assert torch.allclose(sigma_kdiffusion_to_t(e.sigmas[:-1].double(), vp), diffusers_timestep_to_t(e.timesteps, s), atol=1e-6)


@pytest.mark.parametrize('path', [DiscreteVP.from_alphas_cumprod(ddim().alphas_cumprod), Linear()])
def test_kdiffusion_round_trip(path):
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    assert torch.allclose(sigma_kdiffusion_to_t(t_to_sigma_kdiffusion(t, path), path), t, atol=1e-8)
    if isinstance(path, Linear): assert torch.allclose(t_to_sigma_kdiffusion(t, path), t / (1 - t))


def test_time_errors():
    s = ddim()
    with pytest.raises(ValueError, match=r'\[0, 1\]'): t_to_diffusers_timestep(torch.tensor([0.5, 1.2]), s)
    with pytest.raises(ValueError, match='timesteps'): diffusers_timestep_to_t(1000, s)
    with pytest.raises(TypeError, match='diffusers scheduler'): t_to_diffusers_timestep(0.5, 'ddim')
    with pytest.raises(TypeError, match='number'): t_to_diffusers_timestep('0.5', s)
    with pytest.raises(ValueError, match='positive'): sigma_kdiffusion_to_t(torch.tensor([0.]), Linear())
    with pytest.raises(TypeError, match='GaussianPath'): t_to_sigma_kdiffusion(0.5, 'linear')


# ---------------------------------------------------------------------------------------------------------
# the wrapper

def test_wrapper_is_the_model_at_diffusers_timesteps(unet, dit):
    s = ddim()
    D, Dd = from_diffusers(unet, s), from_diffusers(dit, s)
    with torch.no_grad():
        for k in (999, 741, 1, 0):
            t = diffusers_timestep_to_t(torch.full((3,), k), s).float()
            kk = torch.full((3,), k)
            assert torch.equal(D.net(X1, t, y=Y), unet(X1, kk, class_labels=Y).sample)
            assert torch.equal(Dd.net(X1, t, y=Y), dit(X1, kk, class_labels=Y).sample[:, :1])


def test_text_conditioned_unet_keywords_pass_through():
    "Keywords other than y (here encoder_hidden_states of a UNet2DConditionModel) reach the model unchanged, through extra_args."
    torch.manual_seed(2)
    u = diffusers.UNet2DConditionModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                                       down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
                                       norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8).eval()
    c = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(7))
    s = ddim()
    D = from_diffusers(u, s)
    with torch.no_grad():
        assert torch.equal(D.net(X1, torch.full((3,), 0.5), encoder_hidden_states=c), u(X1, torch.full((3,), 499), c).sample)
    ref = diffusers.DDIMScheduler.from_config(s.config)
    ref.set_timesteps(4)
    y = X1.clone()
    with torch.no_grad():
        for k in ref.timesteps: y = ref.step(u(y, k, c).sample, k, y).prev_sample
    ours = sample_ddim(D, X1, grid_from_timesteps(ref.timesteps, 1000), extra_args={'encoder_hidden_states': c})
    assert rel_err(ours, y) < 1e-4, rel_err(ours, y)


def test_wrapper_is_continuous_in_t_and_rounds_on_request(unet):
    net = DiffusersBackbone(unet, 1000)
    t = torch.full((3,), 0.3004)
    assert net.timestep(t)[0].item() == pytest.approx(299.4, abs=1e-3)
    with torch.no_grad():
        a, b = net(X1, t, Y), net(X1, t + 1e-5, Y)
        assert 0 < (a - b).abs().max() < 1e-2
        net.round_timesteps = True
        assert torch.equal(net(X1, t, Y), unet(X1, torch.full((3,), 299), class_labels=Y).sample)


@pytest.mark.parametrize('pt,target', [('epsilon', 'eps'), ('v_prediction', 'v'), ('sample', 'x0')])
def test_targets_and_paths(unet, pt, target):
    D = from_diffusers(unet, ddim(pt))
    assert D.target == target and isinstance(D.path, DiscreteVP)
    Df = from_diffusers(unet, diffusers.FlowMatchEulerDiscreteScheduler())
    assert Df.target == 'velocity' and isinstance(Df.path, Linear) and Df.net.offset == 0
    Dp = from_diffusers(unet, path=DiscreteVP.from_alphas_cumprod(ddim().alphas_cumprod), prediction_type=pt)   # no scheduler
    assert Dp.target == target and Dp.net.offset == -1 and Dp.net.n == 1000


def test_from_diffusers_errors(unet):
    with pytest.raises(ValueError, match='scheduler'): from_diffusers(unet)
    with pytest.raises(ValueError, match='prediction_type'): from_diffusers(unet, ddim(), prediction_type='noise')
    with pytest.raises(TypeError, match='nn.Module'): from_diffusers(lambda x, t: x, ddim())
    with pytest.raises(TypeError, match='scheduler'): from_diffusers(unet, object())


# ---------------------------------------------------------------------------------------------------------
# sampling: diffkit on diffusers' grid == diffusers' own loop

def diffusers_loop(model, sched, x, steps, y, **step_kw):
    sched.set_timesteps(steps)
    with torch.no_grad():
        for k in sched.timesteps:
            out = model(x, k.expand(len(x)), class_labels=y).sample[:, :x.shape[1]]
            x = sched.step(out, k, x, **step_kw).prev_sample
    return x


@pytest.mark.parametrize('pt,one', [('epsilon', True), ('epsilon', False), ('v_prediction', True), ('sample', True)])
def test_ddim_matches_diffusers(unet, pt, one):
    s = ddim(pt, one)
    ref = diffusers_loop(unet, s, X1, 8, Y)
    ours = sample_ddim(from_diffusers(unet, s), X1, grid_from_timesteps(s.timesteps, 1000, final_alpha_one=one), extra_args=dict(y=Y))
    assert rel_err(ours, ref) < 1e-4, rel_err(ours, ref)


def test_ddim_eta_matches_diffusers_dit(dit):
    s = ddim()
    s.set_timesteps(6)
    zs = torch.randn(6, *X1.shape, generator=torch.Generator().manual_seed(3))
    y = X1.clone()
    with torch.no_grad():
        for i, k in enumerate(s.timesteps):
            y = s.step(dit(y, k.expand(3), class_labels=Y).sample[:, :1], k, y, eta=1., variance_noise=zs[i]).prev_sample
    ts = grid_from_timesteps(s.timesteps, 1000)
    idx = {t: i for i, t in enumerate(ts.tolist())}
    ours = sample_ddim(from_diffusers(dit, s), X1, ts, eta=1., extra_args=dict(y=Y), noise_sampler=lambda t, tn: zs[idx[t]])
    assert rel_err(ours, y) < 1e-4, rel_err(ours, y)


def test_ddpm_matches_diffusers(unet, monkeypatch):
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    s = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', clip_sample=False, variance_type='fixed_small')
    s.set_timesteps(6)
    zs = torch.randn(6, *X1.shape, generator=torch.Generator().manual_seed(4))
    calls = iter(zs)
    monkeypatch.setattr(ddpm_mod, 'randn_tensor', lambda *a, **k: next(calls))
    ref = diffusers_loop(unet, s, X1, 6, Y)
    ts = grid_from_timesteps(s.timesteps, 1000)
    idx = {t: i for i, t in enumerate(ts.tolist())}
    ours = sample_ddpm(from_diffusers(unet, s), X1, ts, extra_args=dict(y=Y), noise_sampler=lambda t, tn: zs[idx[t]])
    assert rel_err(ours, ref) < 1e-4, rel_err(ours, ref)


@pytest.mark.parametrize('shift', [1., 3.])
def test_flow_match_euler_matches_diffusers(unet, shift):
    s = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ref = diffusers_loop(unet, s, X1, 8, Y)
    ours = sample_euler(from_diffusers(unet, s), X1, s.sigmas.double(), extra_args=dict(y=Y))
    assert rel_err(ours, ref) < 1e-4, rel_err(ours, ref)


class Exact(torch.nn.Module):
    "A stand-in diffusers model returning a given prediction and recording the timesteps it was called with."
    def forward(self, x, timestep, class_labels=None, return_dict=False):
        self.timestep = timestep
        return (self.out,)


@pytest.mark.parametrize('pt', ['epsilon', 'v_prediction', 'sample'])
def test_conventions_via_add_noise(pt):
    "x_k from diffusers' own add_noise, the exact prediction from diffusers' formulas: the Denoiser returns x0."
    s = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', prediction_type=pt)
    g = torch.Generator().manual_seed(5)
    x0, eps, k = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g), torch.tensor([3, 500, 999])
    m = Exact()
    m.out = {'epsilon': eps, 'v_prediction': s.get_velocity(x0, eps, k), 'sample': x0}[pt]
    D = from_diffusers(m, s)
    assert torch.allclose(D(s.add_noise(x0, eps, k), diffusers_timestep_to_t(k, s).float()), x0, atol=1e-4)
    assert torch.equal(m.timestep, k.float())


def test_flow_conventions_via_scale_noise():
    "Flow matching: x_s from diffusers' scale_noise, model output noise - x0 (the flow-matching target, diffkit's velocity)."
    s = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(6)
    x0, eps, k = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g), s.timesteps[[0, 4, 9]]
    m = Exact()
    m.out = eps - x0
    D = from_diffusers(m, s)
    t = diffusers_timestep_to_t(k, s).float()
    assert torch.allclose(D(s.scale_noise(x0, k, eps), t), x0, atol=1e-5)
    assert torch.allclose(D.predict(s.scale_noise(x0, k, eps), t, 'eps'), eps, atol=1e-4)
    assert torch.allclose(m.timestep, k, atol=1e-3)


@pytest.mark.parametrize('sampler,kw', [(sample_dpmpp_2m_sde, dict(eta=0.)), (sample_dpmpp_2m_sde, dict(eta=1.)),
                                        (sample_euler_ancestral, {}), (sample_euler_maruyama, {}), (sample_euler, {})])
@pytest.mark.parametrize('which', ['unet', 'dit'])
def test_any_diffkit_sampler(request, which, sampler, kw):
    model = request.getfixturevalue(which)
    D = from_diffusers(model, ddim('v_prediction'))
    grid = torch.linspace(0.999, 0, 6, dtype=F64)
    if sampler in (sample_euler_ancestral, sample_euler_maruyama) or kw.get('eta', 0) > 0:
        kw = dict(kw, generator=torch.Generator().manual_seed(0))
    out = sampler(D, X1, grid, extra_args=dict(y=Y), **kw)
    assert out.shape == X1.shape and torch.isfinite(out).all()
