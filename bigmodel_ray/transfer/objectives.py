"""Training objectives for transfer learning (train/objectives.py has the protocol).

FineTune: a source model trained further on labelled target data, with a fine-tuning strategy.
DANN:     labelled source + unlabelled target data, domain-adversarial (transfer/dann.py).
MultiTask: one backbone, one head per task, each step one task's batch.

Transfer runs evaluate both domains: `val_*`/`test_*` are the target's, `source_test_*` the
source's (what adaptation cost there).
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bigmodel_ray.models import shard_units
from bigmodel_ray.train.objectives import Classify, prefixed
from bigmodel_ray.transfer import strategies
from bigmodel_ray.transfer.dann import DomainClassifier, ganin_lambda

SOURCE_TEST = "source_test"


class BothDomains(Classify):
    """Classification evaluated on the target, and at the end also on the source's test split."""

    source_test = True       # false when the head was replaced: the source's classes have none

    def evaluate(self, run_eval, model, split):
        out = super().evaluate(run_eval, model, split)
        if split == "test" and self.source_test:
            out |= prefixed(SOURCE_TEST, run_eval(SOURCE_TEST, model))
        return out


class FineTune(BothDomains):
    """Supervised fine-tuning on the target's `train` split with a strategy from strategies.py."""

    def __init__(self, strategy: str, freeze_stages: int = 0, backbone_lr_factor: float = 0.1,
                 unfreeze_every: int = 1, source_test: bool = True):
        super().__init__()
        self.source_test = source_test
        self.strategy, self.freeze_stages = strategy, freeze_stages
        self.backbone_lr_factor, self.unfreeze_every = backbone_lr_factor, unfreeze_every

    def prepare(self, model):
        strategies.set_trainable(model, self.strategy, self.freeze_stages)
        strategies.keep_frozen_norms_in_eval(model)
        return model

    def param_groups(self, model):
        factor = self.backbone_lr_factor if self.strategy == "discriminative" else 1.0
        return strategies.param_groups(model, backbone_factor=factor)

    def frozen(self, model, epoch):
        if self.strategy != "gradual":
            return []
        trainable = strategies.gradual_trainable(model, epoch, self.unfreeze_every)
        return [p for p in model.parameters() if p not in trainable]

class DANNModel(nn.Module):
    """The classifier and a domain classifier on its features (the classifier's input).

    `forward(x)` is the plain classifier, so evaluation and export see the model as trained;
    `forward(x, lambd)` also returns the domain logits, through the gradient reversal layer."""

    def __init__(self, model: nn.Module, hidden: int):
        super().__init__()
        self.model = model
        head = model.get_submodule(strategies.classifier_path(model))
        self.domain = DomainClassifier(head.in_features, hidden)
        self._features = None
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, _module, args):
        self._features = args[0]

    def shard_units(self):
        """FSDP: the classifier's own units, and the domain classifier."""
        return [*shard_units(self.model), self.domain]

    def forward(self, x, lambd: float | None = None):
        logits = self.model(x)
        features, self._features = self._features, None
        if lambd is None:
            return logits
        return logits, self.domain(features, lambd)


class DANN(BothDomains):
    """L_src(labelled source batch) + L_adv(domain of source and unlabelled target batches),
    the adversarial weight rising on Ganin et al.'s schedule over the run (`lambda_max` at the end).

    Streams: `source_train` (labelled) and `target_train` (labels unused); an epoch is one pass
    over the source, the target cycled alongside it."""

    train_sets = ("source_train", "target_train")
    cycled_sets = ("target_train",)

    def __init__(self, epochs: int, lambda_max: float = 1.0, gamma: float = 10.0, hidden: int = 64):
        super().__init__()
        self.epochs, self.lambda_max, self.gamma, self.hidden = epochs, lambda_max, gamma, hidden

    def prepare(self, model):
        return DANNModel(model, self.hidden)

    def micro_batches(self, rows_per_worker, batch_size):
        return math.ceil(rows_per_worker["source_train"] / batch_size)

    def lambd(self, epoch: int, step: int, micro_batches: int) -> float:
        progress = (epoch + step / max(micro_batches, 1)) / self.epochs
        return self.lambda_max * ganin_lambda(progress, self.gamma)

    def batches(self, streams, epoch, micro_batches):
        target = _cycle(streams["target_train"], epoch)
        for step, (xs, ys) in enumerate(streams["source_train"].epoch(epoch)):
            xt, _ = next(target)
            yield xs, ys, xt, self.lambd(epoch, step, micro_batches)

    def loss(self, model, batch):
        xs, ys, xt, lambd = batch
        logits, domain = model(torch.cat([xs, xt]), lambd)
        is_target = torch.cat([torch.zeros(len(xs)), torch.ones(len(xt))]).to(domain.device)
        classify = F.cross_entropy(logits[:len(xs)].float(), ys)
        return classify + F.binary_cross_entropy_with_logits(domain.float(), is_target), len(ys)

