"""Recommenders: embedding tables of users and items (interaction sources, data/interactions.py).

Every model reads rows of ids `[user, item_1, ..., item_m]` and returns one score per item,
shape (batch, m): a training pair is m = 1; a ranking evaluation scores the held-out item and
its sampled negatives in one call (m = 100). A score is a rating (`train.task: rating`) or a
logit that the user interacts with the item (`train.task: ranking`). `num_users` and
`num_items` come from the data, not the job file.

`l2` penalizes the squared norms of the embedding rows a batch touches, per row (Koren's and
Surprise's `reg`): weight decay would shrink every row at every step, the rare users' and
items' most, and the biases with them. A training forward leaves the batch's penalty in
`model.penalty`; the objectives add it to the loss (train/recsys.py).
"""

import torch
import torch.nn as nn


def _table(rows: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(rows, dim)
    nn.init.normal_(table.weight, std=0.01)     # small: a fresh model predicts ~ the biases
    return table


class Recommender(nn.Module):
    def __init__(self, num_users: int, num_items: int, l2: float):
        super().__init__()
        if not 0 <= l2 <= 1e3:
            raise ValueError(f"l2 must be in [0, 1000] (got {l2})")
        self.num_users, self.num_items, self.l2, self.penalty = num_users, num_items, l2, None

    def example_inputs(self, n: int, generator=None) -> torch.Tensor:
        """`n` rows [user, item] of valid ids (export checks the model on them)."""
        return torch.stack([torch.randint(self.num_users, (n,), generator=generator),
                            torch.randint(self.num_items, (n,), generator=generator)], 1)

    def _penalize(self, *rows: torch.Tensor) -> None:
        """rows: the embedding rows looked up for a batch, each (batch, ..., dim)."""
        if self.training and self.l2:
            batch = len(rows[0])
            self.penalty = self.l2 * sum(r.float().square().sum() for r in rows) / batch


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:, 0], x[:, 1:]


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class MatrixFactorization(Recommender):
    """score = global bias + user bias + item bias + <user vector, item vector> (Koren's biased MF)."""

    def __init__(self, input_shape, num_classes, num_users: int, num_items: int, dim: int = 64, l2: float = 0.0):
        super().__init__(num_users, num_items, l2)
        self.users, self.items = _table(num_users, dim), _table(num_items, dim)
        self.user_bias, self.item_bias = nn.Embedding(num_users, 1), nn.Embedding(num_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        user, items = _split(x)
        p, q, b_user, b_item = self.users(user), self.items(items), self.user_bias(user), self.item_bias(items)
        self._penalize(p, q, b_user, b_item)
        return self.bias + b_user + b_item.squeeze(-1) + (p.unsqueeze(1) * q).sum(-1)


class NeuMF(Recommender):
    """Neural collaborative filtering (He et al., 2017): a generalized MF branch (element-wise
    product of embeddings) and an MLP branch over concatenated embeddings, each with its own
    tables, joined by one linear layer."""

    def __init__(self, input_shape, num_classes, num_users: int, num_items: int, dim: int = 32,
                 mlp_dim: int = 32, hidden: list[int] = (64, 32, 16), dropout: float = 0.0, l2: float = 0.0):
        super().__init__(num_users, num_items, l2)
        self.gmf_users, self.gmf_items = _table(num_users, dim), _table(num_items, dim)
        self.mlp_users, self.mlp_items = _table(num_users, mlp_dim), _table(num_items, mlp_dim)
        sizes = [2 * mlp_dim, *hidden]
        self.mlp = _mlp(sizes, dropout)
        self.head = nn.Linear(dim + sizes[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        user, items = _split(x)
        rows = gmf_user, gmf_items, mlp_user, mlp_items = (self.gmf_users(user), self.gmf_items(items),
                                                           self.mlp_users(user), self.mlp_items(items))
        self._penalize(*rows)
        gmf = gmf_user.unsqueeze(1) * gmf_items
        pair = torch.cat([mlp_user.unsqueeze(1).expand(-1, items.shape[1], -1), mlp_items], -1)
        return self.head(torch.cat([gmf, self.mlp(pair)], -1)).squeeze(-1)


class TwoTower(Recommender):
    """A user tower and an item tower (embedding -> MLP) meeting in a dot product, plus an item
    bias: item vectors do not depend on the user, so they can be computed once and searched."""

    def __init__(self, input_shape, num_classes, num_users: int, num_items: int, dim: int = 64,
                 hidden: list[int] = (128,), dropout: float = 0.0, l2: float = 0.0):
        super().__init__(num_users, num_items, l2)
        sizes = [dim, *hidden, dim]
        self.users, self.items = _table(num_users, dim), _table(num_items, dim)
        self.user_tower, self.item_tower = _tower(sizes, dropout), _tower(sizes, dropout)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        user, items = _split(x)
        user_rows, item_rows, b_item = self.users(user), self.items(items), self.item_bias(items)
        self._penalize(user_rows, item_rows, b_item)
        u, v = self.user_tower(user_rows), self.item_tower(item_rows)
        return (u.unsqueeze(1) * v).sum(-1) + b_item.squeeze(-1)


def _tower(sizes: list[int], dropout: float) -> nn.Sequential:
    """An MLP whose last layer is linear: vectors may point anywhere."""
    return nn.Sequential(*list(_mlp(sizes[:-1], dropout)), nn.Linear(sizes[-2], sizes[-1]))
