"""`kind: rl` — reinforcement learning with Ray RLlib (DQN, PPO) on a gymnasium environment.

Run folder `<storage>/<name>/`: `spec.yaml`, `metrics.jsonl` (one line per iteration, `epoch` =
the iteration), `checkpoints/iteration_*` (RLlib's own format, the newest `checkpoint.keep`),
`curves.png` (returns against env steps) and `result.json` (the greedy policy's return over
`eval_episodes` episodes, and when it first reached `stop_return`). Running the same job again
resumes from the newest checkpoint. A sweep's trial runs the same loop inside its Tune trial,
reporting every iteration with its checkpoint (ASHA and PBT stop and clone trials by it).
"""

import json
import time
from pathlib import Path

from bigmodel_ray import kinds, runs
from bigmodel_ray.rl import loop
from bigmodel_ray.rl.algorithm import check_env
from bigmodel_ray.spec import JobSpec, dump

CURVES = "curves.png"


def describe(spec: JobSpec) -> str:
    rl = spec.rl
    where = f"{rl.env_runners} env runner actors" if rl.env_runners else "sampling in the learner's process"
    stop = f", or greedy return >= {rl.stop_return:g}" if rl.stop_return is not None else ""
    return (f"{rl.algorithm.upper()} on {rl.env} (hidden {rl.hidden}, lr {rl.lr:g}), {where}; up to "
            f"{rl.env_steps:,} env steps{stop}; greedy evaluation every {rl.eval_every} iterations")


def format_row(row: dict) -> str:
    parts = [f"iteration {row['epoch']:>4}", f"env_steps {row['env_steps']:>9,}"]
    if row.get("episode_return_mean") is not None:
        parts.append(f"return {row['episode_return_mean']:7.1f}")
    if row.get("eval_return_mean") is not None:
        parts.append(f"eval {row['eval_return_mean']:7.1f}")
    if row.get("loss") is not None:
        parts.append(f"loss {row['loss']:.4f}")
    return "  ".join(parts + [f"{row['iteration_s']:.1f}s"])


def plot(history: list[dict], stop_return: float | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, label in (("episode_return_mean", "return while exploring"), ("eval_return_mean", "greedy evaluation")):
        points = [(r["env_steps"], r[key]) for r in history if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="." if key.startswith("eval") else None, label=label)
    if stop_return is not None:
        ax.axhline(stop_return, color="0.5", linestyle="--", linewidth=1, label=f"stop_return {stop_return:g}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class RL:
    resume_keys = ("rl", "seed")
    step_name = "iteration"          # one row of its log (the Ctrl-C line says where it stopped)

    def cpus_needed(self, spec: JobSpec) -> float:
        return 1 + spec.rl.env_runners * spec.rl.cpus_per_runner      # the learner (this process) and the samplers

    def trial_cpus(self, spec: JobSpec) -> tuple[float, float]:
        # The learner is the trial's own process; no Ray Data.
        return spec.rl.env_runners * spec.rl.cpus_per_runner, 0.0

    def trial_process_cpus(self, spec: JobSpec) -> float:
        return 0.0      # the learner runs on the trial driver's share (search.trial_cpus)

    def run(self, spec: JobSpec, source: str, say=print) -> dict:
        rl, folder = spec.rl, runs.folder_of(spec)
        run_dir = runs.run_dir_of(spec, source)
        runs.check_same_job(run_dir, spec, source, keys=self.resume_keys)
        check_env(rl.env, rl.algorithm, source)
        say(f"{spec.name}: {describe(spec)}")
        run_dir.mkdir(parents=True, exist_ok=True)          # only now: a rejected job writes nothing
        runs.write_spec(run_dir, dump(spec))
        newest = next(reversed(loop.checkpoints_in(run_dir)), None)
        done = json.loads((newest / loop.ITERATION_FILE).read_text())["epoch"] if newest else 0
        # Iterations after the newest checkpoint are trained again: their rows are replaced.
        history = [r for r in runs.read_epoch_log(run_dir) if r["epoch"] <= done]
        if done:
            say(f"{spec.name}: resuming from {newest.name} in {folder.uri}")

        def on_row(row: dict, checkpoint) -> None:
            history[:] = [r for r in history if r["epoch"] < row["epoch"]] + [row]
            runs.write_atomic(run_dir / runs.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
            say(format_row(row))

        start = time.perf_counter()
        rows, final = loop.train(spec, run_dir, on_row, say=say)
        evaluated = [r for r in history if r.get("eval_return_mean") is not None]
        reached = [r for r in evaluated if rl.stop_return is not None and r["eval_return_mean"] >= rl.stop_return]
        last = history[-1] if history else {}
        summary = {
            "name": spec.name, "algorithm": rl.algorithm, "env": rl.env,
            "eval_return_mean": evaluated[-1]["eval_return_mean"] if evaluated else None,
            "eval_return_std": evaluated[-1]["eval_return_std"] if evaluated else None,
            "eval_episodes": rl.eval_episodes,
            "best_eval_return": max((r["eval_return_mean"] for r in evaluated), default=None),
            "env_steps_to_stop_return": reached[0]["env_steps"] if reached else None,
            "epochs": last.get("epoch", 0), "env_steps": last.get("env_steps", 0),
            "epochs_this_run": len(rows), "wall_s": round(time.perf_counter() - start, 2),
            "wall_s_training": round(sum(r["iteration_s"] for r in history), 2),
            "checkpoint": str(final), "run_dir": folder.uri,
        }
        plot(history, rl.stop_return, run_dir / CURVES)
        runs.write_result(run_dir, summary)
        folder.push()
        say(f"{spec.name}: greedy return {summary['eval_return_mean']:.1f} over {rl.eval_episodes} episodes after "
            f"{summary['env_steps']:,} env steps ({summary['epochs']} iterations, {len(rows)} this run, "
            f"{summary['wall_s']:.0f}s) -> {folder.uri}")
        return summary

    def prepare_sweep(self, spec: JobSpec, source: str, say) -> kinds.Prepared:
        check_env(spec.rl.env, spec.rl.algorithm, source)
        return kinds.Prepared(spec, describe(spec))

    def trial_epochs(self, spec: JobSpec) -> int:
        return spec.train.epochs           # the iterations the env step budget takes (spec/rl.py)

    def run_trial(self, spec: JobSpec, source: str, trial) -> None:
        from ray import tune

        given = tune.get_checkpoint()
        work = Path(tune.get_context().get_trial_dir()) / "rl"
        latest = {}

        def on_row(row: dict, checkpoint) -> None:
            # Tune wants the metric in every report: the latest greedy evaluation stands until the next
            latest.update({k: row[k] for k in ("eval_return_mean", "eval_return_std") if k in row})
            reported = {k: v for k, v in {**row, **latest}.items() if v is not None}     # Tune compares numbers only
            trial.record(reported)
            tune.report(reported, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)

        loop.train(spec, work, on_row, start=Path(given.path) if given else None, say=lambda _: None)

    def finish_sweep(self, prepared: kinds.Prepared, sweep_dir, records, say) -> dict:
        return {}


KIND = RL()
