"""Data-parallel training of a small flow model with torchrun (DDP: gloo on CPU, nccl on GPU).

    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29512 \\
        examples/train_ddp.py --steps 30 --out /tmp/ddp.json

Run without torchrun it trains in one process. Every process seeds the same generator; `train` sees the
initialised process group, wraps the model in DistributedDataParallel and keeps this rank's shard of each
global batch, and `regression_loss(..., shard=(rank, world))` draws the global batch's times and noise and
keeps its slice, so the loss curve equals the 1-process run with the same global batch up to reduction order.
"""
from __future__ import annotations
import argparse, json, os
import torch
import torch.distributed as dist
from diffkit.models.mlp import TimeMLP
from diffkit.objectives import regression_loss
from diffkit.paths import Linear
from diffkit.toy import toy_data
from diffkit.training import ProgressBar, train


def main(steps: int = 30, batch_size: int = 256, width: int = 64, seed: int = 0, lr: float = 2e-3, out: str | None = None,
         backend: str | None = None, dataset: str = 'checkerboard', progress: bool = False,
         checkpoint_dir: str | None = None, checkpoint_every: int = 0, resume: bool | str = False) -> dict:
    "Train a TimeMLP on a 2-D toy set, under torchrun if launched by it; return (and on rank 0 save) the losses."
    distributed = 'RANK' in os.environ and int(os.environ.get('WORLD_SIZE', '1')) > 1
    device = torch.device('cpu')
    if distributed:
        backend = backend or ('nccl' if torch.cuda.is_available() else 'gloo')
        if backend == 'nccl':
            device = torch.device('cuda', int(os.environ['LOCAL_RANK'])); torch.cuda.set_device(device)
        dist.init_process_group(backend)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    try:
        torch.manual_seed(seed)                                  # the same initial weights on every rank
        net = TimeMLP(dim=2, width=width, depth=2).to(device)
        data = toy_data(dataset, 20_000, torch.Generator().manual_seed(seed + 1)).to(device)   # the same dataset everywhere
        path = Linear()
        loss = lambda m, x0, gen: regression_loss(m, path, x0, 'velocity', generator=gen, shard=(rank, world))
        model, losses = train(net, loss, data, steps=steps, batch_size=batch_size, lr=lr, warmup=5, ema_decay=0.99,
                              generator=torch.Generator().manual_seed(seed), device=device,
                              callbacks=[ProgressBar(every=10)] if progress else (),
                              checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume)
        checksum = float(sum(p.double().sum() for p in model.parameters()))
        res = dict(rank=rank, world=world, losses=losses, checksum=checksum, backend=backend or 'none')
        if out:
            allres = [None] * world
            if distributed: dist.all_gather_object(allres, res)
            else: allres = [res]
            if rank == 0:
                with open(out, 'w') as f: json.dump(dict(losses=losses, world=world, backend=res['backend'],
                                                        checksums=[r['checksum'] for r in allres]), f)
        if distributed: dist.barrier()                           # every rank done with gloo before teardown
        return res
    finally:
        if distributed: dist.destroy_process_group()


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=30)
    p.add_argument('--batch-size', type=int, default=256, help='global batch size')
    p.add_argument('--width', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--backend', default=None, help='gloo or nccl (default: nccl on GPU, gloo on CPU)')
    p.add_argument('--out', default=None, help='write the losses (rank 0) to this JSON file')
    p.add_argument('--progress', action='store_true')
    p.add_argument('--checkpoint-dir', default=None, help='save checkpoints here (rank 0 writes)')
    p.add_argument('--checkpoint-every', type=int, default=0)
    p.add_argument('--resume', default='', help="'latest' (newest in --checkpoint-dir) or a checkpoint path prefix")
    a = p.parse_args()
    main(a.steps, a.batch_size, a.width, a.seed, a.lr, a.out, a.backend, progress=a.progress, checkpoint_dir=a.checkpoint_dir,
         checkpoint_every=a.checkpoint_every, resume=True if a.resume == 'latest' else (a.resume or False))
