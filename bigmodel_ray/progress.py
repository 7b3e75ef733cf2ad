"""Console progress for a run: one line per epoch (plus a bar on a TTY), read from the epoch log.

The driver does not see workers' reports directly, so a thread follows `metrics.jsonl`, which
rank 0 appends to after every epoch.
"""

import json
import sys
import threading
from pathlib import Path

from tqdm import tqdm

# Validation metrics shown per epoch, where the run's task reports them
SHOWN = {"val_loss": "val_loss", "val_accuracy": "val_acc", "val_f1": "val_f1", "val_perplexity": "val_ppl",
         "val_bpc": "val_bpc", "val_rmse": "val_rmse", "val_mae": "val_mae", "val_hr10": "val_hr10",
         "val_ndcg10": "val_ndcg10"}


def format_epoch(row: dict, epochs: int) -> str:
    val = "  ".join(f"{label} {row[key]:.4f}" for key, label in SHOWN.items() if key in row)
    return (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  train_loss {row['train_loss']:.4f}  {val}  "
            f"lr {row['lr']:.2e}  {row['samples_per_s']:,.0f} samples/s  {row['epoch_s']:.1f}s")


class EpochPrinter:
    def __init__(self, metrics_path: Path, epochs: int, first_epoch: int, stream=None, on_epoch=None):
        """`on_epoch(row)` also sees every new epoch's row (e.g. tracking.py sends it on)."""
        stream = stream or sys.stdout
        self.path, self.epochs, self.stream, self.on_epoch = metrics_path, epochs, stream, on_epoch
        self.seen = first_epoch
        self._stop = threading.Event()
        self._bar = (tqdm(total=epochs, initial=first_epoch, unit="epoch", file=stream, leave=False, dynamic_ncols=True)
                     if stream.isatty() else None)
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll()     # the final epoch may land after the last poll
        if self._bar:
            self._bar.close()

    def _follow(self):
        while not self._stop.wait(0.5):
            self._poll()

    def _poll(self):
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:     # a line being written right now
                break
            if row["epoch"] <= self.seen:
                continue
            self.seen = row["epoch"]
            text = format_epoch(row, self.epochs)
            if self._bar:
                self._bar.write(text)
                self._bar.update(row["epoch"] - self._bar.n)
            else:
                print(text, file=self.stream, flush=True)
            if self.on_epoch is not None:
                self.on_epoch(row)
