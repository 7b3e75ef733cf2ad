"""What a sweep leaves in its folder: the trials table, the best job, the Pareto set, plots.

  trials.csv / trials.parquet  one row per trial: its values, status, epochs, metrics, time
  best.yaml                    the best trial's job, ready for `bigmodel-ray run`
  pareto.csv                   multi-objective: the trials no other trial beats on every metric
  curves.png                   the (first) metric per epoch, one line per trial
  params.png                   the metric against each searched value
  pareto.png                   two objectives: every trial, the Pareto front highlighted
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from bigmodel_ray.spec.overrides import apply
from bigmodel_ray.spec.space import parse_distribution
from bigmodel_ray.tune.space import trial_values
from bigmodel_ray.tune.trial import history_file

# Shown beside the objectives where some trial reports them (classifiers, language models,
# recommenders, RL trials each report their own).
TABLE_METRICS = ("val_accuracy", "val_f1", "val_perplexity", "val_rmse", "val_hr10", "val_ndcg10", "val_loss",
                 "eval_return_mean", "env_steps", "test_accuracy", "test_f1", "test_perplexity", "test_rmse",
                 "test_hr10", "params", "source_test_accuracy", "source_test_f1")
# The best trial's test result, as its kind and task report it (the first found is printed).
BEST_TEST_METRICS = ("test_accuracy", "test_f1", "test_rmse", "test_hr10", "test_ndcg10", "test_perplexity")


@dataclass
class TrialRecord:
    trial_id: str
    path: str              # the trial's folder
    status: str            # finished | stopped | failed | unfinished
    config: dict
    last: dict             # the last report
    history: pd.DataFrame  # one row per report
    error: str | None


def collect(sweep_dir: Path, epochs: int) -> list[TrialRecord]:
    """Every trial of the sweep in `sweep_dir`, read from Tune's experiment state on disk."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(sweep_dir))
    records = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        last = trial.last_result or {}
        epoch = last.get("epoch", 0)
        config = trial_values(trial.config)
        trial_epochs = config.get("train.epochs", epochs)      # when the search sets it
        if trial.status == "ERROR":
            status = "failed"
        elif trial.status == "TERMINATED":
            status = "finished" if epoch >= trial_epochs else "stopped"
        else:
            status = "unfinished"
        error = None
        error_file = Path(trial.path, "error.txt")        # Tune's copy in the sweep folder
        if trial.status == "ERROR" and error_file.exists():
            lines = [line for line in error_file.read_text().splitlines() if line and line[0] != " "]
            error = lines[-1][:300] if lines else "error"
        history = read_history(history_file(sweep_dir, trial.trial_id))
        records.append(TrialRecord(trial.trial_id, trial.path, status, config, last, history, error))
    return records


def read_history(path: Path) -> pd.DataFrame:
    """Every epoch a trial trained, in order (see trial.py)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return pd.DataFrame([json.loads(line) for line in lines if line.strip()])


def table(records: list[TrialRecord], objectives: list[str]) -> pd.DataFrame:
    shown = [m for m in TABLE_METRICS if any(r.last.get(m) is not None for r in records)]
    metrics = list(dict.fromkeys([*objectives, *shown]))
    rows = []
    for r in records:
        row = {"trial": r.trial_id, "status": r.status, "epoch": r.last.get("epoch", 0),
               "epochs_trained": len(r.history)}
        row.update(r.config)
        row.update({m: r.last.get(m) for m in metrics})
        row["time_s"] = round(r.last.get("time_total_s", 0.0), 1)
        row["error"] = r.error
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_mask(values: list[list[float]], modes: list[str]) -> list[bool]:
    """True for points no other point beats on every objective (and strictly on one)."""
    signs = [1 if m == "max" else -1 for m in modes]
    scored = [[s * v for s, v in zip(signs, point)] for point in values]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [not any(dominates(other, point) for other in scored if other is not point) for point in scored]


def best_trial(records: list[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The trial whose last report is best on `metric` (what its checkpoint holds)."""
    scored = [r for r in records if r.status != "failed" and _finite(r.last.get(metric))]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r.last[metric])


