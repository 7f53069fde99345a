"Metrics against closed forms: FD for Gaussians, KID/MMD unbiasedness, the shipped classifier, ODE NLL vs the oracle's exact density."
import json, math
import pytest, torch
import torch.nn.functional as F
from diffkit.classifier import (_asset, classifier_accuracy, digits_quality, digits_split, load_digits_classifier,
                                preprocess_digits, save_digits_classifier)
from diffkit.denoiser import Denoiser
from diffkit.likelihood import bits_per_dim, ode_nll
from diffkit.metrics import frechet_distance, frechet_distance_gaussians, kid, mmd2
from diffkit.toy import OracleDenoiser, mixture_log_prob, mixture_x0, random_mixture

f64 = dict(dtype=torch.float64)


def test_fd_closed_form_gaussians():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(2, 8, generator=g, **f64)
    a, b = torch.rand(2, 8, generator=g, **f64) + 0.1
    want = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert abs(frechet_distance_gaussians(mu1, a.diag(), mu2, b.diag()) - want.item()) < 1e-10
    A, B = torch.randn(2, 32, 32, generator=g, **f64)
    c1, c2 = A @ A.T / 32, B @ B.T / 32 + 1e-3 * torch.eye(32, **f64)
    scipy_linalg = pytest.importorskip('scipy.linalg')
    covmean = scipy_linalg.sqrtm((c1 @ c2).numpy()).real
    want = (c1.trace() + c2.trace()).item() - 2 * covmean.trace()
    assert abs(frechet_distance_gaussians(torch.zeros(32), c1, torch.zeros(32), c2) - want) < 1e-6
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert abs(frechet_distance_gaussians(torch.tensor([1.]), torch.tensor([[4.]]), torch.tensor([0.]), torch.tensor([[1.]])) - 2.) < 1e-12


def test_fd_from_samples_converges():
    g = torch.Generator().manual_seed(1)
    L = torch.randn(6, 6, generator=g, **f64) / 3
    x = torch.randn(30_000, 6, generator=g, **f64) @ L.T + 0.5
    y = torch.randn(30_000, 6, generator=g, **f64)
    want = frechet_distance_gaussians(torch.full((6,), 0.5), L @ L.T, torch.zeros(6), torch.eye(6))
    assert abs(frechet_distance(x, y) - want) < 0.03


def test_kid_unbiased_same_distribution_and_biased_contrast():
    "Mean of independent KID estimates on equal 64-d distributions is 0 within 4 SE; the V-statistic is positive."
    g = torch.Generator().manual_seed(2)
    scale = torch.linspace(0.2, 1.5, 64, **f64)
    est = torch.tensor([kid(torch.randn(100, 64, generator=g, **f64) * scale, torch.randn(120, 64, generator=g, **f64) * scale,
                            n_subsets=1, subset_size=100, generator=g)[0] for _ in range(300)])
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item()) < 4 * se, (est.mean(), se)
    shifted = kid(torch.randn(300, 64, generator=g, **f64) * scale + 0.3, torch.randn(300, 64, generator=g, **f64) * scale, generator=g)
    assert shifted[0] > 10 * shifted[1]


def test_kid_1d_closed_form():
    g = torch.Generator().manual_seed(3)
    m = lambda mu, s: (mu, mu ** 2 + s ** 2, mu ** 3 + 3 * mu * s ** 2)
    (a1, a2, a3), (b1, b2, b3) = m(0., 1.), m(0.4, 0.8)
    want = (a3 - b3) ** 2 + 3 * (a2 - b2) ** 2 + 3 * (a1 - b1) ** 2
    est = torch.tensor([kid(torch.randn(200, 1, generator=g), 0.4 + 0.8 * torch.randn(200, 1, generator=g), n_subsets=1, subset_size=200)[0]
                        for _ in range(400)])
    assert abs(est.mean().item() - want) < 4 * est.std().item() / 20


def test_mmd_closed_form_and_unbiased():
    g = torch.Generator().manual_seed(4)
    h, d = 1.3, 3
    ek = lambda dm2, v: (h * h / (h * h + v)) ** (d / 2) * math.exp(-dm2 / (2 * (h * h + v)))
    want = ek(0, 2) + ek(0, 2 * 0.81) - 2 * ek(0.25, 1 + 0.81)
    est = torch.tensor([mmd2(torch.randn(80, d, generator=g), 0.9 * torch.randn(90, d, generator=g) + torch.tensor([0.5, 0, 0]), bandwidth=h)
                        for _ in range(300)])
    assert abs(est.mean().item() - want) < 4 * est.std().item() / math.sqrt(300)
    same = torch.tensor([mmd2(torch.randn(80, d, generator=g), torch.randn(90, d, generator=g), bandwidth=[0.5, 1., 2.]) for _ in range(300)])
    assert abs(same.mean().item()) < 4 * same.std().item() / math.sqrt(300)


