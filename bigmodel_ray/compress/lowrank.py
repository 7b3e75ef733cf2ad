"""Low-rank factorization: each Linear (and Conv) layer W becomes two thinner layers A then B.

Truncated SVD W = U S Vh keeps rank r: A = sqrt(S_r) Vh_r (in -> r), B = U_r sqrt(S_r) (r -> out),
so the layer costs r (in + out) parameters instead of in x out: a saving only when
r < in x out / (in + out), which is checked. Convolutions factor over (in x kernel) -> r -> out:
a Conv with r filters of the original kernel, then a 1x1 Conv (Jaderberg-style channel scheme).
The rank comes from a ratio of the full rank or from the singular values' kept energy.
"""

import torch
import torch.nn as nn

CONVS = (nn.Conv1d, nn.Conv2d)


def rank_for(singular_values: torch.Tensor, ratio: float | None = None, energy: float | None = None) -> int:
    """Rank keeping `ratio` of the full rank, or the smallest rank whose squared singular values
    sum to `energy` of the total."""
    full = len(singular_values)
    if energy is not None:
        share = torch.cumsum(singular_values**2, 0) / (singular_values**2).sum()
        return min(full, int((share < energy).sum()) + 1)
    return max(1, min(full, round(full * ratio)))


def factorized_params(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
    return rank * (in_features + out_features) + (out_features if bias else 0)


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize_conv(layer: nn.Conv1d | nn.Conv2d, rank: int) -> nn.Sequential:
    out_c, in_c, *kernel = layer.weight.shape
    u, s, vh = torch.linalg.svd(layer.weight.detach().reshape(out_c, -1), full_matrices=False)
    root = s[:rank].sqrt()
    conv = type(layer)
    first = conv(in_c, rank, tuple(kernel), stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                 bias=False)
    second = conv(rank, out_c, 1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, in_c, *kernel))
        second.weight.copy_((u[:, :rank] * root).reshape(out_c, rank, *[1] * len(kernel)))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize(model: nn.Module, ratio: float | None = None, energy: float | None = None,
              convs: bool = True, min_size: int = 1024) -> dict[str, int]:
    """Factorize every Linear (and Conv, unless `convs` is false, and not grouped ones) with at
    least `min_size` weights where it saves parameters; in place. The classifier (the last
    Linear) stays whole: its rank is at most the class count already. Returns the ranks by layer."""
    ranks = {}
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    for name, layer in list(model.named_modules()):
        if not (isinstance(layer, nn.Linear) or convs and isinstance(layer, CONVS) and layer.groups == 1):
            continue
        if any(layer is c for c in classifier):
            continue
        out_f, in_f = layer.weight.shape[0], layer.weight[0].numel()
        if out_f * in_f < min_size:
            continue
        s = torch.linalg.svdvals(layer.weight.detach().reshape(out_f, -1))
        rank = rank_for(s, ratio, energy)
        if factorized_params(in_f, out_f, rank, bias=False) >= out_f * in_f:
            continue      # no saving at this rank: keep the layer whole
        replacement = factorize_linear(layer, rank) if isinstance(layer, nn.Linear) else factorize_conv(layer, rank)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
        ranks[name] = rank
    return ranks
