"`diffkit train` killed mid-run and rerun with --resume ends exactly where an uninterrupted run ends; `diffkit sample` reads the run."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from diffkit.checkpoint import load_checkpoint
from diffkit.training import latest_checkpoint

EXE = str(Path(sys.executable).parent / 'diffkit')
ARGS = ['--dataset', 'eight_gaussians', '--model', 'MLP_S', '--steps', '400', '--batch-size', '64', '--checkpoint-every', '25']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def final_state(folder):
    state, _ = load_checkpoint(latest_checkpoint(folder))
    return state


def test_kill_and_resume_is_exact(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    subprocess.run([EXE, 'train', '--out', a, *ARGS], check=True, capture_output=True, env=ENV)
    p = subprocess.Popen([EXE, 'train', '--out', b, *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    t0 = time.time()
    while time.time() - t0 < 120:                      # kill once a mid-run checkpoint exists
        f = b / 'latest.json'
        if f.exists() and 0 < json.loads(f.read_text())['step'] < 400: break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    step = json.loads((b / 'latest.json').read_text())['step']
    assert 0 < step < 400, step
    r = subprocess.run([EXE, 'train', '--out', b, *ARGS, '--resume'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    sa, sb = final_state(a), final_state(b)
    assert sb['step'] == sa['step'] == 400
    for k in ('model', 'ema'):
        for n, v in sa[k].items(): assert torch.equal(v, sb[k][n]), (k, n)
    out = tmp_path / 's.png'
    r = subprocess.run([EXE, 'sample', '--run', b, '--sampler', 'dpmpp_2m', '--steps', '8', '--n', '200', '--out', out], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and out.stat().st_size > 5000, r.stderr


@pytest.mark.parametrize('args,msg', [(['train'], 'required: --out'),
                                      (['train', '--out', '/tmp/x', '--model', 'ResNet'], "invalid choice: 'ResNet'"),
                                      (['sample', '--run', '/nonexistent'], 'no run.json'),
                                      (['sample', '--run', '/tmp', '--steps', '0'], '--steps: expected a positive int')])
def test_bad_arguments_exit_2(args, msg):
    r = subprocess.run([EXE, *args], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
