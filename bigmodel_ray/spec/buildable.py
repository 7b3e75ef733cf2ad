"""Whether a model can be built from its `model.args`, tried while the job is validated.

The model is built on PyTorch's meta device (shapes only: no memory, milliseconds) for the
inputs its data implies, so channels [-1], num_heads 0 or a patch larger than the image fail
here, with the key named, instead of on the workers after Ray has started.

Answers are kept in the user's cache, keyed by the models' source: importing torch takes
longer than the rest of `validate`, and a job is validated again and again while it is edited.
"""

import functools
import hashlib
import json
import os
import warnings
from importlib.resources import files

from bigmodel_ray.spec.messages import cut
from bigmodel_ray.storage import cache_dir

# Built-in sets' (input shape, classes), as bigmodel_ray.data.builtin loads them.
BUILTIN_INPUTS = {"digits": ((1, 8, 8), 10), "mnist1d": ((1, 40), 10)}
# Image files whose size is only known by reading one: a common size, large enough that no
# patch or stride that fits real images is refused.
NOMINAL_SIDE, NOMINAL_CLASSES = 224, 2
# 400 GB of fp32 weights: a typo in a width, not a model this toolkit trains.
MAX_PARAMS = 10**11
# A recommender's tables, sized by the data: a nominal size (only the other arguments are checked).
NOMINAL_DATA_ARGS = {"num_users": 1000, "num_items": 1000}
# Reads a model folder (args.path) to build: checked when the run builds it.
NOT_CHECKED = ("hf",)


def implied_inputs(data) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) of a data section, nominal where only the data would tell."""
    if data.interactions is not None:       # [user, item] ids; tables sized by NOMINAL_DATA_ARGS
        return (2,), 1
    if data.text is not None:
        return (data.text.max_length,), NOMINAL_CLASSES
    if data.source in BUILTIN_INPUTS:
        return BUILTIN_INPUTS[data.source]
    channels = 1 if data.color_mode == "grayscale" else 3
    if data.source == "synthetic":
        return (channels, data.image_size, data.image_size), data.num_classes
    if data.target_size:
        return (channels, *data.target_size), NOMINAL_CLASSES
    if data.image_format == "raw" and data.image_shape:
        return (channels, *data.image_shape[:2]), NOMINAL_CLASSES
    return (channels, NOMINAL_SIDE, NOMINAL_SIDE), NOMINAL_CLASSES


def check_buildable(model, data) -> None:
    """Raise ValueError saying why `model` (a ModelSpec) cannot be built for `data`'s inputs."""
    if model.name in NOT_CHECKED:
        return
    from bigmodel_ray.models import takes_interactions

    shape, classes = implied_inputs(data)
    args = {**model.args, **(NOMINAL_DATA_ARGS if takes_interactions(model.name) else {})}
    problem = _problem(model.name, shape, classes, json.dumps(args, sort_keys=True))
    if problem:
        raise ValueError(problem)


@functools.lru_cache(maxsize=512)        # a search checks the same model at every corner of its space
def _problem(name: str, shape: tuple[int, ...], classes: int, args_json: str) -> str | None:
    key = hashlib.sha256(json.dumps([_models_source(), name, shape, classes, args_json]).encode()).hexdigest()
    answers = _read_answers()
    if key not in answers:
        answers[key] = _build_on_meta(name, shape, classes, args_json)
        _write_answers(answers, key)
    return answers[key]


@functools.cache
def _models_source() -> str:
    """A digest of the models' code: an answer stands as long as the code that gave it."""
    digest = hashlib.sha256()
    for f in sorted(files("bigmodel_ray.models").iterdir(), key=lambda f: f.name):
        if f.name.endswith(".py"):
            digest.update(f.read_bytes())
    return digest.hexdigest()


ANSWERS_FILE, MAX_ANSWERS = "buildable.json", 2000


def _read_answers() -> dict:
    try:
        answers = json.loads((cache_dir() / ANSWERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    # A file that is not what this module writes is ignored (and replaced), never trusted in part.
    ok = isinstance(answers, dict) and all(v is None or isinstance(v, str) for v in answers.values())
    return answers if ok else {}


def _write_answers(answers: dict, newest: str) -> None:
    kept = dict(list(answers.items())[-MAX_ANSWERS:])
    kept[newest] = answers[newest]
    path = cache_dir() / ANSWERS_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(kept))
        tmp.replace(path)          # atomic: processes validating side by side never read half a file
    except OSError:
        tmp.unlink(missing_ok=True)      # a read-only cache only costs the next validate its torch import


def _build_on_meta(name: str, shape: tuple[int, ...], classes: int, args_json: str) -> str | None:
    import torch

    from bigmodel_ray.models import build_model

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")           # e.g. "initializing zero-element tensors"
            net = build_model(name, shape, classes, **json.loads(args_json))
    except Exception as e:          # whatever the model's own code raises, said in one line
        return f"{name} cannot be built for inputs {list(shape)}: {cut(str(e) or type(e).__name__)}"
    params = sum(p.numel() for p in net.parameters())
    if params > MAX_PARAMS:
        return f"{name} would have {params:,} parameters (at most {MAX_PARAMS:,})"
    return None
