"""What a training run optimizes and reports: the one part of the DDP loop that differs between
plain classification, distillation, fine-tuning, domain adaptation and multi-task training.

An objective decides which datasets are training streams (split across workers; the others are
evaluated), how the model is prepared before it is wrapped for DDP, the optimizer's parameter
groups, each step's batch and loss, which parameters an epoch leaves untouched, and the metrics
of an evaluation pass. The worker (train/worker.py) runs any of them the same way. Objectives
are built on the driver and travel to the workers inside the train loop's config.
"""

import math

import torch
import torch.nn.functional as F

from bigmodel_ray.train.metrics import ClassScores


class Classify:
    """Cross-entropy on the `train` split; `val`/`test` report loss, accuracy and macro-F1."""

    train_sets = ("train",)
    cycled_sets: tuple = ()     # train streams restarted mid-epoch: workers keep them in memory
    ddp_kwargs: dict = {}

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing
        self.class_weight = None        # per-class weights of the loss (train.class_weights), set by the worker

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        """`lr_scale` multiplies the job's learning rate for the group (train/optim.py)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def micro_batches(self, rows_per_worker: dict[str, int], batch_size: int) -> int:
        """Micro-batches per epoch on each worker (sets the learning-rate schedule's length)."""
        return math.ceil(rows_per_worker["train"] / batch_size)

    def batches(self, streams: dict, epoch: int, micro_batches: int):
        return streams["train"].epoch(epoch)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return F.cross_entropy(model(x).float(), y, weight=self.class_weight, label_smoothing=self.label_smoothing), len(y)

    def scores(self, num_classes: int, device) -> ClassScores:
        """What an evaluation pass sums up (train/steps.py evaluate)."""
        return ClassScores(num_classes, device)

    def frozen(self, model: torch.nn.Module, epoch: int) -> list[torch.nn.Parameter]:
        """Parameters this epoch must not update although they take part in the forward pass."""
        return []

    def evaluate(self, run_eval, model, split: str) -> dict[str, float]:
        """`split` is "val" (every epoch) or "test" (the last); `run_eval(dataset, model)`
        evaluates one dataset and returns loss/accuracy/f1/count."""
        return prefixed(split, run_eval(split, model))


def prefixed(prefix: str, result: dict) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in result.items() if k != "count"} | {f"{prefix}_count": result["count"]}
