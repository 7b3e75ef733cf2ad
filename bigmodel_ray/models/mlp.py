import math

import torch
import torch.nn as nn

from bigmodel_ray.models.limits import check_layers


class MLP(nn.Module):
    """Flatten, then `depth` hidden layers of `hidden` units with GELU and dropout."""

    def __init__(self, input_shape, num_classes, hidden: int = 256, depth: int = 2, dropout: float = 0.1):
        super().__init__()
        check_layers("depth", depth)
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def shard_units(self):
        return [m for m in self.net if isinstance(m, nn.Linear)]
