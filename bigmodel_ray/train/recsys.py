"""Recommender objectives (`train.task: rating | ranking`) and their metrics, summed over every
worker's share of a split like a classifier's (data/interactions.py describes the rows).

rating   squared error of the predicted rating; evaluation reports `rmse` and `mae` of
         predictions clipped to the ratings' range (a prediction of 5.3 on a 1-5 scale is a 5)
ranking  each interaction against `train_negatives` items drawn uniformly at random for it,
         binary cross-entropy; evaluation ranks the held-out item among its sampled negatives:
         `hr10` (hit rate at 10) and `ndcg10`, ties counted against the held-out item
"""

import torch
import torch.nn.functional as F

from bigmodel_ray.train.metrics import all_reduce_sum
from bigmodel_ray.train.objectives import Classify

K = 10


def with_penalty(loss: torch.Tensor, model) -> torch.Tensor:
    """The loss plus the L2 penalty the model's forward left for this batch (models/recsys.py)."""
    inner = getattr(model, "module", model)        # DDP wraps the model; FSDP2 does not
    penalty, inner.penalty = getattr(inner, "penalty", None), None
    return loss if penalty is None else loss + penalty


class Rating(Classify):
    def __init__(self, rating_range: tuple[float, float]):
        super().__init__()
        self.rating_range = tuple(rating_range)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return with_penalty(F.mse_loss(model(x).float().squeeze(1), y), model), len(y)

    def scores(self, num_classes: int, device) -> "RatingScores":
        return RatingScores(self.rating_range, device)


class RatingScores:
    def __init__(self, rating_range, device):
        self.lo, self.hi = rating_range
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)    # squared error, absolute error, rows

    def add(self, predictions: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        error = predictions.float().squeeze(1).clamp(self.lo, self.hi).double() - y.double()
        self.sums += torch.stack([error.square().sum(), error.abs().sum(), error.new_tensor(len(y))])

    def result(self) -> dict[str, float]:
        squared, absolute, rows = all_reduce_sum(self.sums).tolist()
        mse = squared / max(rows, 1)
        return {"loss": mse, "rmse": mse ** 0.5, "mae": absolute / max(rows, 1), "count": int(rows)}


class Ranking(Classify):
    def __init__(self, num_items: int, train_negatives: int):
        super().__init__()
        self.num_items, self.train_negatives = num_items, train_negatives

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        x, _ = batch
        # Uniform negatives, not checked against the user's items: with ~6% of MovieLens' items
        # per user, a few are false negatives, as in NCF's own training.
        drawn = torch.randint(self.num_items, (len(x), self.train_negatives), device=x.device)
        logits = model(torch.cat([x, drawn], 1)).float()
        targets = torch.zeros_like(logits)
        targets[:, 0] = 1.0
        return with_penalty(F.binary_cross_entropy_with_logits(logits, targets), model), len(x)

    def scores(self, num_classes: int, device) -> "RankScores":
        return RankScores(device)


class RankScores:
    def __init__(self, device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)    # BCE, hits, NDCG, rows

    def add(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        logits = logits.float()
        targets = torch.zeros_like(logits)
        targets[:, 0] = 1.0
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum()
        rank = (logits[:, 1:] >= logits[:, :1]).sum(1)
        hit = rank < K
        ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 2.0), 0.0)
        self.sums += torch.stack([bce.double(), hit.sum().double(), ndcg.sum(), bce.new_tensor(len(x)).double()])

    def result(self) -> dict[str, float]:
        bce, hits, ndcg, rows = all_reduce_sum(self.sums).tolist()
        n = max(rows, 1)
        return {"loss": bce / n, f"hr{K}": hits / n, f"ndcg{K}": ndcg / n, "count": int(rows)}
