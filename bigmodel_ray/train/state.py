"""Training state <-> checkpoint file, for plain, DDP and FSDP2 models alike.

`torch.distributed.checkpoint.state_dict` gathers FSDP2's sharded parameters and optimizer
state into full tensors (and strips DDP's `module.` prefix), so one file format serves every
strategy and world size. Loading uses `weights_only=True`: the file holds only tensors and
plain containers.
"""

import pickle
import random
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from bigmodel_ray.errors import SpecError
from bigmodel_ray.models import FROM_FOLDER, build_model, classifier_path
from bigmodel_ray.spec.train import ModelSpec

STATE_FILE = "state.pt"
MODEL_DIR = "model"        # in a run folder: the model the run leaves (train/selection.py)


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


def gather_state(model, optimizer, scheduler, scaler, epoch: int, meta: dict, **more) -> dict | None:
    """Collective: every rank calls it; rank 0 gets the full state (and `more`), other ranks None."""
    # Imported here: it costs ~0.8 s, and the driver, which never gathers, imports this module.
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full_state = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = {
        "model": get_model_state_dict(model, options=full_state),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=full_state),
    }
    rngs = [rng_state()]
    if _distributed():
        rngs = [None] * dist.get_world_size()
        dist.all_gather_object(rngs, rng_state())
    if _distributed() and dist.get_rank() != 0:
        return None
    return {**full, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "rng": rngs, "meta": meta, **more}


def save_state(state: dict, directory: str | Path) -> None:
    torch.save(state, Path(directory) / STATE_FILE)


def save_chosen(checkpoint: str | Path, folder: Path) -> Path:
    """The model a run leaves in `folder`: the chosen epoch's weights (the best, kept in the final
    checkpoint beside the last ones; else the last) with the model's description. Loadable by
    everything that reads a checkpoint; resuming uses Ray's own checkpoints, not this."""
    state = read_state(checkpoint)
    best = state.get("best") or {}
    weights = dict(best.get("model") or state["model"])
    consume_prefix_in_state_dict_if_present(weights, "module.")      # as the bare model names them
    chosen = {"model": weights, "meta": state["meta"],
              "epoch": best.get("epoch") if best.get("model") else state["epoch"]}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(chosen, tmp)
    tmp.replace(folder / STATE_FILE)         # a crash never leaves half a model where a whole one was
    return folder


def read_state(directory: str | Path) -> dict:
    """A checkpoint's state; a file that is not one this project wrote (a pickle of objects, a
    damaged archive) is refused in one line, never unpickled."""
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecError(f"{path}: not a checkpoint written by bigmodel-ray, refused ({first[:160]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise SpecError(f"{path}: not a checkpoint written by bigmodel-ray (no model state)")
    return state


def restore_state(state: dict, model, optimizer, scheduler, scaler, rank: int) -> int:
    """Load a full state on every rank; returns the number of epochs already completed."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    full_state = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=full_state)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=full_state)
    scheduler.load_state_dict(state["scheduler"])
    if scaler and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if rank < len(state["rng"]):   # same world size: each rank continues its own random stream
        set_rng_state(state["rng"][rank])
    return state["epoch"]


def load_model(directory: str | Path, task: str | None = None) -> "torch.nn.Module":
    """The trained model in a checkpoint folder, rebuilt from the architecture its state records.

    A multitask checkpoint holds one backbone and a head per task: `task` picks one, and the
    result is that task's classifier as a plain model (the job's architecture with the task's
    head as its classifier), so export and every other single-classifier path take it as is.
    """
    state = read_state(directory)
    meta, weights = checked_meta(state.get("meta"), Path(directory) / STATE_FILE), state["model"]
    build = partial(bounded_build, Path(directory) / STATE_FILE, weights, meta["model"]["name"],
                    tuple(meta["input_shape"]), {**meta["model"]["args"], **meta["data_args"]})
    if meta.get("kind") == "multitask":
        model = _task_classifier(directory, weights, task, build)
    elif task is not None:
        raise ValueError(f"{directory} is a single classifier, not a multitask checkpoint: it has no task {task!r}")
    else:
        model = build(meta["num_classes"])
        model.load_state_dict(weights)
    return model.eval()


class CheckpointMeta(BaseModel):
    """What a checkpoint says about its model, checked like a job before anything is built."""
    model_config = ConfigDict(extra="allow")
    model: ModelSpec
    input_shape: list[Annotated[int, Field(ge=1, le=1 << 20)]] = Field(min_length=1, max_length=4)
    num_classes: Annotated[int, Field(ge=1, le=1 << 24)] | None = None
    data_args: dict[Literal["num_users", "num_items"], Annotated[int, Field(ge=1, le=1 << 31)]] = {}


def checked_meta(meta, where: Path) -> dict:
    try:
        return {**meta, **CheckpointMeta.model_validate(meta).model_dump()}
    except (ValidationError, TypeError) as e:
        first = str(e).splitlines()[1:3] if isinstance(e, ValidationError) else [str(e)]
        raise SpecError(f"{where}: meta: not a model description this project wrote ({' '.join(first)[:200]})") from None


def bounded_build(where: Path, weights: dict, name: str, input_shape: tuple, args: dict,
                  num_classes: int) -> "torch.nn.Module":
    """The model a checkpoint describes, built only if it is no bigger than the weights it holds:
    the description is data from a file, and `channels: [2**40]` must fail here, not in malloc."""
    if name in FROM_FOLDER:
        return build_model(name, input_shape, num_classes, **args)
    try:
        with torch.device("meta"):
            probe = build_model(name, input_shape, num_classes, **args)
    except Exception as e:       # the model's own argument checks: a description that cannot be built
        raise SpecError(f"{where}: meta.model.args: cannot build {name} ({type(e).__name__}: {str(e)[:160]})") from None
    wanted = sum(t.numel() for t in probe.state_dict().values())
    held = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    if wanted > 2 * held + (1 << 20):
        raise SpecError(f"{where}: meta.model describes {wanted:,} weights, the checkpoint holds {held:,}")
    return build_model(name, input_shape, num_classes, **args)


def _task_classifier(directory, weights: dict, task: str | None, build) -> "torch.nn.Module":
    """Backbone + one head of a multitask state (transfer/objectives.py: MultiTaskModel's keys)."""
    tasks = list(dict.fromkeys(key.split(".")[1] for key in weights if key.startswith("heads.")))
    if task not in tasks:
        which = f"no task {task!r}" if task is not None else "not one classifier"
        raise ValueError(f"{directory} is a multitask checkpoint (a shared backbone and one head per task: "
                         f"{', '.join(tasks)}), {which}")
    model = build(weights[f"heads.{task}.weight"].shape[0])
    head = classifier_path(model)
    own = {key.removeprefix("backbone."): value for key, value in weights.items() if key.startswith("backbone.")}
    own |= {f"{head}.{name}": weights[f"heads.{task}.{name}"] for name in ("weight", "bias")}
    model.load_state_dict(own)
    return model


def load_classifier(directory: str | Path, where: str, task: str | None = None,
                    hint: str = "") -> "torch.nn.Module":
    """`load_model` for a job's input: a checkpoint that is not one classifier (a multitask run)
    is the job's error, prefixed with `where` (file and key)."""
    try:
        return load_model(directory, task)
    except ValueError as e:
        raise SpecError(f"{where}: {e}{hint}") from None
