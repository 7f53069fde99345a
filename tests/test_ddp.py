"Data-parallel training under torchrun: 2 CPU processes (gloo, loopback only) follow the 1-process loss curve and resume exactly."
import importlib.util, json, os, socket, subprocess, sys
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / 'examples' / 'train_ddp.py'
STEPS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _example():
    spec = importlib.util.spec_from_file_location('train_ddp', EXAMPLE)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _one_process(seed=0):
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: return _example().main(steps=STEPS, batch_size=256, seed=seed)
    finally: torch.set_num_threads(n)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason='needs gloo')
def test_two_processes_match_one_and_resume_exactly(tmp_path):
    out = tmp_path / 'ddp.json'
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': os.environ.get('GLOO_SOCKET_IFNAME', 'lo')}
    def torchrun(*args):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
               '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), str(EXAMPLE), '--steps', str(STEPS),
               '--batch-size', '256', '--backend', 'gloo', '--checkpoint-dir', str(tmp_path / 'ck'), '--checkpoint-every', '10', *args]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        if p.returncode != 0 and 'terminate called without an active exception' in p.stderr:
            # a rare abort inside gloo's C++ teardown (seen once in ~10 runs on 2 cores): run the launch once more
            p = subprocess.run(cmd[:10] + [str(_free_port())] + cmd[11:], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    torchrun('--out', str(out))
    ddp = json.loads(out.read_text())
    assert ddp['world'] == 2 and ddp['backend'] == 'gloo'
    # DDP keeps the replicas identical
    assert ddp['checksums'][0] == ddp['checksums'][1]
    one = _one_process()
    a, b = torch.tensor(ddp['losses']), torch.tensor(one['losses'])
    assert len(a) == len(b) == STEPS
    # same global batch, same times and noise, gradients averaged by DDP: equal up to reduction order
    rel = ((a - b).abs() / b.abs()).max().item()
    assert rel < 1e-4, rel
    assert abs(ddp['checksums'][0] - one['checksum']) < 1e-4 * abs(one['checksum'])
    # the tolerance is meaningful: another seed's curve is far outside it
    other = torch.tensor(_one_process(seed=1)['losses'])
    assert ((other - b).abs() / b.abs()).max().item() > 100 * 1e-4
    # a 2-process run resumed from its step-10 checkpoint ends exactly where the uninterrupted one did
    torchrun('--resume', str(tmp_path / 'ck' / 'step_0000010'), '--out', str(tmp_path / 'resumed.json'))
    resumed = json.loads((tmp_path / 'resumed.json').read_text())
    assert resumed['losses'] == ddp['losses'] and resumed['checksums'] == ddp['checksums']
