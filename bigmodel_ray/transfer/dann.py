"""Domain-adversarial training (Ganin & Lempitsky, 2015): features that a domain classifier,
trained through a gradient reversal layer, cannot tell apart across domains.

loss = L_src(labelled source) + lambda * L_adv(domain of source and unlabelled target features),
with lambda rising from 0 to 1 as 2 / (1 + exp(-gamma * progress)) - 1.
"""

import math

import torch
import torch.nn as nn


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times -lambda backward."""

    @staticmethod
    def forward(ctx, x, lambd: float):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return GradReverse.apply(x, lambd)


def ganin_lambda(progress: float, gamma: float = 10.0) -> float:
    """The adaptation weight at `progress` (0 at the start of training, 1 at the end)."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainClassifier(nn.Module):
    def __init__(self, features: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, lambd: float) -> torch.Tensor:
        return self.net(grad_reverse(features, lambd)).squeeze(1)
