"""Steady-state training throughput: bigmodel_ray's 2-worker DDP vs plain torchrun DDP vs one process.

Also the torchrun loop verbatim inside Ray Train workers, which separates Ray's own runtime
cost from bigmodel_ray's. Same model (quickstart's cnn1d), same per-worker batch, same in-memory MNIST-1D rows, same
optimizer; each measures samples/s over the training part of every epoch (no evaluation) and
reports the median over epochs after the first (warm-up, and bigmodel_ray's first pass over
its Ray Data shard). They run interleaved for `--rounds` rounds and ratios are taken within
each round, then the median: on a shared 2-core machine the load of other tenants moves
absolute numbers by 10-15 % between minutes.

    python benchmarks/ddp_overhead.py [--epochs 10] [--rounds 3]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
JOB = ROOT / "jobs" / "quickstart.yaml"


def _setup(world: int, rank: int):
    from bigmodel_ray.data.builtin import load_mnist1d
    from bigmodel_ray.models import build_model
    from bigmodel_ray.spec import load_job

    spec = load_job(JOB)
    x, y = (torch.from_numpy(a) for a in load_mnist1d(0.1, 0.15, 0)["train"])
    per_worker = len(y) // world                       # as Ray's even split: same rows per worker
    x, y = x[rank::world][:per_worker], y[rank::world][:per_worker]
    torch.manual_seed(0)
    model = build_model(spec.model.name, (1, 40), 10, **spec.model.args)
    return spec, model, x, y


def _epochs(model, opt, x, y, batch, epochs, rank=0) -> list[float]:
    rates = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch * 1009 + rank))
        start = time.perf_counter()
        for idx in perm.split(batch):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(len(y) / (time.perf_counter() - start))
    return rates


def plain_single(epochs: int) -> float:
    """One process, both cores, global batch = 2 workers x per-worker batch."""
    torch.set_num_threads(2)
    spec, model, x, y = _setup(1, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.train.optimizer.lr, weight_decay=spec.train.optimizer.weight_decay)
    return statistics.median(_epochs(model, opt, x, y, 2 * spec.train.batch_size, epochs)[1:])


def torchrun_worker(epochs: int, out: str) -> None:
    """Run under torchrun: plain DDP (gloo), one thread per rank, as a hand-written script would."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    spec, model, x, y = _setup(world, rank)
    model = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.train.optimizer.lr, weight_decay=spec.train.optimizer.weight_decay)
    rates = _epochs(model, opt, x, y, spec.train.batch_size, epochs, rank)
    if rank == 0:
        Path(out).write_text(json.dumps([r * world for r in rates]))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_torchrun(epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rates.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        __file__, "--torchrun-worker", str(out), "--epochs", str(epochs)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        # gloo occasionally aborts at process exit ("terminate called without an active
        # exception") after the work is done; the measurement stands if it was written.
        return statistics.median(json.loads(out.read_text())[1:])


def _ray_plain_loop(config):
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    torch.set_num_threads(1)
    spec, model, x, y = _setup(ctx.get_world_size(), ctx.get_world_rank())
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.train.optimizer.lr, weight_decay=spec.train.optimizer.weight_decay)
    rates = _epochs(model, opt, x, y, spec.train.batch_size, config["epochs"], ctx.get_world_rank())
    return [r * ctx.get_world_size() for r in rates]


def ray_train_plain(epochs: int, storage: str, round_: int) -> float:
    """The torchrun loop verbatim inside Ray Train workers: what Ray's runtime itself costs."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    result = TorchTrainer(_ray_plain_loop, train_loop_config={"epochs": epochs},
                          scaling_config=ScalingConfig(num_workers=2),
                          run_config=RunConfig(name=f"plain{round_}", storage_path=storage)).fit()
    return statistics.median(result.return_value[1:])


def bigmodel_ray_ddp(epochs: int, storage: str, round_: int) -> float:
    from bigmodel_ray import kinds
    from bigmodel_ray.spec import load_job

    spec = load_job(JOB, [f"train.epochs={epochs}", f"storage={storage}", f"name=bench{round_}",
                          "checkpoint.every=1000"])
    kinds.run(spec, str(JOB), say=lambda _: None)
    rows = [json.loads(line) for line in (Path(storage) / spec.name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["samples_per_s"] for r in rows[1:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torchrun-worker", metavar="OUT")
    args = p.parse_args()
    if args.torchrun_worker:
        return torchrun_worker(args.epochs, args.torchrun_worker)

    from bigmodel_ray.runtime import start_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start_ray()
    results = {"single process": [], "torchrun 2x DDP": [], "Ray Train plain loop": [], "bigmodel_ray 2x DDP": []}
    with tempfile.TemporaryDirectory() as storage:
        for r in range(args.rounds):
            results["single process"].append(plain_single(args.epochs))
            results["torchrun 2x DDP"].append(plain_torchrun(args.epochs))
            results["Ray Train plain loop"].append(ray_train_plain(args.epochs, storage, r))
            results["bigmodel_ray 2x DDP"].append(bigmodel_ray_ddp(args.epochs, storage, r))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}

    def ratio(a, b):   # median over rounds of the within-round ratio
        return statistics.median(x / y for x, y in zip(results[a], results[b]))

    print(f"\nsteady-state samples/s (median of {args.rounds} rounds x epochs 2..{args.epochs}), "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    for name, value in med.items():
        print(f"  {name:<22} {value:>9,.0f}")
    print("ratios (median of per-round ratios):")
    print(f"  bigmodel_ray / torchrun     = {ratio('bigmodel_ray 2x DDP', 'torchrun 2x DDP'):.3f}x  (target >= 0.97)")
    print(f"  Ray Train plain / torchrun  = {ratio('Ray Train plain loop', 'torchrun 2x DDP'):.3f}x  (Ray's runtime alone)")
    print(f"  bigmodel_ray / Ray plain    = {ratio('bigmodel_ray 2x DDP', 'Ray Train plain loop'):.3f}x  "
          "(bigmodel_ray's own loop)")
    print(f"  bigmodel_ray / single proc  = {ratio('bigmodel_ray 2x DDP', 'single process'):.3f}x")

if __name__ == "__main__":
    main()
