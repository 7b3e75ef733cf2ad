"""ASHA vs running the whole grid to completion (FIFO) on MNIST-1D.

Both sweeps run the same 16 configurations of jobs/mnist1d_tune.yaml's model (4 learning rates x
4 widths, a grid search, 12 epochs each), one after the other on one embedded Ray, with the
same resources per trial. The best trial of each is chosen by validation accuracy; its test
accuracy is what counts. Printed: best test accuracy of each and the difference (target: ASHA
within 1 percentage point of the grid), epochs trained and their ratio (target: <= 1/3), wall
time and trials per hour on this machine.

    python benchmarks/tune_asha.py [--epochs 12] [--keep DIR]
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = {"train.optimizer.lr": "grid([0.0003, 0.001, 0.003, 0.01])",
        "model.args.channels": "grid([[8, 16], [16, 32], [32, 64], [32, 64, 128]])"}


def sweep_job(name: str, scheduler: str, epochs: int, storage: str) -> dict:
    raw = yaml.safe_load((ROOT / "jobs" / "mnist1d_tune.yaml").read_text())
    raw.update(name=name, storage=storage)
    raw["train"]["epochs"] = epochs
    raw["search"] = {"space": GRID, "search_alg": "grid", "metric": "val_accuracy",
                     "scheduler": {"name": scheduler, "grace_period": 1, "reduction_factor": 3}}
    return raw


def run(raw: dict) -> dict:
    import pandas as pd

    from bigmodel_ray import kinds
    from bigmodel_ray.spec import validate

    spec = validate(raw, f"benchmark:{raw['name']}")
    start = time.perf_counter()
    summary = kinds.run(spec, raw["name"], say=lambda line: print(f"  {line}", flush=True))
    wall = time.perf_counter() - start
    trials = pd.read_csv(Path(raw["storage"]) / raw["name"] / "trials.csv")
    finished = trials[trials.status == "finished"]
    best = finished.loc[finished["val_accuracy"].idxmax()]      # chosen by validation, judged on test
    return {"trials": len(trials), "stopped_early": int((trials.status == "stopped").sum()),
            "epochs_trained": int(trials["epochs_trained"].sum()), "wall_s": round(wall, 1),
            "trials_per_hour": round(len(trials) / wall * 3600, 1),
            "best_config": {"lr": best["train.optimizer.lr"], "channels": best["model.args.channels"]},
            "best_val_accuracy": float(best["val_accuracy"]), "best_test_accuracy": float(best["test_accuracy"]),
            "best_test_over_all_finished": float(finished["test_accuracy"].max()),
            "summary_best": summary.get("best", {}).get("trial")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--keep", help="keep the sweep folders here (default: a temp folder, removed)")
    args = p.parse_args()

    from bigmodel_ray import kinds
    from bigmodel_ray.runtime import start_ray
    from bigmodel_ray.spec import validate

    storage = args.keep or tempfile.mkdtemp(prefix="tune_asha-")
    jobs = {"asha": sweep_job("bench_asha", "asha", args.epochs, storage),
            "fifo": sweep_job("bench_fifo", "fifo", args.epochs, storage)}
    asha = validate(jobs["asha"], "benchmark")
    start_ray(num_cpus=kinds.runner(asha).cpus_needed(asha))
    results = {}
    for name, raw in jobs.items():
        print(f"{name}: 16-configuration grid, {args.epochs} epochs per full trial", flush=True)
        results[name] = run(raw)
        print(json.dumps(results[name], indent=2), flush=True)
    asha, fifo = results["asha"], results["fifo"]
    diff_pp = 100 * (asha["best_test_accuracy"] - fifo["best_test_accuracy"])
    ratio = asha["epochs_trained"] / fifo["epochs_trained"]
    print(f"\nbest test accuracy: ASHA {asha['best_test_accuracy']:.4f} vs grid {fifo['best_test_accuracy']:.4f} "
          f"({diff_pp:+.1f} pp; target >= -1.0) | epochs: {asha['epochs_trained']} vs {fifo['epochs_trained']} "
          f"= {ratio:.3f}x (target <= 0.333) | wall {asha['wall_s']:.0f} s vs {fifo['wall_s']:.0f} s | "
          f"trials/hour {asha['trials_per_hour']:.0f} (ASHA) {fifo['trials_per_hour']:.0f} (FIFO)")
    print(json.dumps({"asha": asha, "fifo": fifo, "test_diff_pp": round(diff_pp, 2),
                      "epoch_ratio": round(ratio, 3)}))
    if not args.keep:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
