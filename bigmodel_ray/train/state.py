"""Training state <-> checkpoint file, for plain, DDP and FSDP2 models alike.

`torch.distributed.checkpoint.state_dict` gathers FSDP2's sharded parameters and optimizer
state into full tensors (and strips DDP's `module.` prefix), so one file format serves every
strategy and world size. Loading uses `weights_only=True`: the file holds only tensors and
plain containers.
"""

import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)

STATE_FILE = "state.pt"
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_state(model, optimizer, scheduler, scaler, epoch: int, meta: dict) -> dict | None:
    """Collective: every rank calls it; rank 0 gets the full state, other ranks None."""
    full = {
        "model": get_model_state_dict(model, options=_FULL),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=_FULL),
    }
    rngs = [rng_state()]
    if _distributed():
        rngs = [None] * dist.get_world_size()
        dist.all_gather_object(rngs, rng_state())
    if _distributed() and dist.get_rank() != 0:
        return None
    return {**full, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "rng": rngs, "meta": meta}


def save_state(state: dict, directory: str | Path) -> None:
    torch.save(state, Path(directory) / STATE_FILE)


def read_state(directory: str | Path) -> dict:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def restore_state(state: dict, model, optimizer, scheduler, scaler, rank: int) -> int:
    """Load a full state on every rank; returns the number of epochs already completed."""
    set_model_state_dict(model, state["model"], options=_LOAD)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=_LOAD)
    scheduler.load_state_dict(state["scheduler"])
    if scaler and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if rank < len(state["rng"]):   # same world size: each rank continues its own random stream
        set_rng_state(state["rng"][rank])
    return state["epoch"]


def load_model(directory: str | Path) -> "torch.nn.Module":
    """The trained model in a checkpoint folder, rebuilt from the architecture its state records."""
    from bigmodel_ray.models import build_model

    state = read_state(directory)
    meta = state["meta"]
    if meta.get("kind") == "multitask":
        raise ValueError(f"{directory} is a multitask checkpoint (a shared backbone and one head per task), "
                         f"not one classifier")
    model = build_model(meta["model"]["name"], tuple(meta["input_shape"]), meta["num_classes"], **meta["model"]["args"])
    model.load_state_dict(state["model"])
    return model.eval()


def load_classifier(directory: str | Path, where: str) -> "torch.nn.Module":
    """`load_model` for a job's input: a checkpoint that is not one classifier (a multitask run)
    is the job's error, prefixed with `where` (file and key)."""
    from bigmodel_ray.spec import SpecError

    try:
        return load_model(directory)
    except ValueError as e:
        raise SpecError(f"{where}: {e}") from None
