"""Pruning: global unstructured L1 (zeros weights) and structured channel pruning (shrinks layers).

Unstructured pruning zeros the smallest weights across all Conv/Linear layers at once
(`torch.nn.utils.prune`); the model keeps its shapes, so it only gets smaller when stored
compressed and only faster with sparse kernels. Structured pruning removes whole channels and
neurons by their L1/L2 norm and physically rebuilds every layer that depends on them (BatchNorm,
the next layer's inputs, both sides of a residual sum) with Torch-Pruning's dependency graph, so
parameter count and latency really drop.
"""

import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune

from bigmodel_ray.models.transformer import EncoderBlock

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
PRUNABLE = (*WEIGHTED, nn.Embedding, nn.LayerNorm)      # layers whose channels Torch-Pruning can remove


def unstructured(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` share of Conv/Linear weights with the smallest magnitude, globally.

    The masks stay on the model (`weight_orig` x `weight_mask`) so that fine-tuning keeps the
    zeros; `make_permanent` folds them into plain weights before saving or export."""
    params = [(m, "weight") for m in model.modules() if isinstance(m, WEIGHTED)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if torch_prune.is_pruned(module) and isinstance(module, WEIGHTED):
            torch_prune.remove(module, "weight")
    return model


def structured(model: nn.Module, example: torch.Tensor, amount: float, norm: int = 1) -> nn.Module:
    """Remove the `amount` share of channels/neurons with the smallest L`norm` norm, in place.

    Channels coupled by a residual sum are pruned together (their importance summed across the
    group); the classifier's outputs are kept. In the transformers (image or text), only the
    blocks' MLP hidden neurons: heads are split by a reshape the dependency graph cannot follow,
    and the residual stream's width runs through every block, the embeddings and positions."""
    import torch_pruning as tp

    ignored = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    hidden = {block.mlp[0] for block in model.modules() if isinstance(block, EncoderBlock)}
    if hidden:
        ignored = [m for m in model.modules() if isinstance(m, PRUNABLE) and m not in hidden]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=norm),
                                  pruning_ratio=amount, ignored_layers=ignored)
    pruner.step()
    return model


def sparsity(model: nn.Module) -> float:
    """Share of zeros among the Conv/Linear weights."""
    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHTED)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total
