"The thin end-to-end slice: the demo trains, samples and lands near the data's noise floor; the command fails cleanly."
import subprocess, sys
from pathlib import Path
import pytest
from diffkit.cli import demo


def test_demo_reaches_noise_floor(tmp_path):
    # A shortened demo (the full one trains 4000 steps): still within 3x of the noise floor.
    r = demo(steps=1500, n=5000, sample_steps=50, out=str(tmp_path / 'demo.png'), log_every=0)
    assert (tmp_path / 'demo.png').stat().st_size > 10_000
    assert r['sw_floor'] > 0
    assert r['sw_samples'] < 3 * r['sw_floor'], r


def test_demo_untrained_is_far():
    # The metric can fail: an untrained model (1 step) is far from the floor.
    r = demo(steps=1, n=2000, sample_steps=10, out=None, log_every=0)
    assert r['sw_samples'] > 5 * r['sw_floor'], r


@pytest.mark.parametrize('args,msg', [(['demo', '--steps', '0'], '--steps: expected a positive int'),
                                      (['demo', '--dataset', 'moons'], "invalid choice: 'moons'"),
                                      (['nope'], 'invalid choice')])
def test_cli_bad_arguments(args, msg):
    exe = Path(sys.executable).parent / 'diffkit'
    p = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert p.returncode == 2
    assert msg in p.stderr and 'Traceback' not in p.stderr, p.stderr
