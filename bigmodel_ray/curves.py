"""`curves.png` in every training run folder: the learning curves, with the chosen epoch marked."""

from pathlib import Path

FILE = "curves.png"


def plot(history: list[dict], best: dict | None, path: Path) -> None:
    """Losses (left) and every other validation metric that is a share in [0, 1] (right), per
    epoch, from the run's epoch log; a dashed line at the epoch whose model the run keeps."""
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    shares = [k for k in history[-1] if k.startswith("val_") and "loss" not in k
              and all(0 <= (r.get(k) if r.get(k) is not None else 0) <= 1 for r in history)]
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in ("train_loss", "val_loss"):
        if key in history[-1]:
            losses.plot(epochs, [r.get(key) for r in history], marker=".", label=key)
    for key in shares:
        scores.plot(epochs, [r.get(key) for r in history], marker=".", label=key)
    for ax in (losses, scores):
        if best and best.get("epoch"):
            ax.axvline(best["epoch"], color="0.5", linestyle="--", linewidth=1,
                       label=f"best {best['metric']} (epoch {best['epoch']})")
        ax.set_xlabel("epoch")
        if ax.has_data():
            ax.legend(fontsize=8)
    losses.set_title("loss")
    scores.set_title("validation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
