"""DQN and PPO on CartPole-v1, side by side: the shipped jobs (jobs/cartpole_dqn.yaml,
jobs/cartpole_ppo.yaml) trained for each seed until the greedy policy returns >= 475 over 20
evaluation episodes or 100,000 env steps have been sampled. Printed per seed: env steps and
wall time to reach 475 (or the best greedy return when it was not reached), then the count of
seeds that made it. Anchor: RLlib's own tuned DQN CartPole-v1 example stops at return 450 within
200,000 env steps.

    python benchmarks/rl_cartpole.py [--seeds 0 1 2] [--algorithms dqn ppo] [--storage DIR]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bigmodel_ray.cli"]


def train(algorithm: str, seed: int, storage: Path) -> dict:
    name = f"cartpole_{algorithm}_{seed}"
    subprocess.run([*CLI, "run", f"jobs/cartpole_{algorithm}.yaml", f"--set=name={name}", f"--set=seed={seed}",
                    f"--set=storage={storage}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    result = json.loads((storage / name / "result.json").read_text())
    history = [json.loads(line) for line in (storage / name / "metrics.jsonl").read_text().splitlines()]
    reached = result["env_steps_to_stop_return"]
    # Wall time to the iteration that first reached the target: the run's iteration times summed
    result["wall_s_to_target"] = (sum(r["iteration_s"] for r in history if r["env_steps"] <= reached)
                                  if reached is not None else None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=["dqn", "ppo"])
    parser.add_argument("--storage", type=Path, default=None)
    args = parser.parse_args()
    storage = args.storage or Path(tempfile.mkdtemp(prefix="rl-bench-"))
    for algorithm in args.algorithms:
        made = 0
        for seed in args.seeds:
            r = train(algorithm, seed, storage)
            if r["env_steps_to_stop_return"] is not None:
                made += 1
                how = (f"greedy return {r['best_eval_return']:.1f} >= 475 after {r['env_steps_to_stop_return']:,} "
                       f"env steps, {r['wall_s_to_target']:.0f} s of training")
            else:
                how = f"did not reach 475 in {r['env_steps']:,} env steps (best greedy return {r['best_eval_return']:.1f})"
            print(f"{algorithm} seed {seed}: {how}; final greedy {r['eval_return_mean']:.1f} +- {r['eval_return_std']:.1f} "
                  f"over {r['eval_episodes']} episodes; run {r['wall_s']:.0f} s", flush=True)
        print(f"{algorithm}: {made} of {len(args.seeds)} seeds reached 475 within 100,000 env steps", flush=True)


if __name__ == "__main__":
    main()
