"""What a recommender must beat, computed on the driver from the same split: result.json reports
them beside the model's test metrics (`reference_*`).

rating:  the global mean, and user + item biases (regularized alternating least squares, as
         Surprise's BaselineOnly: reg 15 for users, 10 for items)
ranking: most-popular (items scored by their train interactions), HR@10 / NDCG@10 on the same
         candidates as the model
"""

import numpy as np

K = 10


def rating_baselines(data, train: np.ndarray, test: np.ndarray, reg_user: float = 15.0, reg_item: float = 10.0,
                     sweeps: int = 10) -> dict[str, float]:
    users, items, ratings = data.users[train], data.items[train], data.ratings[train].astype(np.float64)
    lo, hi = float(data.ratings.min()), float(data.ratings.max())
    mean = ratings.mean()
    b_user, b_item = np.zeros(len(data.user_ids)), np.zeros(len(data.item_ids))
    for _ in range(sweeps):
        b_user = _solve(users, ratings - mean - b_item[items], len(b_user), reg_user)
        b_item = _solve(items, ratings - mean - b_user[users], len(b_item), reg_item)
    truth = data.ratings[test].astype(np.float64)
    biased = np.clip(mean + b_user[data.users[test]] + b_item[data.items[test]], lo, hi)
    return {"reference_test_rmse_global_mean": _rmse(np.full_like(truth, mean), truth),
            "reference_test_rmse_biases": _rmse(biased, truth),
            "reference_test_mae_biases": float(np.abs(biased - truth).mean())}


def _solve(index: np.ndarray, residual: np.ndarray, size: int, reg: float) -> np.ndarray:
    return np.bincount(index, residual, size) / (reg + np.bincount(index, minlength=size))


def _rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def ranking_baselines(data, train: np.ndarray, test_x: np.ndarray) -> dict[str, float]:
    popularity = np.bincount(data.items[train], minlength=len(data.item_ids)).astype(np.float64)
    hit, ndcg = hit_and_ndcg(popularity[test_x[:, 1:]])
    return {f"reference_test_hr{K}_most_popular": float(hit.mean()), f"reference_test_ndcg{K}_most_popular": float(ndcg.mean())}


def hit_and_ndcg(scores: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Per row of candidate scores (the held-out item first): whether it ranks in the top k, and
    its NDCG@k (one relevant item: 1 / log2(rank + 2)). A tie counts against the held-out item,
    so a model that scores every item alike gets no credit."""
    rank = (scores[:, 1:] >= scores[:, :1]).sum(1)
    hit = rank < k
    return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
