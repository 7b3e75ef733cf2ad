"""Optimizer and per-step learning-rate schedule from the `train` section."""

import math

import torch


def build_optimizer(params, spec) -> torch.optim.Optimizer:
    """`params`: parameters, or groups whose `lr_scale` multiplies the job's learning rate
    (discriminative fine-tuning: a slower backbone)."""
    o = spec.optimizer
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "lr": o.lr * g.get("lr_scale", 1.0)} for g in params]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, name: str, min_ratio: float) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, spec, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    s = spec.schedule
    total = spec.epochs * steps_per_epoch
    warmup = round(s.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, s.name, s.min_lr_ratio))


def apply_hyperparameters(optimizer, scheduler, spec) -> None:
    """Set the spec's optimizer values after a checkpoint restored the optimizer and schedule.

    Restoring brings back the saved run's learning rate, but the spec decides it: a resumed run
    may have changed it, and a population-based-training trial continues another trial's
    checkpoint with its own, perturbed values.
    """
    o = spec.optimizer
    scheduler.base_lrs = [o.lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    for group, base, lr in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.get_lr()):
        group["lr"], group["initial_lr"], group["weight_decay"] = lr, base, o.weight_decay
        if "momentum" in group:
            group["momentum"] = o.momentum
