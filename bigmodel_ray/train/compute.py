"""How the model's forward and backward run: activation checkpointing (`train.activation_checkpointing`:
memory for compute) and torch.compile (`train.compile`: compile time for step time).

Both change the module in place, so parameter and buffer names stay as they are: checkpoints,
resume, export, init_from and transfer read state dict keys. Applied before DDP or FSDP2 wraps the
model (train/worker.py).
"""

from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from bigmodel_ray.models import shard_units
from bigmodel_ray.spec import TrainSpec


def prepare_compute(model: nn.Module, train: TrainSpec, device: torch.device) -> nn.Module:
    if train.activation_checkpointing:
        for unit in shard_units(model):     # the blocks, also FSDP's units
            checkpoint_activations(unit)
    if train.compile:
        # In place: no `_orig_mod.` prefix on the keys. On CPU, random numbers (dropout) come from
        # ATen as in eager, so the masks are eager's: inductor's own made a text_transformer step
        # ~6x slower there (profiled). Under FSDP2 one graph per batch shape: inductor (torch 2.13, CPU)
        # failed to compile cnn1d's backward with a symbolic batch size.
        model.compile(dynamic=False if train.strategy == "fsdp" else None,
                      options={"fallback_random": True} if device.type == "cpu" else None)
    return model


def checkpoint_activations(unit: nn.Module) -> None:
    """Keep only the unit's inputs for backward; its activations are recomputed there.

    The instance's `forward` is replaced rather than the module wrapped (torch's
    checkpoint_wrapper), which would rename every key under the unit. The recomputation replays
    the forward's random state (dropout masks match) and restores the unit's buffers afterwards:
    BatchNorm would otherwise update its running statistics twice per step."""
    if "forward" in vars(unit):             # applied already
        return
    forward = unit.forward                  # the class's forward, bound to this unit
    has_buffers = any(True for _ in unit.buffers())
    keep_buffers = lambda: (nullcontext(), _buffers_unchanged(unit))     # (forward, recomputation)

    def checkpointed(*args, **kwargs):
        if not torch.is_grad_enabled():     # evaluation: nothing would be kept for backward anyway
            return forward(*args, **kwargs)
        # Compiled, the recomputation replays the graph without its buffer updates (and dynamo
        # accepts no context_fn).
        if has_buffers and not torch.compiler.is_compiling():
            return checkpoint(forward, *args, use_reentrant=False, context_fn=keep_buffers, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    unit.forward = checkpointed


@contextmanager
def _buffers_unchanged(unit: nn.Module):
    saved = [b.clone() for b in unit.buffers()]
    try:
        yield
    finally:        # the recomputation stops by raising once it has what backward needs
        with torch.no_grad():
            for buffer, value in zip(unit.buffers(), saved):
                buffer.copy_(value)
