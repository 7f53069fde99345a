"""Retrain the digits classifier shipped with diffkit and rewrite its weights and JSON.

    python tools/train_classifier.py                 # rewrites diffkit/assets/digits_classifier.{safetensors,json}
    python tools/train_classifier.py --out /tmp/c.safetensors

About a minute on 2 CPU cores. The JSON records the configuration, held-out accuracy, SHA-256 of the
weights and this command. Everything random is seeded; other machines or torch builds may differ in
the last floating-point bits, hence in an error or two on the 359 held-out images."""
import argparse, shlex, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffkit.classifier import save_digits_classifier, train_digits_classifier  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=60)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='weights path (default: the package asset); the JSON goes beside it')
    a = p.parse_args(argv)
    model, info = train_digits_classifier(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    cmd = ['python', 'tools/train_classifier.py', '--epochs', str(a.epochs), '--batch-size', str(a.batch_size),
           '--lr', str(a.lr), '--seed', str(a.seed)] + (['--out', a.out] if a.out else [])
    info['command'] = shlex.join(cmd)
    path = save_digits_classifier(model, info, a.out)
    print(f"held-out accuracy {info['held_out_accuracy']:.4f} ({info['held_out_errors']} errors of {info['n_held_out']}), "
          f"train accuracy {info['train_accuracy']:.4f}, {info['train']['seconds']} s -> {path}")


if __name__ == '__main__':
    main()
