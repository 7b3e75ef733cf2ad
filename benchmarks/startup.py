"""How long things take to start, side by side in one run.

1. The CLI: `bigmodel-ray --help`, and `validate jobs/quickstart.yaml` with the model's answer
   cached (every validate after the first of a model) and without (a fresh cache: the model is
   built on PyTorch's meta device). Median of --repeats runs each, process start to exit.
2. Command start -> first optimizer step (the `first_step_at` of the run's first epoch row) for
   `bigmodel-ray run jobs/quickstart.yaml --set train.epochs=1`:
     embedded    Ray started inside the command (what a run does by default);
     up          `bigmodel-ray up` running (started once, before; its state in a temp folder):
                 the run taken by its warm process, and (BIGMODEL_RAY_WARM=0) by the command;
     Ray Train   the baseline: a plain script that starts Ray (ray.init()) and fits Ray Train's
                 TorchTrainer, 2 workers, a Linear model, one optimizer step per worker.
   Median of --repeats runs each. Ratios: embedded / Ray Train, up / Ray Train.
3. Sweeps: N trials of 1 epoch of the quickstart model (1 worker each, 2 at a time) vs N plain
   Ray Tune function trials doing the same work in the trial's own process (the same data,
   model, batches and epoch; no Ray Train). Per-trial overhead = wall x concurrency / N minus the
   trial's own work (its training epoch and validation, timed inside); ratio ours / plain.

    python benchmarks/startup.py [--repeats 3] [--trials 8] [--parts cli steps sweep]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLI = [sys.executable, "-m", "bigmodel_ray"]


def wall(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def cli_times(repeats: int, env: dict) -> dict:
    job = str(ROOT / "jobs" / "quickstart.yaml")
    wall(CLI + ["validate", job], env)                 # its model's answer is now cached
    cold = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(wall(CLI + ["validate", job], {**env, "BIGMODEL_RAY_CACHE": cache}))
    return {"help_s": statistics.median(wall(CLI + ["--help"], env) for _ in range(repeats)),
            "validate_s": statistics.median(wall(CLI + ["validate", job], env) for _ in range(repeats)),
            "validate_new_model_s": statistics.median(cold)}


def first_step(env: dict, storage: str, name: str) -> float:
    """Seconds from the command's start to the end of its first optimizer step."""
    start = time.time()
    subprocess.run(CLI + ["run", "jobs/quickstart.yaml", "--set", f"storage={storage}", "--set", f"name={name}",
                          "--set", "train.epochs=1"], env=env, cwd=ROOT, check=True, capture_output=True)
    row = json.loads((Path(storage) / name / "metrics.jsonl").read_text().splitlines()[0])
    return row["first_step_at"] - start


