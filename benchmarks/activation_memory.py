"""Activation checkpointing and torch.compile: training memory and step time, side by side.

For each model (default: a text_transformer, embed_dim 256, 4 blocks, 4 heads, 256 tokens, 32 rows
of random token ids; and a cnn2d on 64 x 64 RGB images, batch 64) and each configuration (plain,
`train.activation_checkpointing`, `train.compile`, both), a fresh subprocess builds the model
with bigmodel_ray's own `prepare_compute`, trains `--warmup` steps (the compile happens in the
first), then `--steps` measured steps (AdamW, cross-entropy, dropout 0.1). Measured:

- training memory: the peak resident set during the measured steps minus the resident set just
  before them (Linux's VmHWM, reset through /proc/self/clear_refs, after glibc's malloc_trim):
  activations, gradients and temporaries, not the weights, optimizer state or compiler;
- step time: the mean over the measured steps, in CPU time of the process (one torch thread by
  default: other tenants of a shared machine stretch wall-clock time, not the work a step does)
  and in wall-clock time; first step: the first warm-up step's wall-clock time (the compile, with
  an empty inductor cache as in a first run);
- peak RSS: the process's whole peak, warm-up and compile included.

Ratios are against plain. Configurations run back to back in each of `--rounds` rounds; the
median over rounds is printed.

    python benchmarks/activation_memory.py [--models text_transformer cnn2d] [--steps 10] [--rounds 1] [--threads 1]
"""

import argparse
import ctypes
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIGS = {"plain": {}, "checkpointing": {"activation_checkpointing": True}, "compile": {"compile": True},
           "both": {"activation_checkpointing": True, "compile": True}}
MODELS = {  # name -> (input shape, model args, batch rows)
    "text_transformer": ((256,), {"vocab_size": 8000, "embed_dim": 256, "depth": 4, "num_heads": 4}, 32),
    "cnn2d": ((3, 64, 64), {"channels": [32, 64]}, 64),
}


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def child(model_name: str, config: str, warmup: int, steps: int, threads: int) -> dict:
    """One configuration in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    from bigmodel_ray.models import build_model
    from bigmodel_ray.spec import TrainSpec
    from bigmodel_ray.train.compute import prepare_compute

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape, args, rows = MODELS[model_name]
    model = prepare_compute(build_model(model_name, shape, 10, **args), TrainSpec(**CONFIGS[config]), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = model.example_inputs(rows, g) if hasattr(model, "example_inputs") else torch.randn(rows, *shape, generator=g)
    y = torch.randint(0, 10, (rows,), generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        start, cpu = time.perf_counter(), time.process_time()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, time.process_time() - cpu

    first = [step() for _ in range(warmup)][0][0]
    warmup_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # the compile included
    # glibc keeps freed heap pages resident: hand them back, so that the resident set before the
    # measured steps holds only live memory and its peak during them is the steps' own.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")        # VmHWM := VmRSS: the peak of what follows
    times = [step() for _ in range(steps)]
    return {"train_mb": (_kib("VmHWM") - before) / 1024, "step_ms": 1000 * statistics.mean(t for t, _ in times),
            "cpu_ms": 1000 * statistics.mean(c for _, c in times),
            "first_step_s": first, "peak_rss_mb": max(warmup_peak_kib, _kib("VmHWM")) / 1024}


def measure(model_name: str, config: str, args) -> dict:
    with tempfile.TemporaryDirectory() as cache:        # every compile from scratch, as in a first run
        out = subprocess.run([sys.executable, __file__, "--child", model_name, config, "--warmup", str(args.warmup),
                              "--steps", str(args.steps), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", nargs=2, metavar=("MODEL", "CONFIG"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.warmup, args.steps, args.threads)))
        return

    import torch

    results = {m: {c: [] for c in CONFIGS} for m in args.models}
    for r in range(args.rounds):
        for m in args.models:
            for c in CONFIGS:
                results[m][c].append(measure(m, c, args))
                row = results[m][c][-1]
                print(f"round {r + 1}: {m} {c}: {row['train_mb']:.0f} MB, {row['step_ms']:.0f} ms/step, "
                      f"{row['cpu_ms']:.0f} CPU ms/step, first step {row['first_step_s']:.1f} s", flush=True)

    print(f"\n{args.steps} steps after {args.warmup} warm-up, median of {args.rounds} round(s), {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'model':<17} {'config':<14} {'train MB':>9} {'x plain':>8} {'CPU ms/step':>12} {'x plain':>8} "
          f"{'wall ms/step':>13} {'1st step s':>11} {'peak RSS MB':>12}")
    for m, by_config in results.items():
        med = {c: {k: statistics.median(row[k] for row in rows) for k in rows[0]} for c, rows in by_config.items()}
        for c, v in med.items():
            print(f"{m:<17} {c:<14} {v['train_mb']:>9.0f} {v['train_mb'] / med['plain']['train_mb']:>8.2f} "
                  f"{v['cpu_ms']:>12.0f} {v['cpu_ms'] / med['plain']['cpu_ms']:>8.2f} {v['step_ms']:>13.0f} "
                  f"{v['first_step_s']:>11.1f} {v['peak_rss_mb']:>12.0f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
