"""A one-worker Ray Train run inside the calling process: what a sweep's small trials use.

A TorchTrainer starts a chain of processes (its controller, Ray Data's coordinators, a
placement-group cleaner, the worker that imports torch again) — ~20 s per run on two cores,
against epochs of a second or two. A trial whose job trains on one CPU worker runs the same
training loop (train/worker.py) in the trial's own process instead, answering the loop's Ray
Train calls (train/calls.py) itself.

Ray Train's own local mode (`num_workers=0`) keeps checkpoints nowhere (the loop's temporary
folder is deleted after its report). Here every reported checkpoint is copied into the run's
folder first and the last `keep` are kept, callbacks see each report as they do under Ray
Train's controller, and a loop that fails is restarted from its last checkpoint up to
`max_failures` times (-1: always), as Ray Train's FailureConfig does.
"""

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint

from bigmodel_ray.train.calls import RayTrainCalls


@dataclass
class Result:
    """What TorchTrainer.fit() returns, as far as this project reads it."""
    metrics: dict | None
    checkpoint: Checkpoint | None
    return_value: Any


class InProcessTrainer:
    def __init__(self, loop: Callable[[dict], Any], config: dict, *, datasets: dict, run_dir: Path, keep: int,
                 callbacks=(), max_failures: int = 0):
        self.loop, self.config, self.datasets = loop, config, datasets
        self.run_dir, self.keep, self.callbacks, self.max_failures = Path(run_dir), keep, list(callbacks), max_failures
        self.kept: list[Path] = []
        self.saved = 0              # checkpoints copied so far: the next one's number
        self.last_metrics = None

    def fit(self) -> Result:
        failures, config = 0, self.config
        while True:
            try:
                value = self.loop({**config, "train_calls": _Calls(self)})
                return Result(self.last_metrics, self.latest(), value)
            except Exception:
                if self.max_failures != -1 and failures >= self.max_failures:
                    raise
                failures += 1       # again, from the last checkpoint kept (else as the run began)
                if self.kept:
                    config = {**self.config, "init_checkpoint": str(self.kept[-1])}

    def latest(self) -> Checkpoint | None:
        return Checkpoint(str(self.kept[-1])) if self.kept else None

    def report(self, metrics: dict, checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:          # copied: the loop deletes its own folder after the report
            kept = self.run_dir / f"checkpoint_{self.saved:06d}"
            self.saved += 1
            self.run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(checkpoint.path, kept)
            self.kept.append(kept)
            while len(self.kept) > self.keep:
                shutil.rmtree(self.kept.pop(0), ignore_errors=True)
        self.last_metrics = metrics
        for callback in self.callbacks:
            callback.after_report(None, [metrics], self.latest() if checkpoint is not None else None)


class _Calls(RayTrainCalls):
    """The loop's Ray Train calls, answered in this process: rank 0 of 1, on the CPU."""

    def __init__(self, trainer: InProcessTrainer):
        self.trainer = trainer

    def rank_and_world(self) -> tuple[int, int]:
        return 0, 1

    def device(self) -> torch.device:
        return torch.device("cpu")

    def checkpoint(self) -> Checkpoint | None:
        return None     # a run of its own has none when it starts: the loop reads config["init_checkpoint"]

    def dataset_shard(self, name: str):
        return self.trainer.datasets[name]      # the whole dataset: one worker reads all of it

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict | None) -> torch.nn.Module:
        return model

    def report(self, metrics: dict, checkpoint: Checkpoint | None) -> None:
        self.trainer.report(metrics, checkpoint)
