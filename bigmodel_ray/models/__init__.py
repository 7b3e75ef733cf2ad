"""Models chosen by name in the job YAML (`model.name`, keyword arguments in `model.args`).

Every builder takes the dataset's `input_shape` (without the batch dimension, channels first)
and `num_classes`, plus its own keyword arguments, and returns an `nn.Module` that maps a
float batch of `input_shape` to class logits.
"""

import inspect
from collections.abc import Callable

import torch.nn as nn

from bigmodel_ray.models.cnn import CNN1d, CNN2d
from bigmodel_ray.models.hf import HFClassifier
from bigmodel_ray.models.mlp import MLP
from bigmodel_ray.models.text import TextLM, TextTransformer
from bigmodel_ray.models.transformer import TransformerClassifier

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1d,
    "cnn2d": CNN2d,
    "transformer": TransformerClassifier,
    "text_transformer": TextTransformer,      # token ids (text sources)
    "text_lm": TextLM,                        # token ids -> next-token logits (train.task: lm)
    "hf": HFClassifier,                       # a local Hugging Face model folder (args.path), token ids
}

LANGUAGE_MODELS = ("text_lm",)      # trained with train.task: lm
# Models that read their own weights from a folder when built: they cannot be built on the meta
# device (nothing to size them by but that folder, which holds them already).
FROM_FOLDER = ("hf",)
# A language model's classifier counterpart: the same parameters but the head (fine-tuning from an LM)
CLASSIFIER_OF = {"text_lm": "text_transformer"}


def is_language_model(model: nn.Module) -> bool:
    return isinstance(model, tuple(MODELS[name] for name in LANGUAGE_MODELS))


def takes_tokens(name: str) -> bool:
    """Whether the model reads token ids (it has a vocabulary) rather than images or series."""
    return "vocab_size" in model_arg_names(name)


def model_arg_names(name: str) -> set[str]:
    """Keyword arguments a model accepts from the YAML (for spec validation)."""
    params = inspect.signature(MODELS[name]).parameters
    return {p for p in params if p not in ("input_shape", "num_classes")}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    return MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """Submodules that FSDP shards as one unit each (the root is sharded last, by the caller)."""
    units = getattr(model, "shard_units", None)
    if callable(units):
        return list(units())
    return [m for m in model.children() if any(True for _ in m.parameters())]


def classifier_path(model: nn.Module) -> str:
    """Dotted name of the classifier: the model's last Linear layer."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