def write(sweep_dir: Path, records: list[TrialRecord], raw_job: dict, search, say=print) -> dict:
    """Write the sweep's tables, best job and plots; return a summary for result.json."""
    objectives, modes = search.metrics, search.modes
    frame = table(records, objectives)
    summary = {"trials": len(records), "status": frame["status"].value_counts().to_dict() if len(frame) else {},
               "epochs_trained": int(frame["epochs_trained"].sum()) if len(frame) else 0}
    if search.multi_objective:
        done = [r for r in records if r.status != "failed" and all(_finite(r.last.get(m)) for m in objectives)]
        mask = pareto_mask([[r.last[m] for m in objectives] for r in done], modes)
        front = {r.trial_id for r, keep in zip(done, mask) if keep}
        frame["pareto"] = frame["trial"].isin(front)
        frame[frame["pareto"]].to_csv(sweep_dir / "pareto.csv", index=False)
        summary["pareto"] = sorted(front)
    frame.to_csv(sweep_dir / "trials.csv", index=False)
    frame.astype({c: str for c in search.space if c in frame}).to_parquet(sweep_dir / "trials.parquet", index=False)

    best = best_trial(records, objectives[0], modes[0])
    if best is not None:
        job = apply(raw_job, best.config)
        job["name"] = f"{raw_job['name']}-best"
        (sweep_dir / "best.yaml").write_text(
            f"# best trial {best.trial_id} of sweep {raw_job['name']}: {objectives[0]} {best.last[objectives[0]]:.4f}\n"
            + yaml.safe_dump(job, sort_keys=False))
        summary["best"] = {"trial": best.trial_id, "config": best.config,
                           **{m: best.last.get(m) for m in (*objectives, *BEST_TEST_METRICS, "epoch") if m in best.last}}
    _plots(sweep_dir, records, frame, search)
    return summary


def print_table(frame: pd.DataFrame, search, say=print, limit: int = 30) -> None:
    shown = frame.drop(columns=[c for c in ("error",) if c in frame and frame[c].isna().all()])
    if "error" in shown:
        shown = shown.assign(error=shown["error"].fillna("").str.slice(0, 60))
    asc = search.modes[0] == "min"
    shown = shown.sort_values(search.metrics[0], ascending=asc, na_position="last").head(limit)
    shown = shown.rename(columns={p: p.rsplit(".", 1)[-1] for p in search.space})
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        say(shown.to_string(index=False))
    if len(frame) > limit:
        say(f"... {len(frame) - limit} more trials in trials.csv")


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _plots(sweep_dir: Path, records, frame: pd.DataFrame, search) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = search.metrics[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        if metric in r.history and "epoch" in r.history:
            style = "-" if r.status == "finished" else ":"
            ax.plot(r.history["epoch"], r.history[metric], style, marker=".", alpha=0.8, label=r.trial_id)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per trial (dotted: stopped early / unfinished)")
    if len(records) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sweep_dir / "curves.png", dpi=110)
    plt.close(fig)

    paths = list(search.space)
    fig, axes = plt.subplots(1, len(paths), figsize=(4 * len(paths), 3.6), squeeze=False)
    for ax, path in zip(axes[0], paths):
        dist = parse_distribution(search.space[path], path)
        colors = ["C0" if status == "finished" else "C1" for status in frame["status"]]
        if dist.kind in ("choice", "grid"):      # one column per value, in the order written
            labels = [str(v) for v in dist.args[0]]
            ax.scatter([labels.index(str(v)) for v in frame[path]], frame[metric], c=colors)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        else:
            ax.scatter(frame[path], frame[metric], c=colors)
            if dist.kind == "loguniform":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=path, ylabel=metric)
    fig.suptitle(f"{metric} (last report) vs searched values; orange: stopped early")
    fig.tight_layout()
    fig.savefig(sweep_dir / "params.png", dpi=110)
    plt.close(fig)

    if search.multi_objective and len(search.metrics) == 2 and "pareto" in frame:
        x, y = search.metrics
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter(frame[x], frame[y], color="0.6", label="trials")
        front = frame[frame["pareto"]].sort_values(x)
        ax.plot(front[x], front[y], "o-", color="C3", label="Pareto front")
        ax.set(xlabel=f"{x} ({search.modes[0]})", ylabel=f"{y} ({search.modes[1]})", title="Pareto front")
        ax.legend()
        fig.tight_layout()
        fig.savefig(sweep_dir / "pareto.png", dpi=110)
        plt.close(fig)
