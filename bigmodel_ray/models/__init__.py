"""Models chosen by name in the job YAML (`model.name`, keyword arguments in `model.args`).

Every builder takes the dataset's `input_shape` (without the batch dimension, channels first)
and `num_classes`, plus its own keyword arguments, and returns an `nn.Module` that maps a
float batch of `input_shape` to class logits.
"""

import ast
import functools
import importlib
from importlib.resources import files

# name -> "module:Class" in this package. Imported only when a model is built: checking a job's
# model section needs no torch (its arguments are read from the class's source).
MODELS: dict[str, str] = {
    "mlp": "mlp:MLP",
    "cnn1d": "cnn:CNN1d",
    "cnn2d": "cnn:CNN2d",
    "transformer": "transformer:TransformerClassifier",
    "text_transformer": "text:TextTransformer",    # token ids (text sources)
    "text_lm": "text:TextLM",                      # token ids -> next-token logits (train.task: lm)
    "hf": "hf:HFClassifier",                       # a local Hugging Face model folder (args.path), token ids
    "mf": "recsys:MatrixFactorization",            # user and item ids (interaction sources)
    "neumf": "recsys:NeuMF",
    "two_tower": "recsys:TwoTower",
}

LANGUAGE_MODELS = ("text_lm",)      # trained with train.task: lm
# Models that read their own weights from a folder when built: they cannot be built on the meta
# device (nothing to size them by but that folder, which holds them already).
FROM_FOLDER = ("hf",)
# Arguments that the data sets, never the job file: the sizes of a recommender's tables.
DATA_ARGS = frozenset({"num_users", "num_items"})
# A language model's classifier counterpart: the same parameters but the head (fine-tuning from an LM)
CLASSIFIER_OF = {"text_lm": "text_transformer"}


def model_class(name: str) -> type:
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def is_language_model(model) -> bool:
    return isinstance(model, tuple(model_class(name) for name in LANGUAGE_MODELS))


def takes_tokens(name: str) -> bool:
    """Whether the model reads token ids (it has a vocabulary) rather than images or series."""
    return "vocab_size" in model_arg_names(name)


def takes_interactions(name: str) -> bool:
    """Whether the model reads [user, item, ...] ids (a recommender)."""
    return DATA_ARGS <= _init_args(name)


@functools.cache
def model_arg_names(name: str) -> frozenset[str]:
    """Keyword arguments a model accepts from the YAML: its __init__'s, read from its source
    (what inspect.signature says of the class, without importing torch), but those the data sets."""
    return _init_args(name) - {"input_shape", "num_classes"} - DATA_ARGS


@functools.cache
def _init_args(name: str) -> frozenset[str]:
    module, cls = MODELS[name].split(":")
    tree = ast.parse(files(__name__).joinpath(f"{module}.py").read_text())
    init = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls
                for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    return frozenset(a.arg for a in init.args.args[1:] + init.args.kwonlyargs)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs):
    return model_class(name)(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)


def shard_units(model) -> list:
    """Submodules that FSDP shards as one unit each (the root is sharded last, by the caller)."""
    units = getattr(model, "shard_units", None)
    if callable(units):
        return list(units())
    return [m for m in model.children() if any(True for _ in m.parameters())]


def classifier_path(model) -> str:
    """Dotted name of the classifier: the model's last Linear layer."""
    import torch.nn as nn

    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
