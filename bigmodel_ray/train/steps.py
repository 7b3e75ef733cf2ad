"""One training epoch and one evaluation pass. Plain PyTorch: usable with or without Ray.

Gradient accumulation: each micro-batch's mean loss is divided by `grad_accum`; ranks skip the
gradient all-reduce on all but the last micro-step of a group. A short final group (end of the
epoch) has its gradients rescaled so that every optimizer step averages over its micro-batches.
"""

import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import torch
import torch.distributed as dist

from bigmodel_ray.train.metrics import ClassScores
from bigmodel_ray.train.objectives import Classify

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def _flag_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


def _gradient_sync(model, enabled: bool):
    """Skip the cross-rank gradient reduction on accumulation micro-steps (DDP and FSDP2)."""
    if not enabled and hasattr(model, "no_sync"):                     # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):                  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return nullcontext()


def train_epoch(model, batches, optimizer, scheduler, *, device, precision="fp32", grad_accum=1,
                grad_clip=None, label_smoothing=0.0, scaler=None, loss=None, frozen=()) -> dict[str, float]:
    """Returns the mean training loss, the number of samples this rank saw, and when (Unix
    time) its first optimizer step ended: how long a run took to start training.

    `loss(model, batch) -> (loss, samples)` replaces cross-entropy on `(x, y)` batches (see
    train/objectives.py). `frozen` parameters take part in the forward pass but are not updated
    (gradual unfreezing): their gradients are dropped before each step, so the optimizer skips
    them (no momentum, no weight decay)."""
    loss = loss or Classify(label_smoothing).loss
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    samples, micro, first_step_at = 0, 0, None
    for batch, last in _flag_last(batches):
        micro += 1
        step_now = micro == grad_accum or last
        with _gradient_sync(model, step_now):
            with autocast(device, precision):
                value, n = loss(model, batch)
            scaled = value / grad_accum if grad_accum > 1 else value
            (scaler.scale(scaled) if scaler else scaled).backward()
        loss_sum += value.detach().float() * n
        samples += n
        if step_now:
            for p in frozen:
                p.grad = None
            _optimizer_step(model, optimizer, scaler, grad_clip, rescale=grad_accum / micro)
            scheduler.step()
            micro = 0
            first_step_at = first_step_at or time.time()
    return {"loss": (loss_sum / max(samples, 1)).item(), "samples": samples, "first_step_at": first_step_at}


def _optimizer_step(model, optimizer, scaler, grad_clip, rescale: float):
    if scaler:
        scaler.unscale_(optimizer)
    if rescale != 1.0:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(rescale)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(model, batches, *, num_classes: int, device, precision="fp32", input_shape=None,
             scores=None, tokens: bool = False) -> dict[str, float]:
    """Loss, accuracy and macro-F1 over the union of every rank's batches; or whatever `scores`
    (an object with add(logits, x, y) and result(), e.g. a language model's) sums up.

    `batches` is this rank's disjoint share of the split. Under FSDP each forward is a
    collective, so a rank that runs out of batches runs dummy forwards until every rank has
    (`input_shape` is needed for that; `tokens`: the model takes token ids).
    """
    model.eval()
    scores = scores or ClassScores(num_classes, device)
    # FSDP2 (anywhere in the model: a multi-task view wraps the sharded model)
    lockstep = dist.is_initialized() and any(hasattr(m, "set_requires_gradient_sync") for m in model.modules())
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        if lockstep:   # every forward is a collective: ranks agree whether anyone still has a batch
            more = torch.tensor(int(batch is not None), device=device)
            dist.all_reduce(more, op=dist.ReduceOp.MAX)
            if not more:
                break
            if batch is None:
                model(torch.full((1, *input_shape), 2, device=device) if tokens      # [CLS] ids
                      else torch.zeros((1, *input_shape), device=device))
                continue
        elif batch is None:
            break
        x, y = batch
        with autocast(device, precision):
            logits = model(x)
        scores.add(logits, x, y)
    return scores.result()
