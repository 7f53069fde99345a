"The wheel installs into a fresh venv with only its runtime dependencies, and the library and command work there."
import subprocess, sys, venv, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f'{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}'
    return p.stdout


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheel')
    run(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', out, ROOT)
    (whl,) = out.glob('diffkit-*.whl')
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert 'diffkit/paths.py' in names and 'diffkit/models/mlp.py' in names
    assets = sorted((ROOT / 'diffkit' / 'assets').glob('*.safetensors')) if (ROOT / 'diffkit' / 'assets').exists() else []
    for a in assets: assert f'diffkit/assets/{a.name}' in names, a.name
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith('METADATA'))).decode()
    reqs = [l for l in meta.splitlines() if l.startswith('Requires-Dist') and 'extra ==' not in l]
    assert not any(k in ' '.join(reqs) for k in ('nbdev', 'jupyter', 'ipykernel', 'diffusers')), reqs


def test_wheel_installs_clean(wheel, tmp_path):
    env = tmp_path / 'venv'
    venv.create(env, with_pip=True)
    py = env / 'bin' / 'python'
    run(py, '-m', 'pip', 'install', '-q', 'torch==2.13.0')   # first, so no CUDA build is pulled
    run(py, '-m', 'pip', 'install', '-q', wheel)
    code = ("import sys, diffkit, diffkit.cli, diffkit.toy, diffkit.samplers\n"
            "bad = [m for m in ('nbdev', 'fastcore', 'IPython', 'jupyter_client') if m in sys.modules]\n"
            "assert not bad, bad\nprint(diffkit.__version__)")
    assert run(py, '-c', code, cwd=tmp_path).strip() == run(sys.executable, '-c', 'import diffkit; print(diffkit.__version__)').strip()
    p = subprocess.run([py, '-c', 'import nbdev'], capture_output=True)
    assert p.returncode != 0, 'nbdev should not be installed with the wheel'
    out = run(env / 'bin' / 'diffkit', 'demo', '--steps', '20', '--n', '300', '--sample-steps', '5', '--out', tmp_path / 'd.png', cwd=tmp_path)
    assert 'noise floor' in out and (tmp_path / 'd.png').exists()