def ray_train_baseline(env: dict) -> float:
    start = time.time()
    out = subprocess.run([sys.executable, __file__, "--baseline-child"], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["first_step_at"] - start


def baseline_child() -> None:
    """Ray Train's own trivial fit (the baseline's process)."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_func():
        import ray.train.torch as rt
        import torch

        model = rt.prepare_model(torch.nn.Linear(40, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(torch.randn(32, 40)).sum().backward()
        optimizer.step()
        return time.time()          # rank 0's is the run's return value

    ray.init(logging_level="ERROR")
    result = TorchTrainer(train_func, scaling_config=ScalingConfig(num_workers=2)).fit()
    print(json.dumps({"first_step_at": result.return_value}))


def first_steps(repeats: int, env: dict, storage: str) -> dict:
    from bigmodel_ray.warm import SOCKET

    times = {"embedded": [], "up": [], "up_own_process": [], "ray_train": []}
    for i in range(repeats):
        times["embedded"].append(first_step(env, storage, f"embedded{i}"))
        times["ray_train"].append(ray_train_baseline(env))
    with tempfile.TemporaryDirectory() as state:
        up_env = {**env, "BIGMODEL_RAY_LOCAL": state}
        subprocess.run(CLI + ["up"], env=up_env, cwd=ROOT, check=True, capture_output=True)
        try:
            for i in range(repeats):
                # The warm process that `up` keeps ready (a fresh one imports for a few seconds
                # after each run: a user's next command comes later than a benchmark's), then the
                # same with the command running itself.
                deadline = time.time() + 120
                while not (Path(state) / SOCKET).is_socket() and time.time() < deadline:
                    time.sleep(0.2)
                time.sleep(2)
                times["up"].append(first_step(up_env, storage, f"up{i}"))
                times["up_own_process"].append(first_step({**up_env, "BIGMODEL_RAY_WARM": "0"}, storage, f"upc{i}"))
        finally:
            subprocess.run(CLI + ["down"], env=up_env, cwd=ROOT, check=True, capture_output=True)
    return {f"{k}_s": statistics.median(v) for k, v in times.items()} | {"all_s": times}


def plain_trial(config: dict) -> None:
    """The work of one of our trials, in a plain Tune function trial: mnist1d, the quickstart
    model, batch 32, one epoch of AdamW, then validation."""
    import torch
    from ray import tune

    from bigmodel_ray.data.builtin import load_mnist1d
    from bigmodel_ray.models import build_model

    torch.set_num_threads(1)
    splits = load_mnist1d(0.1, 0.2, 0)
    (x, y), (xv, yv) = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in (splits["train"], splits["val"])]
    torch.manual_seed(0)
    model = build_model("cnn1d", (1, 40), 10, channels=[32, 64, 128], kernel_size=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.01)
    start = time.perf_counter()
    for idx in torch.randperm(len(y)).split(32):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(xv).argmax(1) == yv).float().mean().item()
    tune.report({"val_accuracy": accuracy, "work_s": time.perf_counter() - start})


def sweeps(trials: int, storage: str) -> dict:
    import ray
    from ray import tune

    from bigmodel_ray import kinds, runtime
    from bigmodel_ray.spec import validate
    from bigmodel_ray.tune.results import read_history

    # 4 CPUs: two trials of 1 worker + 0.25 for its driver beside the 1 CPU a job keeps for data
    # tasks, so both sides run two trials at a time.
    runtime.start_ray(num_cpus=4)
    raw = yaml.safe_load((ROOT / "jobs" / "quickstart.yaml").read_text())
    raw.update(name="sweep", storage=storage, resources={"workers": 1, "cpus_per_worker": 1})
    raw["train"]["epochs"] = 1
    raw["search"] = {"space": {"train.optimizer.lr": "loguniform(1e-3, 1e-2)"}, "num_samples": trials,
                     "max_concurrent_trials": 2}
    start = time.perf_counter()
    kinds.run(validate(raw, "sweep"), "sweep", say=lambda _: None)
    ours = time.perf_counter() - start
    work = [float(h["epoch_s"].iloc[0]) for h in map(read_history, (Path(storage) / "sweep" / "histories").glob("*"))]

    start = time.perf_counter()
    plain = tune.Tuner(tune.with_resources(plain_trial, {"cpu": 1}),
                       param_space={"lr": tune.loguniform(1e-3, 1e-2)},
                       tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=2),
                       run_config=tune.RunConfig(storage_path=storage, name="plain", verbose=0)).fit()
    plain_wall = time.perf_counter() - start
    plain_work = [r.metrics["work_s"] for r in plain]
    ray.shutdown()

    def overhead(wall_s, works):
        return wall_s * 2 / trials - statistics.mean(works)
    return {"ours_wall_s": ours, "ours_work_s": statistics.mean(work), "ours_overhead_s": overhead(ours, work),
            "plain_wall_s": plain_wall, "plain_work_s": statistics.mean(plain_work),
            "plain_overhead_s": overhead(plain_wall, plain_work)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--parts", nargs="+", default=["cli", "steps", "sweep"], choices=["cli", "steps", "sweep"])
    p.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_child:
        return baseline_child()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as storage:
        if "cli" in args.parts:
            cli = cli_times(args.repeats, env)
            print(f"--help {cli['help_s']:.2f} s   validate {cli['validate_s']:.2f} s   "
                  f"validate (a model not seen before) {cli['validate_new_model_s']:.2f} s", flush=True)
        if "steps" in args.parts:
            steps = first_steps(args.repeats, env, storage)
            print(f"first optimizer step after the command: embedded Ray {steps['embedded_s']:.1f} s, "
                  f"with `up` {steps['up_s']:.1f} s (its warm process; the command's own process "
                  f"{steps['up_own_process_s']:.1f} s), plain Ray Train fit {steps['ray_train_s']:.1f} s; "
                  f"embedded / Ray Train {steps['embedded_s'] / steps['ray_train_s']:.2f}x, "
                  f"up / Ray Train {steps['up_s'] / steps['ray_train_s']:.2f}x  (all: {steps['all_s']})", flush=True)
        if "sweep" in args.parts:
            sweep = sweeps(args.trials, storage)
            print(f"sweep of {args.trials} 1-epoch trials: ours {sweep['ours_wall_s']:.0f} s (work "
                  f"{sweep['ours_work_s']:.1f} s/trial, overhead {sweep['ours_overhead_s']:.1f} s/trial), plain Tune "
                  f"{sweep['plain_wall_s']:.0f} s (work {sweep['plain_work_s']:.1f} s/trial, overhead "
                  f"{sweep['plain_overhead_s']:.1f} s/trial); overhead ratio "
                  f"{sweep['ours_overhead_s'] / sweep['plain_overhead_s']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
