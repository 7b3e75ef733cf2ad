"""Data for jobs: every source becomes Ray Datasets with columns `x` (float32) and `y` (int64).

Sources are registered in `SOURCES` by the name used in `data.source`. Built-in sets live in
`builtin.py`; file-backed and generated sources (parquet, image folders, synthetic) and
augmentation plug in here as further entries that return the same `DataBundle`.
"""

from dataclasses import dataclass

import numpy as np

from bigmodel_ray.data.builtin import BUILTIN

SOURCES = dict(BUILTIN)


@dataclass
class DataBundle:
    datasets: dict[str, "ray.data.Dataset"]   # "train", "val", "test"
    rows: dict[str, int]
    input_shape: tuple[int, ...]
    num_classes: int


def load_splits(data_spec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return SOURCES[data_spec.source](data_spec.val_fraction, data_spec.test_fraction, data_spec.split_seed)


def load_data(data_spec) -> DataBundle:
    """The job's splits as Ray Datasets (needs a running Ray)."""
    import ray.data

    splits = load_splits(data_spec)
    x_train, y_train = splits["train"]
    datasets = {name: ray.data.from_items([{"x": xi, "y": yi} for xi, yi in zip(x, y)])
                for name, (x, y) in splits.items()}
    return DataBundle(
        datasets=datasets,
        rows={name: len(y) for name, (_, y) in splits.items()},
        input_shape=tuple(x_train.shape[1:]),
        num_classes=int(max(y.max() for _, y in splits.values() if len(y)) + 1),
    )
