"""Training an RLlib algorithm: one iteration at a time, greedy evaluations, checkpoints in
RLlib's own format, resume, and restarts after a failure.

Every iteration is one row (`epoch` = the iteration, for every tool that reads run logs): env
steps sampled so far, the mean return of the episodes that ended while sampling (exploring),
the learner's loss, and after the first and every `eval_every` iterations (and the last)
`eval_return_mean`, the greedy policy's mean return over `eval_episodes` episodes (seeded:
the same episodes every time). A checkpoint
(`algo.save_to_path`) is written every `checkpoint.every` iterations and at the end; a rerun
restores the newest one and continues from its iteration. A failed iteration (an env runner
died, a learner error) rebuilds the algorithm from the newest checkpoint, up to
`failure.max_failures` times.
"""

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bigmodel_ray.errors import RunFailed, first_line
from bigmodel_ray.rl.algorithm import algorithm_config
from bigmodel_ray.rl.policy import PolicyScores, check_private, play

CHECKPOINTS = "checkpoints"
ITERATION_FILE = "iteration.json"       # in each checkpoint: the row of the iteration it ends
EVAL_SEED = 1_000_000                   # evaluation episodes are seeded apart from training's


@dataclass
class Progress:
    iteration: int = 0
    env_steps: int = 0
    best_eval: float | None = None


def checkpoints_in(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its iteration file is written)."""
    found = [c for c in (folder / CHECKPOINTS).glob("iteration_*") if (c / ITERATION_FILE).exists()]
    return sorted(found, key=lambda c: json.loads((c / ITERATION_FILE).read_text())["epoch"])


def restore(algo, checkpoint: Path) -> dict:
    """Load an algorithm checkpoint of this run (RLlib unpickles parts of it: the folder must be
    this user's own, writable by no one else) and return its iteration's row."""
    check_private(checkpoint)
    algo.restore_from_path(str(checkpoint))
    return json.loads((checkpoint / ITERATION_FILE).read_text())


def evaluate(algo, rl, seed: int) -> list[float]:
    return play(PolicyScores(algo.get_module(), rl.algorithm).eval(), rl.env, rl.eval_episodes, EVAL_SEED + seed)


def iteration_row(result: dict, iteration: int, seconds: float) -> dict:
    learner = (result.get("learners") or {}).get("default_policy") or {}
    episodes = result.get("env_runners") or {}
    loss = learner.get("total_loss", learner.get("qf_loss"))
    row = {"epoch": iteration, "env_steps": int(result.get("num_env_steps_sampled_lifetime") or 0),
           "episode_return_mean": episodes.get("episode_return_mean"),
           "loss": float(loss) if loss is not None else None, "iteration_s": round(seconds, 3)}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def train(spec, folder: Path, on_row: Callable[[dict, Path | None], None], start: Path | None = None,
          say=print) -> tuple[list[dict], Path]:
    """Train the job's algorithm, its checkpoints in `folder/checkpoints` (the newest `keep`);
    `on_row(row, checkpoint or None)` sees every iteration. Starts from `start` (a checkpoint)
    or the folder's newest checkpoint. Returns this run's rows and the final checkpoint."""
    rl, every, keep = spec.rl, spec.checkpoint.every, spec.checkpoint.keep
    algo = algorithm_config(rl, spec.seed).build_algo()
    progress, rows, failures = Progress(), [], 0
    newest = start or next(reversed(checkpoints_in(folder)), None)
    try:
        if newest is not None:
            _resume(progress, restore(algo, newest))
        while not _done(progress, rl):
            began = time.perf_counter()
            try:
                result = algo.train()
            except Exception as e:       # RLlib raises whatever an env runner or learner raised
                failures += 1
                if 0 <= spec.failure.max_failures < failures:
                    raise RunFailed(f"{spec.name}: iteration {progress.iteration + 1} failed: {_reason(e)}") from e
                newest = next(reversed(checkpoints_in(folder)), None)
                say(f"{spec.name}: iteration {progress.iteration + 1} failed ({_reason(e)}); restarting from "
                    f"{newest.name if newest else 'the start'} (failure {failures} of {spec.failure.max_failures})")
                algo.stop()
                algo, progress = algorithm_config(rl, spec.seed).build_algo(), Progress()
                if newest is not None:
                    _resume(progress, restore(algo, newest))
                continue
            progress.iteration += 1
            row = iteration_row(result, progress.iteration, time.perf_counter() - began)
            progress.env_steps = row["env_steps"]
            if progress.iteration % rl.eval_every == 0 or progress.iteration == 1 or _done(progress, rl):
                returns = evaluate(algo, rl, spec.seed)
                row["eval_return_mean"], row["eval_return_std"] = statistics.fmean(returns), statistics.pstdev(returns)
                progress.best_eval = max(progress.best_eval or -math.inf, row["eval_return_mean"])
            checkpoint = None
            if progress.iteration % every == 0 or _done(progress, rl):
                checkpoint = _save(algo, folder, {**row, "best_eval": progress.best_eval}, keep)
            rows.append(row)
            on_row(row, checkpoint)
        final = next(reversed(checkpoints_in(folder)), None)
        if final is None or json.loads((final / ITERATION_FILE).read_text())["epoch"] != progress.iteration:
            last = rows[-1] if rows else {"epoch": progress.iteration, "env_steps": progress.env_steps}
            final = _save(algo, folder, {**last, "best_eval": progress.best_eval}, keep)
        return rows, final
    finally:
        algo.stop()


def _resume(progress: Progress, row: dict) -> None:
    progress.iteration, progress.env_steps = row["epoch"], row.get("env_steps", 0)
    progress.best_eval = row.get("best_eval")


def _done(progress: Progress, rl) -> bool:
    reached = rl.stop_return is not None and progress.best_eval is not None and progress.best_eval >= rl.stop_return
    return progress.env_steps >= rl.env_steps or reached


def _save(algo, folder: Path, row: dict, keep: int) -> Path:
    path = folder / CHECKPOINTS / f"iteration_{row['epoch']:06d}"
    shutil.rmtree(path, ignore_errors=True)
    algo.save_to_path(str(path))
    (path / ITERATION_FILE).write_text(json.dumps(row))      # last: marks the checkpoint complete
    for old in checkpoints_in(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _reason(e: BaseException) -> str:
    """`Type: message` of what failed (RLlib re-raises an env runner's error without a message)."""
    while not str(e).strip() and (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    line = first_line(e)
    return line if line.startswith(type(e).__name__) else f"{type(e).__name__}: {line}"
