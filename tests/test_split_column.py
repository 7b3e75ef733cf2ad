"""`data.split_column`: a file's own split names instead of a split by row hash."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigmodel_ray.data.sources import DataError
from bigmodel_ray.data.splits import column_splits
from bigmodel_ray.spec import DataSpec


def spec_for(path, **kw) -> DataSpec:
    return DataSpec(source="parquet", path=str(path), image_column="img", label_column="cls", image_format="raw",
                    image_shape=(2, 2, 1), split_column="split", **kw)


def test_split_names_map_to_splits_and_val_is_carved_from_train_when_absent(tmp_path):
    spec = spec_for(tmp_path, val_fraction=0.25)
    values, shares, rows = column_splits(spec, {"Train": 80, "TEST": 20})
    assert values == {"train": ("train",), "val": ("train",), "test": ("test",)}
    assert shares == {"train": (0.25, 1.0), "val": (0.0, 0.25), "test": None} and rows == {"train": 60, "val": 20, "test": 20}
    values, shares, rows = column_splits(spec, {"training": 7, "dev": 2, "validation": 1, "testing": 3})
    assert values["val"] == ("validation", "dev") and set(shares.values()) == {None} and rows == {"train": 7, "val": 3, "test": 3}
    for counts, message in (({"train": 5, "holdout": 1, "test": 1}, "has values 'holdout'"),
                            ({"train": 5, "val": 1}, "marks no test rows")):
        with pytest.raises(DataError, match=message):
            column_splits(spec, counts)


def test_rows_go_to_the_split_their_column_names(ray_cluster, tmp_path):
    from bigmodel_ray.data import load_data

    rng = np.random.default_rng(0)
    split = np.array(["train"] * 60 + ["val"] * 10 + ["test"] * 30)
    labels = np.array([0] * 60 + [1] * 10 + [2] * 30)           # the label tells which split a row came from
    pixels = rng.integers(0, 256, (100, 4)).tolist()
    pq.write_table(pa.table({"img": pixels, "cls": labels, "split": split}), tmp_path / "rows.parquet")
    data = load_data(spec_for(tmp_path))
    got = {name: sorted(int(r["y"]) for r in ds.take_all()) for name, ds in data.datasets.items()}
    assert got == {"train": [0] * 60, "val": [1] * 10, "test": [2] * 30} and data.rows == {"train": 60, "val": 10, "test": 30}

    # No val rows: val is carved from the train rows by hash, never from test.
    pq.write_table(pa.table({"img": pixels, "cls": labels, "split": np.where(split == "val", "train", split)}),
                   tmp_path / "rows.parquet")
    data = load_data(spec_for(tmp_path, val_fraction=0.3))
    got = {name: [int(r["y"]) for r in ds.take_all()] for name, ds in data.datasets.items()}
    assert len(got["train"]) + len(got["val"]) == 70 and 10 <= len(got["val"]) <= 32 and set(got["val"]) <= {0, 1}
    assert sorted(got["test"]) == [2] * 30


def test_split_column_is_for_parquet_and_text_sources():
    with pytest.raises(ValueError, match="split_column: for sources parquet and text"):
        DataSpec(source="digits", split_column="split")


def test_text_rows_follow_the_split_column_tokenizer_included(ray_cluster, tmp_path, monkeypatch):
    from bigmodel_ray.data import load_data

    monkeypatch.setenv("BIGMODEL_RAY_CACHE", str(tmp_path / "cache"))
    words = ["red", "blue", "dress", "fits", "small", "large", "love", "return"]
    rng = np.random.default_rng(1)
    text = [" ".join(rng.choice(words, 6)) for _ in range(120)]
    split = ["train"] * 80 + ["test"] * 40
    pq.write_table(pa.table({"review": text, "label": ["yes", "no"] * 60, "split": split}), tmp_path / "t.parquet")
    spec = DataSpec(source="text", path=str(tmp_path), label_column="label", split_column="split", val_fraction=0.25,
                    text={"columns": ["review"], "vocab_size": 64, "max_length": 8})
    data = load_data(spec)
    counts = {name: ds.count() for name, ds in data.datasets.items()}
    assert counts["test"] == 40 and counts["train"] + counts["val"] == 80 and data.rows["test"] == 40
    assert data.class_names == ["no", "yes"]