def _cycle(stream, epoch: int):
    """A stream's batches, restarted (with a new order) whenever it runs out."""
    for again in range(1 << 30):
        yield from stream.epoch(epoch * 1_000 + again)


class MultiTaskModel(nn.Module):
    """A shared backbone (the model without its classifier) and one classifier per task."""

    def __init__(self, model: nn.Module, classes: dict[str, int]):
        super().__init__()
        path = strategies.classifier_path(model)
        features = model.get_submodule(path).in_features
        strategies.set_submodule(model, path, nn.Identity())
        self.backbone = model
        self.heads = nn.ModuleDict({task: nn.Linear(features, n) for task, n in classes.items()})

    def shard_units(self):
        """FSDP: the backbone's units; the heads stay with the root (only one is used per step)."""
        return shard_units(self.backbone)

    def forward(self, x, task: str):
        return self.heads[task](self.backbone(x))


class TaskView(nn.Module):
    """One task's model: backbone + that task's head, called like any classifier."""

    def __init__(self, model: MultiTaskModel, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return self.model(x, self.task)


class MultiTask(Classify):
    """Each optimizer step trains on one task's batch, weighted by the task's loss weight, so a
    task's head only ever gets gradients from its own batches (DDP: unused heads are expected).

    Sampling: `proportional` — every task's batches once per epoch, interleaved at random (large
    tasks take more steps); `round_robin` — tasks take turns, every task as many steps as the
    largest has batches (smaller tasks restart). All ranks follow the same task order."""

    ddp_kwargs = {"find_unused_parameters": True}

    def __init__(self, tasks: dict[str, dict], sampling: str, seed: int):
        super().__init__()
        self.tasks = tasks            # name -> {"weight", "num_classes"}
        self.sampling, self.seed = sampling, seed
        self.train_sets = self.cycled_sets = tuple(f"{task}_train" for task in tasks)

    def prepare(self, model):
        return MultiTaskModel(model, {task: t["num_classes"] for task, t in self.tasks.items()})

    def schedule(self, batches_per_task: dict[str, int], epoch: int) -> list[str]:
        names = list(self.tasks)
        if self.sampling == "round_robin":
            return names * max(batches_per_task.values())
        order = [task for task in names for _ in range(batches_per_task[task])]
        np.random.default_rng((self.seed, epoch)).shuffle(order)
        return order

    def micro_batches(self, rows_per_worker, batch_size):
        self.batches_per_task = {task: math.ceil(rows_per_worker[f"{task}_train"] / batch_size) for task in self.tasks}
        return len(self.schedule(self.batches_per_task, 0))

    def batches(self, streams, epoch, micro_batches):
        feeds = {task: _cycle(streams[f"{task}_train"], epoch) for task in self.tasks}
        for task in self.schedule(self.batches_per_task, epoch):
            x, y = next(feeds[task])
            yield task, x, y

    def loss(self, model, batch):
        task, x, y = batch
        return self.tasks[task]["weight"] * F.cross_entropy(model(x, task).float(), y), len(y)

    def evaluate(self, run_eval, model, split):
        out = {}
        for task in self.tasks:
            out |= prefixed(f"{task}_{split}", run_eval(f"{task}_{split}", TaskView(model, task)))
        for metric in ("loss", "accuracy", "f1"):       # the headline numbers: the mean over tasks
            out[f"{split}_{metric}"] = float(np.mean([out[f"{task}_{split}_{metric}"] for task in self.tasks]))
        out[f"{split}_count"] = sum(out[f"{task}_{split}_count"] for task in self.tasks)
        return out
