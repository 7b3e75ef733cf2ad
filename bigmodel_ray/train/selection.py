"""Which epoch's model a run reports, and when it stops early.

A validation curve is noisy: the last epoch is often not the best one (seen on a real image
folder: val accuracy swinging between 0.67 and 0.99 over the last epochs). `Best` follows a
validation metric and keeps the best epoch's weights; the test metrics and the model a run
leaves (`result.json`'s checkpoint) are that epoch's unless `checkpoint.evaluate: last`.
`Patience` ends a run once its metric has not improved by `min_delta` for `patience` epochs.

Both live in every checkpoint (the best weights beside the last ones), so a run that is
resumed or restarted after a failure remembers its best epoch and its patience exactly.
"""

import math
from dataclasses import asdict, dataclass

from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present


def _full_state():
    """Full weights on every rank (FSDP2's shards gathered), gathered and loaded back the way a
    checkpoint is written and a resumed run loads it. (Imported here: ~0.6 s that the driver,
    which imports this module, never needs.)"""
    from torch.distributed.checkpoint import state_dict

    return state_dict, state_dict.StateDictOptions(full_state_dict=True)


@dataclass
class Tracker:
    """The best value of one metric so far and the epoch that reached it."""
    metric: str
    mode: str                  # "max" | "min"
    min_delta: float = 0.0
    epoch: int = 0
    value: float | None = None
    # A metric whose lower value wins a tie (the best epoch: val_loss). Accuracy on a small
    # validation set ties often; the first epoch to reach it is seldom the better model (seen on
    # digits: epoch 4 and 10 at val 0.9935, test 0.970 and 1.000).
    tie_break: str | None = None
    tie_value: float | None = None

    def improves(self, value, tie=None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        if value == self.value and tie is not None and self.tie_value is not None:
            return tie < self.tie_value
        return value > self.value + self.min_delta if self.mode == "max" else value < self.value - self.min_delta

    def update(self, row: dict) -> bool:
        if self.metric not in row:
            raise ValueError(f"{self.metric} is not reported by this run (it reports {', '.join(sorted(row))})")
        tie = row.get(self.tie_break) if self.tie_break else None
        if self.improves(row[self.metric], tie):
            self.epoch, self.value, self.tie_value = row["epoch"], float(row[self.metric]), tie
            return True
        return False

    def restore(self, saved: dict | None) -> None:
        if saved and saved.get("metric") == self.metric:
            self.epoch, self.value = saved["epoch"], saved["value"]


def default_metric(row: dict) -> tuple[str, str] | tuple[None, None]:
    """What "best" means when the job does not say: accuracy if the run reports one (a multitask
    run: its first task's), a ranking's HR@10, else the validation loss (a rating's: its MSE);
    None when it reports none of them."""
    accuracies = [k for k in row if k.startswith("val_") and k.endswith("accuracy")]
    if accuracies:
        return ("val_accuracy" if "val_accuracy" in row else accuracies[0]), "max"
    if "val_hr10" in row:
        return "val_hr10", "max"
    return ("val_loss", "min") if "val_loss" in row else (None, None)


class Best:
    """The best epoch by `metric` and its weights (on every rank; every rank calls every method)."""

    def __init__(self, metric: str | None, mode: str | None, keep_weights: bool):
        self.metric, self.mode = metric, mode
        self.tracker: Tracker | None = None
        self.keep_weights = keep_weights
        self.weights: dict | None = None         # the best epoch's full weights

    def update(self, model, row: dict) -> None:
        if self.tracker is None:
            metric, mode = (self.metric, self.mode or _mode_of(self.metric)) if self.metric else default_metric(row)
            if metric is None:
                return
            self.tracker = Tracker(metric, mode, tie_break="val_loss" if metric != "val_loss" else None)
        if self.tracker.update(row) and self.keep_weights:
            self.weights = _full_weights(model)

    def state(self) -> dict | None:
        if self.tracker is None:
            return None
        return {**asdict(self.tracker), "model": self.weights}

    def restore(self, saved: dict | None) -> None:
        if saved:
            self.tracker = Tracker(saved["metric"], saved["mode"], 0.0, saved["epoch"], saved["value"],
                                   saved.get("tie_break"), saved.get("tie_value"))
            self.weights = saved.get("model")

    def chosen_epoch(self, current_epoch: int) -> int:
        """The epoch whose weights `load_into` puts in the model. Every rank decides alike: their
        trackers agree, and so does `weights is None`."""
        if self.tracker is None or self.weights is None or self.tracker.epoch == 0:
            return current_epoch
        return self.tracker.epoch

    def load_into(self, model, current_epoch: int) -> int:
        """Put the chosen epoch's weights into `model` (every rank); returns that epoch."""
        if self.chosen_epoch(current_epoch) == current_epoch:
            return current_epoch
        # FSDP2 leaves the root's parameters gathered after a forward (the last evaluation):
        # loading needs them sharded again, as they are when a resumed run loads its state.
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        # A shallow copy: the call renames the dict's keys in place (DDP's `module.` prefix added),
        # and these weights are still saved in the checkpoint and loaded again later.
        state_dict, full = _full_state()
        state_dict.set_model_state_dict(model, dict(self.weights), options=full)   # as a resumed run loads its state
        return self.tracker.epoch


def _full_weights(model) -> dict:
    """The model's full weights, copied to CPU on every rank (a collective).
    Keys as the bare model names them (never DDP's `module.` prefix, which no model loads)."""
    state_dict, full = _full_state()
    weights = state_dict.get_model_state_dict(model, options=full)          # as a checkpoint gathers it
    # A copy: on CPU, "offloading" returns the live tensors themselves, which training goes on
    # changing (the "best" weights would silently become the last ones).
    weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
    consume_prefix_in_state_dict_if_present(weights, "module.")
    return weights



class Patience:
    """Early stopping: stop once `metric` has gone `patience` epochs without improving by `min_delta`."""

    def __init__(self, metric: str | None, mode: str | None, patience: int, min_delta: float):
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.tracker: Tracker | None = None

    def update(self, row: dict) -> bool:
        """Whether to stop after this epoch."""
        if self.tracker is None:
            metric, mode = (self.metric, self.mode or _mode_of(self.metric)) if self.metric else default_metric(row)
            if metric is None:
                raise ValueError("train.early_stopping: this run reports no val_accuracy or val_loss; name a metric")
            self.tracker = Tracker(metric, mode, self.min_delta)
        self.tracker.update(row)
        return row["epoch"] - self.tracker.epoch >= self.patience

    def exhausted(self, epochs_done: int) -> bool:
        return self.tracker is not None and self.tracker.epoch > 0 and epochs_done - self.tracker.epoch >= self.patience

    def state(self) -> dict | None:
        return asdict(self.tracker) if self.tracker else None

    def restore(self, saved: dict | None) -> None:
        if saved:
            self.tracker = Tracker(saved["metric"], saved["mode"], saved.get("min_delta", self.min_delta),
                                   saved["epoch"], saved["value"])


def _mode_of(metric: str) -> str:
    """Losses, perplexities and bits per character go down; accuracies and F1 go up."""
    return "min" if any(word in metric for word in ("loss", "perplexity", "bpc", "rmse", "mae")) else "max"
