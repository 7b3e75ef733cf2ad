"""The cross-domain matrix of a transfer sweep: how each way of moving the source model to the
target domain does on both domains.

Rows: source-only (the source model as it is), then per strategy its best trial by the sweep's
metric (validation on the target: test numbers never choose; matrix.csv keeps the trial's
target validation accuracy). Columns: source test accuracy,
target test accuracy, target test F1, and the gain over source-only on the target in points.
Written as matrix.csv, matrix.md and matrix.png in the sweep folder.
"""

from pathlib import Path

import pandas as pd

COLUMNS = ("source_test_accuracy", "target_test_accuracy", "target_test_f1")
STRATEGY = "transfer.strategy"


def matrix(records, source_only: dict, metric: str, mode: str, fixed_strategy: str) -> pd.DataFrame:
    rows = [{"row": "source-only", "trial": None, "source_test_accuracy": source_only.get("source_test_accuracy"),
             "target_test_accuracy": source_only.get("test_accuracy"), "target_test_f1": source_only.get("test_f1")}]
    best: dict[str, object] = {}
    for r in records:
        if r.status != "finished" or r.last.get(metric) is None:
            continue
        strategy = r.config.get(STRATEGY, fixed_strategy)
        sign = 1 if mode == "max" else -1
        if strategy not in best or sign * r.last[metric] > sign * best[strategy].last[metric]:
            best[strategy] = r
    for strategy, r in best.items():
        settings = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in r.config.items() if k != STRATEGY)
        rows.append({"row": strategy, "trial": r.trial_id, "settings": settings,
                     "target_val_accuracy": r.last.get("val_accuracy"),
                     "source_test_accuracy": r.last.get("source_test_accuracy"),
                     "target_test_accuracy": r.last.get("test_accuracy"), "target_test_f1": r.last.get("test_f1")})
    frame = pd.DataFrame(rows)
    if frame["target_test_accuracy"].iloc[0] is not None:
        frame["gain_pp"] = (frame["target_test_accuracy"] - frame["target_test_accuracy"].iloc[0]) * 100
    return frame


def write_matrix(sweep_dir: Path, records, source_only: dict, search, strategy: str, say=print) -> list[dict]:
    """`strategy`: the job's own, for trials that do not search it."""
    frame = matrix(records, source_only, search.metrics[0], search.modes[0], strategy)
    frame.to_csv(sweep_dir / "matrix.csv", index=False)
    (sweep_dir / "matrix.md").write_text(to_markdown(frame))
    plot(frame, sweep_dir / "matrix.png")
    say("cross-domain matrix (best trial per strategy by " + search.metrics[0] + "):\n" + to_markdown(frame))
    return frame.where(frame.notna(), None).to_dict("records")


def to_markdown(frame: pd.DataFrame) -> str:
    cols = ["row", *COLUMNS] + (["gain_pp"] if "gain_pp" in frame else []) + (["settings"] if "settings" in frame else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(_cell(r.get(c), c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = frame[list(COLUMNS)].astype(float).to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(frame) + 1.6))
    ax.imshow(np.nan_to_num(values, nan=0.0), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.3f}", ha="center", va="center",
                color="white" if np.isnan(v) or v < 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(COLUMNS)), ["source test acc", "target test acc", "target test F1"])
    ax.set_yticks(range(len(frame)), frame["row"])
    ax.set_title("cross-domain matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(v, column: str) -> str:
    if v is None or isinstance(v, float) and v != v:
        return "-"
    if column == "gain_pp":
        return f"{v:+.1f}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
