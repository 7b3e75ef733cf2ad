"""The recommender jobs on MovieLens 100k beside their baselines on the same split, and seed to
seed: explicit ratings (RMSE / MAE vs the global mean and user + item biases; Surprise's
published 5-fold table as the anchor) and implicit ranking (HR@10 / NDCG@10 among 99 sampled
negatives vs most-popular), each job trained as shipped (Ray Train, 2 DDP workers) for every
seed, plus the ranking job with the two-tower model. Baselines are computed by the data
pipeline on the driver (data/baselines.py) and read from each run's result.json.
Needs `bigmodel-ray data fetch movielens` first.

    python benchmarks/recsys.py [--seeds 0 1 2] [--storage DIR]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bigmodel_ray.cli"]
SURPRISE_RMSE = {"SVD": 0.934, "SVD++": 0.92, "NMF": 0.963, "BaselineOnly": 0.944}   # ML-100k, 5-fold
RUNS = {   # label -> (job, overrides)
    "mf (ratings)": ("jobs/movielens_ratings.yaml", []),
    "neumf (ranking)": ("jobs/movielens_ranking.yaml", []),
    "two_tower (ranking)": ("jobs/movielens_ranking.yaml", ["model.name=two_tower", "model.args={dim: 64, l2: 0.0}"]),
}


def train(job: str, overrides: list[str], name: str, seed: int, storage: Path) -> dict:
    sets = [f"--set={o}" for o in [*overrides, f"name={name}", f"seed={seed}", f"storage={storage}"]]
    subprocess.run([*CLI, "run", job, *sets], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((storage / name / "result.json").read_text())


def series(results: list[dict], key: str) -> str:
    return " ".join(f"{r[key]:.4f}" for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--storage", type=Path, default=None)
    args = parser.parse_args()
    storage = args.storage or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    for label, (job, overrides) in RUNS.items():
        results = [train(job, overrides, f"{label.split()[0]}_{seed}", seed, storage) for seed in args.seeds]
        first = results[0]
        if "test_rmse" in first:
            print(f"{label}: test RMSE {series(results, 'test_rmse')} (seeds {args.seeds}), "
                  f"MAE {series(results, 'test_mae')}, {first['wall_s']:.0f} s a run")
            print(f"  same split: global mean {first['reference_test_rmse_global_mean']:.4f}, user + item biases "
                  f"{first['reference_test_rmse_biases']:.4f} (MAE {first['reference_test_mae_biases']:.4f}); "
                  f"Surprise 5-fold: {', '.join(f'{k} {v}' for k, v in SURPRISE_RMSE.items())}")
        else:
            popular = first["reference_test_hr10_most_popular"]
            print(f"{label}: test HR@10 {series(results, 'test_hr10')}, NDCG@10 "
                  f"{series(results, 'test_ndcg10')} (seeds {args.seeds}), {first['wall_s']:.0f} s a run")
            print(f"  same candidates: most-popular HR@10 {popular:.4f}, NDCG@10 "
                  f"{first['reference_test_ndcg10_most_popular']:.4f}; HR@10 gain "
                  f"{min(r['test_hr10'] for r in results) - popular:+.4f} (worst seed)")


if __name__ == "__main__":
    main()
