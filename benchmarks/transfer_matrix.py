"""Cross-domain matrices: every transfer strategy against source-only on real shifted pairs.

Runs the shipped transfer sweeps, each in a fresh storage folder on one embedded Ray:
  digits   jobs/digits_transfer.yaml: digits -> digits rotated 45 degrees and blurred, 200
           labelled target images; 6 strategies x 2 learning rates
  mnist1d  jobs/mnist1d_transfer.yaml's pair (default MNIST-1D -> a generator variant), its
           source trained inline like the quickstart job; the same strategy grid
  zoom     jobs/digits_dann.yaml's pair (digits -> digits zoomed out to 70 %, an MLP): the same
           grid, 200 target labels for the supervised strategies, none for DANN
and prints each matrix (source-only, then each strategy's best trial by target validation
accuracy: source test acc, target test acc, target test F1, gain in points) and the gain of the
strategy with the best target validation accuracy.
Target (issue 7): the best strategy beats source-only on the target by >= 10 points.

    python benchmarks/transfer_matrix.py [--pairs digits mnist1d zoom] [--keep DIR]
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = "grid([linear_probe, freeze, full, discriminative, gradual, dann])"


def digits_job(storage: str) -> dict:
    raw = yaml.safe_load((ROOT / "jobs" / "digits_transfer.yaml").read_text())
    return {**raw, "storage": storage}


def mnist1d_job(storage: str) -> dict:
    raw = yaml.safe_load((ROOT / "jobs" / "mnist1d_transfer.yaml").read_text())
    quickstart = yaml.safe_load((ROOT / "jobs" / "quickstart.yaml").read_text())
    raw["transfer"]["source"] = {k: quickstart[k] for k in ("data", "model", "train")}   # trained inline
    raw["resources"] = {"workers": 1, "cpus_per_worker": 0.5}
    raw["search"] = {"space": {"transfer.strategy": STRATEGIES, "train.optimizer.lr": "grid([0.001, 0.003])"},
                     "search_alg": "grid"}
    return {**raw, "storage": storage}


def zoom_job(storage: str) -> dict:
    raw = yaml.safe_load((ROOT / "jobs" / "digits_dann.yaml").read_text())
    raw["name"] = "digits_zoom_matrix"
    raw["transfer"]["target_labels"] = 200
    raw["resources"] = {"workers": 1, "cpus_per_worker": 0.5}
    raw["train"]["batch_size"] = 32           # one worker: the same global batch as the job's 2 x 16
    raw["search"] = {"space": {"transfer.strategy": STRATEGIES, "train.optimizer.lr": "grid([0.001, 0.003])"},
                     "search_alg": "grid"}
    return {**raw, "storage": storage}


JOBS = {"digits": digits_job, "mnist1d": mnist1d_job, "zoom": zoom_job}


def run(raw: dict) -> dict:
    from bigmodel_ray import kinds
    from bigmodel_ray.spec import validate

    spec = validate(raw, f"benchmark:{raw['name']}")
    start = time.perf_counter()
    summary = kinds.run(spec, raw["name"], say=lambda line: print(f"  {line}", flush=True))
    return {"wall_s": round(time.perf_counter() - start, 1), "matrix": summary["matrix"],
            "table": (Path(raw["storage"]) / raw["name"] / "matrix.md").read_text()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--keep", help="keep the sweep folders here")
    args = parser.parse_args()

    from bigmodel_ray.runtime import start_ray

    storage = args.keep or tempfile.mkdtemp(prefix="bmr-transfer-")
    start_ray(num_cpus=3)
    results = {}
    try:
        for pair in args.pairs:
            print(f"== {pair}", flush=True)
            results[pair] = run(JOBS[pair](storage))
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    for pair, r in results.items():
        rows = r["matrix"]
        best = max(rows[1:], key=lambda row: row["target_val_accuracy"] or 0)     # chosen on validation
        print(f"\n{pair} ({r['wall_s']} s):\n{r['table']}")
        print(f"{pair}: best strategy {best['row']}: target test accuracy {best['target_test_accuracy']:.4f} vs "
              f"source-only {rows[0]['target_test_accuracy']:.4f}: {best['gain_pp']:+.1f} pp (target >= +10)")


if __name__ == "__main__":
    main()