def test_classifier_loads_and_reaches_stated_accuracy():
    clf = load_digits_classifier()
    meta = json.loads(_asset('digits_classifier.json').read_text())
    assert meta['command'].startswith('python tools/train_classifier.py')
    assert _asset('digits_classifier.safetensors').stat().st_size < 1_000_000
    xtr, ytr, xte, yte = digits_split(meta['split']['seed'], meta['split']['val_frac'])
    acc = classifier_accuracy(xte, yte, clf)
    assert acc >= 0.99 and abs(acc - meta['held_out_accuracy']) < 1e-6, (acc, meta['held_out_accuracy'])


def test_classifier_checkpoint_tamper_and_truncation(tmp_path):
    clf = load_digits_classifier()
    p = save_digits_classifier(clf, clf.info, tmp_path / 'c.safetensors')
    assert torch.equal(load_digits_classifier(p).head.weight, clf.head.weight)
    data = bytearray(p.read_bytes()); data[-10] ^= 1; p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='truncated or modified'): load_digits_classifier(p)
    p.write_bytes(bytes(data[:1000]))
    with pytest.raises(ValueError, match='truncated or modified'): load_digits_classifier(p)
    with pytest.raises(FileNotFoundError, match='train_classifier'): load_digits_classifier(tmp_path / 'missing.safetensors')


def test_preprocessing_is_bilinear_align_corners_false():
    raw = torch.randint(0, 17, (5, 8, 8)).float()
    want = F.interpolate((raw / 8 - 1)[:, None], scale_factor=2, mode='bilinear', align_corners=False)
    assert torch.allclose(preprocess_digits(raw), want, atol=1e-6)


def test_digits_quality_floor_and_accuracy():
    xtr, ytr, xte, yte = digits_split()
    idx = torch.randperm(len(xte), generator=torch.Generator().manual_seed(0))[:200]   # the split is sorted by class
    xte, yte = xte[idx], yte[idx]
    out = digits_quality(xte, yte, ref='train', n_subsets=20, verbose=False)
    assert out['acc'] >= 0.98 and out['acc_floor'] >= 0.98
    assert out['fd'] < 2 * out['fd_floor'] + 1 and abs(out['kid']) < 4 * out['kid_std'] + 1e-3
    noisy = digits_quality((xte + 0.6 * torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))).clamp(-1, 1),
                           n_subsets=20, verbose=False)
    assert noisy['fd'] > 3 * noisy['fd_floor'] and noisy['kid'] > 3 * noisy['kid_std']


@pytest.mark.parametrize('path', ['linear', 'trig'])
def test_ode_nll_exact_divergence_matches_oracle(path):
    for dim, seed in ((2, 0), (3, 1)):
        gm = random_mixture(k=3, dim=dim, seed=seed)
        x0 = gm.sample(100, generator=torch.Generator().manual_seed(seed))
        nll = ode_nll(OracleDenoiser(gm, path), x0, steps=48)
        err = (nll + mixture_log_prob(gm, x0, 0.)).abs().max().item()
        assert err < 0.05, (path, dim, err)


def test_ode_nll_through_denoiser_and_plain_x0_model():
    "A velocity-predicting Denoiser and a bare D(x, t) = x0 callable give the oracle's NLL."
    gm = random_mixture(k=3, dim=2, seed=5)
    oracle = OracleDenoiser(gm, 'linear')
    x0 = gm.sample(50, generator=torch.Generator().manual_seed(5))
    ref = ode_nll(oracle, x0, steps=16)
    den = Denoiser(lambda x, t: oracle.predict(x, t, 'velocity'), 'linear', 'velocity')
    assert torch.allclose(ode_nll(den, x0, steps=16), ref, atol=1e-8)
    assert torch.allclose(ode_nll(lambda x, t: mixture_x0(gm, x, t, 'linear'), x0, path='linear', steps=16), ref, atol=1e-8)


def test_ode_nll_hutchinson_within_tolerance():
    "Stated tolerance: mean error over 1000 points within 4 standard errors (1 probe) and within 0.05 nats (8 probes)."
    gm = random_mixture(k=4, dim=2, seed=0)
    D = OracleDenoiser(gm, 'linear')
    x0 = gm.sample(1000, generator=torch.Generator().manual_seed(6))
    ref = ode_nll(D, x0, steps=12)
    for k in (1, 8):
        err = ode_nll(D, x0, steps=12, divergence='hutchinson', n_probes=k, generator=torch.Generator().manual_seed(k)) - ref
        assert abs(err.mean().item()) < 4 * err.std().item() / math.sqrt(len(err))
    assert abs(err.mean().item()) < 0.05
    assert abs((ref + mixture_log_prob(gm, x0, 0.)).mean().item()) < 0.05


def test_bits_per_dim():
    assert abs(bits_per_dim(16 * math.log(2.), 16, n_bins=256) - 8.) < 1e-12
    with pytest.raises(ValueError, match='positive number of dimensions'): bits_per_dim(1., 0)


def test_split_and_preprocessing_match_data_module():
    "The classifier's held-out set is diffkit.data's validation split (val_frac=0.2, seed=0), pixel for pixel."
    data = pytest.importorskip('diffkit.data')
    x, y = data.load_digits()
    for a, b in zip(data.train_val_split(x, y, val_frac=0.2, seed=0), digits_split()): assert torch.equal(a, b)
