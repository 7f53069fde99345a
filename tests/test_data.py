"Data loaders: built-in sets from scikit-learn/scikit-image, local files (folders, npz, IDX), splits and batches."
import gzip
import numpy as np
import pytest, torch
from PIL import Image
from diffkit.data import (denormalize, image_patches, labelled_batches, load_digits, load_image_folder, load_lfw,
                          load_mnist, load_npz, normalize, read_idx, train_val_split, write_idx)
from diffkit.training import batches


def test_digits():
    x, y = load_digits(16)
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() >= -1 and x.max() <= 1
    x8, _ = load_digits(8)
    from sklearn.datasets import load_digits as sk
    np.testing.assert_allclose(denormalize(x8[:, 0], 0, 16).numpy(), sk().images, atol=1e-5)
    xp, _ = load_digits(16, 'pad')
    assert torch.equal(xp[:, :, 4:12, 4:12], x8) and (xp[:, :, :4] == -1).all()


def test_patches_and_faces():
    a, la = image_patches(8, 24, generator=torch.Generator().manual_seed(3))
    b, lb = image_patches(8, 24, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(la, lb) and a.shape == (8, 3, 24, 24)
    c, _ = image_patches(8, 24, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)
    g, _ = image_patches(3, 16, names=('camera', 'coffee'), gray=True)
    assert g.shape == (3, 1, 16, 16) and -1 <= g.min() and g.max() <= 1
    xf, yf = load_lfw()
    assert xf.shape == (200, 1, 25, 25) and yf[:100].eq(1).all() and yf[100:].eq(0).all()


def test_idx_roundtrip(tmp_path):
    for dt in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        a = (np.arange(24) - 5).astype(dt).reshape(2, 3, 4)
        for name in ('a.idx', 'a.idx.gz'):
            write_idx(tmp_path / name, a)
            b = read_idx(tmp_path / name)
            assert b.dtype == a.dtype and np.array_equal(a, b)
    # a file written byte by byte from the format description, as MNIST stores labels
    raw = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, 'big') + bytes([7, 0, 9])
    (tmp_path / 'l.idx').write_bytes(raw)
    assert read_idx(tmp_path / 'l.idx').tolist() == [7, 0, 9]
    # big-endian int16
    raw = bytes([0, 0, 0x0B, 1]) + (2).to_bytes(4, 'big') + (258).to_bytes(2, 'big') + (-2).to_bytes(2, 'big', signed=True)
    (tmp_path / 's.idx').write_bytes(raw)
    assert read_idx(tmp_path / 's.idx').tolist() == [258, -2]


def test_mnist_folder(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / 't10k-images-idx3-ubyte', imgs)
    with gzip.open(tmp_path / 't10k-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(bytes([0, 0, 8, 1]) + (6).to_bytes(4, 'big') + bytes(range(6)))
    x, y = load_mnist(tmp_path, 'test')
    assert x.shape == (6, 1, 28, 28) and y.tolist() == list(range(6))
    assert torch.equal(denormalize(x[:, 0]).round().byte(), torch.from_numpy(imgs))


def test_folder_and_npz(tmp_path):
    rng = np.random.default_rng(1)
    for c in ('b', 'a'):
        (tmp_path / c).mkdir()
        for i in range(2): Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / c / f'{i}.png')
    (tmp_path / 'a' / 'notes.txt').write_text('ignored')
    x, y = load_image_folder(tmp_path, gray=True)
    assert x.shape == (4, 1, 6, 6) and y.tolist() == [0, 0, 1, 1]
    assert load_image_folder(tmp_path, size=(4, 5))[0].shape == (4, 3, 4, 5)
    flat = tmp_path / 'a'
    assert load_image_folder(flat)[1].tolist() == [0, 0]
    np.savez(tmp_path / 'd.npz', images=rng.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8), labels=np.array([2, 0, 1]))
    x, y = load_npz(tmp_path / 'd.npz')
    assert x.shape == (3, 3, 5, 5) and y.tolist() == [2, 0, 1]
    np.savez(tmp_path / 'e.npz', x=np.zeros((3, 4, 4)), y=np.array([0.5, 1, 2]))
    with pytest.raises(ValueError, match='integer class labels'): load_npz(tmp_path / 'e.npz')
    np.savez(tmp_path / 'f.npz', x=np.zeros((3, 4, 4)), y=np.zeros(2))
    with pytest.raises(ValueError, match=r'expected labels of shape \(3,\)'): load_npz(tmp_path / 'f.npz')


