"Few-step students: teacher pairs with conditioning, resumable consistency curriculum, MeanFlow's JVP through a UNet, argument checks, and a smoke run of benchmarks/distill.py."
import copy, subprocess, sys
from pathlib import Path
import pytest
import torch
from torch import nn
from diffkit.accel.consistency import ConsistencyLoss, consistency_loss, ict_intervals
from diffkit.accel.distill import DDIMMap, ddim_jump, distill_loss, pack, progressive_loss, reflow_loss, teacher_pairs
from diffkit.accel.meanflow import MeanFlowMap, TwoTimeNet, meanflow_loss
from diffkit.denoiser import Denoiser
from diffkit.models.mlp import TimeMLP
from diffkit.models.registry import get_model
from diffkit.paths import Linear, VPLinear
from diffkit.samplers import sample_dpmpp_2m, sample_euler, uniform_grid
from diffkit.toy import OracleDenoiser, eight_gaussians
from diffkit.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(seed=0, num_classes=3):
    torch.manual_seed(seed)
    net = get_model('UNet_S', num_classes=num_classes)
    for p in net.parameters(): nn.init.normal_(p, std=0.02)          # not the zero output init: a net that does something
    return net.eval()


def test_teacher_pairs_slice_labels_with_the_batch():
    D = Denoiser(tiny_unet(), 'linear', 'velocity')
    x1 = torch.randn(7, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    whole = sample_dpmpp_2m(D, x1, uniform_grid(3), extra_args={'y': y})
    x0, back = teacher_pairs(D, x1, uniform_grid(3), sampler=sample_dpmpp_2m, extra_args={'y': y}, batch_size=3)
    assert torch.allclose(x0, whole, atol=1e-5) and back is x1
    traj = teacher_pairs(D, x1, uniform_grid(3), extra_args={'y': y}, batch_size=2, trajectory=True)
    assert traj.shape == (4, 7, 1, 16, 16) and torch.equal(traj[0], x1)
    assert torch.allclose(traj[-1], sample_euler(D, x1, uniform_grid(3), extra_args={'y': y}), atol=1e-5)


def make_ct_trainer(tmp, steps=12, seed=0, callbacks=()):
    gm = eight_gaussians()
    torch.manual_seed(seed)
    loss = ConsistencyLoss(Linear(), 'velocity', s0=4, s1=16)
    tr = Trainer(TimeMLP(2, 32, 2), loss, lambda n, g: gm.sample(n, generator=g), steps=steps, batch_size=32, lr=1e-3, warmup=2,
                 ema_decay=0.9, generator=torch.Generator().manual_seed(seed), callbacks=[loss, *callbacks], checkpoint_dir=tmp, checkpoint_every=4)
    return tr, loss


def test_consistency_curriculum_resumes_exactly(tmp_path):
    seen = []
    ref, loss = make_ct_trainer(tmp_path / 'ref', callbacks=[lambda tr: seen.append(ict_intervals(loss.step, loss.total, 4, 16))])
    ref.fit()
    assert seen[0] == 4 and seen[-1] == 16 and seen == sorted(seen)              # the grid refines as training goes
    def crash(tr):
        if tr.step == 6: raise RuntimeError('crash')
    run, _ = make_ct_trainer(tmp_path / 'run', callbacks=[crash])
    with pytest.raises(RuntimeError): run.fit()
    res, _ = make_ct_trainer(tmp_path / 'run', seed=5)
    res.fit(resume=True)
    for a, b in zip(ref.model.state_dict().values(), res.model.state_dict().values()): assert torch.equal(a, b)
    assert ref.losses == res.losses


def test_meanflow_jvp_through_a_unet():
    net = tiny_unet()
    model = MeanFlowMap(TwoTimeNet(copy.deepcopy(net)).double().train(), 'linear', 'velocity')
    nn.init.normal_(model.net.net.temb.gap.mlp[-1].weight, std=0.02)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t, s, y, v = torch.tensor([0.7, 0.4], dtype=torch.float64), torch.tensor([0.2, 0.1], dtype=torch.float64), torch.tensor([1, 2]), torch.randn_like(x)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        _, jv = torch.func.jvp(lambda x_: model.velocity(x_, t, s, y=y), (x,), (v,))
    h = 1e-6
    fd = (model.velocity(x + h * v, t, s, y=y) - model.velocity(x - h * v, t, s, y=y)) / (2 * h)
    assert torch.allclose(jv, fd, atol=1e-6 * fd.abs().max().item() + 1e-9)
    x0 = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    model = MeanFlowMap(TwoTimeNet(copy.deepcopy(net)).train(), 'linear', 'velocity')
    teacher = Denoiser(net, 'linear', 'velocity')
    loss = meanflow_loss(model, x0, torch.Generator().manual_seed(2), teacher=teacher, p_equal=0., y=torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss) and model.net.net.temb.gap.mlp[-1].weight.grad.abs().sum() > 0     # the gap embedding learns


def test_pack_unpack_keeps_dtypes_and_rejects_big_ints():
    data, unpack = pack(x0=torch.randn(3, 2), y=torch.tensor([1, 2, 3]))
    assert unpack(data)['y'].dtype == torch.int64
    with pytest.raises(ValueError, match='2\\^24'): pack(y=torch.tensor([2 ** 25]))


ORACLE = OracleDenoiser(eight_gaussians(), 'linear')
X = torch.randn(4, 2)
BAD = [
    (lambda: ddim_jump(ORACLE, X, 0.2, 0.5), ValueError, '0 <= s <= t'),
    (lambda: ddim_jump(lambda x, t: x, X, 0.5, 0.2), TypeError, 'GaussianPath'),
    (lambda: DDIMMap(lambda x, t: x), TypeError, 'GaussianPath'),
    (lambda: reflow_loss(ORACLE, Linear(), X, X[:2]), ValueError, 'like x0'),
    (lambda: distill_loss(DDIMMap(ORACLE), X, X[:2]), ValueError, 'like x'),
    (lambda: progressive_loss(Denoiser(TimeMLP(2, 8, 1), 'vp', 'eps'), ORACLE, X, 4), ValueError, "student's path"),
    (lambda: progressive_loss(Denoiser(TimeMLP(2, 8, 1), 'linear', 'eps'), ORACLE, X, 0), ValueError, 'positive int'),
    (lambda: consistency_loss(Denoiser(TimeMLP(2, 8, 1), VPLinear(), 'eps'), X, 4, teacher=ORACLE), ValueError, "student's path"),
    (lambda: ict_intervals(3, 10, 20, 10), ValueError, 's0 <= s1'),
    (lambda: TwoTimeNet(nn.Linear(2, 2)), TypeError, 'TimeEmbedding'),
    (lambda: meanflow_loss(MeanFlowMap(TwoTimeNet(TimeMLP(2, 8, 1))), X, p_equal=2.), ValueError, 'p_equal'),
    (lambda: pack(a=X, b=X[:2]), ValueError, 'one length'),
    (lambda: teacher_pairs(ORACLE, X, [1., 0.], extra_args=[1]), TypeError, 'extra_args'),
]


@pytest.mark.parametrize('fn,err,msg', BAD, ids=[str(i) for i in range(len(BAD))])
def test_argument_checks(fn, err, msg):
    with pytest.raises(err, match=msg): fn()


def test_two_time_net_forgets_its_second_time_outside_a_call():
    two = TwoTimeNet(TimeMLP(2, 8, 1))
    two(X, 0.5, 0.2)
    with pytest.raises(RuntimeError, match='second time'): two.net(X, 0.5)


def test_benchmark_smoke():
    out = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'distill.py'), '--smoke'], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith('RESULT ') and 'digits_fd1_over_teacher=' in last and 'toy_sw1_over_floor=' in last, last
