"""Starting a model from weights the user already has (`model.init_from`).

The file is a `.safetensors` file or anything `torch.save` wrote that holds tensors only (it is
loaded with `weights_only=True`): a bare state dict, `{"state_dict": ...}`, or a checkpoint of
ours (`{"model": ...}`); or a finished run folder of ours (its final checkpoint: e.g. a language
model run, to fine-tune a classifier from). Keys are matched to the model's own; with `init_strict` every key must
be there with the model's shape, else the error lists what is missing, unexpected or mis-shaped.
"""

from pathlib import Path

import torch

SHOWN = 3      # keys named per kind of mismatch; the rest are counted


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from bigmodel_ray.storage import open_uri

    path = open_uri(str(path))
    if path.is_dir():
        from bigmodel_ray import runs
        from bigmodel_ray.train.state import STATE_FILE

        if not runs.finished(path):
            raise ValueError(f"{path} is a folder but not a finished run (no result.json with a checkpoint)")
        path = runs.result_checkpoint(path) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:          # torch raises UnpicklingError, RuntimeError, ...; safetensors its own
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} cannot be read as weights ({type(e).__name__}: {first})") from None
    for key in ("model", "state_dict"):         # a checkpoint of ours, or a common training-script layout
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}       # DDP's prefix


def init_from(model: torch.nn.Module, path: str | Path, strict: bool = True) -> int:
    """Load the file's weights into `model` in place; returns how many tensors were loaded."""
    return load_fitting(model, read_weights(path), strict, path)


def load_fitting(model: torch.nn.Module, weights: dict[str, torch.Tensor], strict: bool, path) -> int:
    """`weights` into `model` (all of them, or with `strict` false those that fit); errors name `path`."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    misshaped = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if strict and (missing or unexpected or misshaped):
        parts = [f"{len(keys)} {what} ({', '.join(_show(keys, weights, own, what))}{', ...' if len(keys) > SHOWN else ''})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
        raise ValueError(f"{path} does not fit the model: {'; '.join(parts)}; init_strict: false loads the keys "
                         f"that fit")
    fitting = {k: v for k, v in weights.items() if k in own and k not in misshaped}
    if not fitting:
        raise ValueError(f"{path}: none of its {len(weights)} tensors fits the model")
    model.load_state_dict(fitting, strict=False)
    return len(fitting)


def _show(keys, weights, own, what) -> list[str]:
    if what != "mis-shaped":
        return keys[:SHOWN]
    return [f"{k} {list(weights[k].shape)} vs {list(own[k].shape)}" for k in keys[:SHOWN]]