@pytest.mark.parametrize('call,exc,msg', [
    (lambda p: load_image_folder(p / 'nope'), FileNotFoundError, 'nothing is there'),
    (lambda p: load_image_folder(p / 'file.bin'), NotADirectoryError, 'got a file'),
    (lambda p: load_image_folder(p / 'empty'), ValueError, 'found none'),
    (lambda p: load_npz(p / 'nope.npz'), FileNotFoundError, 'nothing is there'),
    (lambda p: load_npz(p / 'empty'), IsADirectoryError, 'got a folder'),
    (lambda p: read_idx(p / 'file.bin'), ValueError, 'expected an IDX file'),
    (lambda p: load_mnist(p), FileNotFoundError, 'expected train-images-idx3-ubyte'),
    (lambda p: load_mnist(p, 'val'), ValueError, "expected 'train' or 'test'"),
    (lambda p: load_digits(16, 'crop'), ValueError, "expected 'bilinear' or 'pad'"),
    (lambda p: image_patches(0), ValueError, 'positive ints'),
    (lambda p: write_idx(p / 'x.idx', np.zeros(2, np.uint64)), TypeError, 'expected dtype'),
    (lambda p: normalize(np.zeros(2), 1, 0), ValueError, 'expected vmax > vmin'),
    (lambda p: train_val_split(torch.zeros(4, 1, 2, 2), None, 0.), ValueError, 'fraction in (0, 1)'),
    (lambda p: next(labelled_batches(torch.zeros(4, 1), torch.zeros(3), 2)), ValueError, 'expected 4 labels'),
])
def test_clear_errors(tmp_path, call, exc, msg):
    (tmp_path / 'empty').mkdir(); (tmp_path / 'file.bin').write_bytes(b'\x01\x02\x03\x04\x05')
    with pytest.raises(exc) as e: call(tmp_path)
    assert msg in str(e.value), str(e.value)


def test_missing_extra_message(monkeypatch):
    import builtins
    real = builtins.__import__
    def fake(name, *a, **k):
        if name.startswith('sklearn'): raise ImportError('no sklearn')
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', fake)
    import importlib
    monkeypatch.setattr(importlib, 'import_module', lambda name, *a: fake(name))
    with pytest.raises(ImportError, match='pip install scikit-learn'): load_digits()


def test_split_and_batches():
    x, y = load_digits(8)
    xt, yt, xv, yv = train_val_split(x, y, 0.25, seed=0)
    assert len(xt) + len(xv) == len(x)
    assert torch.equal(train_val_split(x, y, 0.25, seed=0)[2], xv)
    assert not torch.equal(train_val_split(x, y, 0.25, seed=1)[2], xv)
    it, _, iv, _ = train_val_split(torch.arange(len(x)), y, 0.25, seed=0)     # split the row indices themselves
    assert torch.equal(torch.cat([it, iv]).sort().values, torch.arange(len(x)))  # disjoint and complete
    assert torch.equal(x[iv], xv)
    for c in range(10): assert abs((yv == c).sum() / (y == c).sum() - 0.25) < 0.02
    xb, yb = next(labelled_batches(x, y, 5, torch.Generator().manual_seed(2)))
    assert torch.equal(xb, next(batches(x, 5, torch.Generator().manual_seed(2))))
    assert yb.shape == (5,) and yb.dtype == torch.long
