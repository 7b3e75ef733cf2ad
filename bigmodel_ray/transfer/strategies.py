"""Fine-tuning strategies on any of the project's models: which parameters train, at what rate.

A model is seen as its backbone's stages, input to output (CNNs: stem and residual blocks;
transformer: patch embedding and encoder blocks; MLP: its hidden Linear layers), plus the
classifier (the last Linear layer), which `replace_head` swaps when the class count differs.
"""

import torch.nn as nn

from bigmodel_ray.models import classifier_path


def stages(model: nn.Module) -> list[nn.Module]:
    if hasattr(model, "blocks"):
        first = [getattr(model, name) for name in ("stem", "patchify") if hasattr(model, name)]
        return first + list(model.blocks)
    head = model.get_submodule(classifier_path(model))
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh classifier for `num_classes` (in place); everything else keeps its weights."""
    path = classifier_path(model)
    old = model.get_submodule(path)
    if old.out_features == num_classes:
        return model
    return set_submodule(model, path, nn.Linear(old.in_features, num_classes))


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
    return model


def set_trainable(model: nn.Module, strategy: str, freeze_stages: int = 0) -> None:
    """linear_probe: only the classifier trains; freeze: the first `freeze_stages` stages are
    frozen; full / discriminative / gradual: everything trains (gradual: see `unfrozen_stages`)."""
    head = model.get_submodule(classifier_path(model))
    for p in model.parameters():
        p.requires_grad_(strategy != "linear_probe")
    for p in head.parameters():
        p.requires_grad_(True)
    if strategy == "freeze":
        for stage in stages(model)[:freeze_stages]:
            for p in stage.parameters():
                p.requires_grad_(False)


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """Batch norms whose parameters are all frozen also keep their running statistics: they
    normalize with them in training too, so a frozen stage computes exactly what it did (a
    linear probe on fixed features). A forward pre-hook, because every `model.train()` would
    undo a one-off `.eval()`."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.register_forward_pre_hook(_eval_mode)


def _eval_mode(module, _args):
    module.training = False


def unfrozen_stages(epoch: int, total_stages: int, every: int) -> int:
    """Gradual unfreezing (ULMFiT): the classifier alone at first, then one more stage from the
    top every `every` epochs."""
    return min(total_stages, epoch // every)


def gradual_trainable(model: nn.Module, epoch: int, every: int) -> set[nn.Parameter]:
    """The parameters that train in `epoch` under gradual unfreezing: the classifier and the
    top unfrozen stages. (Everything else stays in the forward pass, untouched.)"""
    all_stages = stages(model)
    n = unfrozen_stages(epoch, len(all_stages), every)
    trainable = set(model.get_submodule(classifier_path(model)).parameters())
    for stage in all_stages[len(all_stages) - n:]:
        trainable.update(stage.parameters())
    return trainable


def param_groups(model: nn.Module, backbone_factor: float = 1.0) -> list[dict]:
    """Optimizer groups: the classifier at the job's learning rate, the backbone at
    `backbone_factor` times it (discriminative learning rates). Frozen parameters are left out."""
    head = set(model.get_submodule(classifier_path(model)).parameters())
    backbone = [p for p in model.parameters() if p not in head and p.requires_grad]
    groups = [{"params": [p for p in head if p.requires_grad], "lr_scale": 1.0}]
    if backbone:
        groups.append({"params": backbone, "lr_scale": backbone_factor})
    return groups
