"""Data sources and the pipeline on the session's Ray: parquet, image folders, synthetic, bad records."""

import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bigmodel_ray.cli import main
from bigmodel_ray.cli.prepare import data_spec_of
from bigmodel_ray.data import load_data
from bigmodel_ray.data.augment import AugmentConfig, augment_batch, draws_for_keys
from bigmodel_ray.data.sources import DataError
from bigmodel_ray.data.synthetic import generate
from bigmodel_ray.spec import DataSpec

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _rows(ds) -> dict[str, np.ndarray]:
    rows = ds.take_all()
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}


def _images(n, size=12, seed=0, classes=3):
    images, labels = generate(np.arange(n) + seed * 10_000, size, classes, 3, split_seed=0)
    return images, labels


# ---------------------------------------------------------------------------- randomness

def test_per_sample_draws_differ_for_one_image_repeated():
    img = _images(1, size=16)[0]
    batch = np.repeat(img, 64, axis=0)
    cfg = AugmentConfig(rotation_range=30, width_shift_range=0.2, zoom_range=(0.8, 1.2), horizontal_flip=True)
    out = augment_batch(batch, cfg, np.random.default_rng(0))
    assert len({o.tobytes() for o in out}) == 64
    keyed = augment_batch(batch, cfg, draws=draws_for_keys(np.arange(64), seed=0, epoch=0))
    assert len({o.tobytes() for o in keyed}) == 64


def test_draws_are_reproducible_and_independent_of_batching():
    keys = np.arange(100, 132, dtype=np.uint64)
    whole = draws_for_keys(keys, seed=3, epoch=2)
    assert np.array_equal(whole, draws_for_keys(keys, seed=3, epoch=2))
    halves = np.concatenate([draws_for_keys(keys[16:], 3, 2), draws_for_keys(keys[:16], 3, 2)])
    assert np.array_equal(np.concatenate([whole[16:], whole[:16]]), halves)     # any order, any batch
    assert not np.array_equal(whole, draws_for_keys(keys, seed=3, epoch=3))     # a new epoch, new draws
    assert not np.array_equal(whole, draws_for_keys(keys, seed=4, epoch=2))


# ---------------------------------------------------------------------------- parquet

def _write_parquet(path, images, labels, fmt):
    if fmt == "encoded":
        column = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]
    else:
        column = [im.tobytes() for im in images]
    path.mkdir(parents=True, exist_ok=True)
    half = len(images) // 2       # two files: a folder of shards
    for part, sl in enumerate((slice(0, half), slice(half, None))):
        pq.write_table(pa.table({"img": column[sl], "cls": pa.array(labels[sl], pa.int32())}),
                       path / f"part-{part}.parquet")


@pytest.mark.parametrize("fmt", ["encoded", "raw"])
def test_parquet_round_trip(tmp_path, fmt):
    images, labels = _images(40)
    for split in ("train", "val", "test"):
        _write_parquet(tmp_path / "pq" / split, images, labels, fmt)
    spec = DataSpec(source="parquet", path=str(tmp_path / "pq"), image_column="img", label_column="cls",
                    image_format=fmt, image_shape=(12, 12, 3) if fmt == "raw" else None)
    data = load_data(spec)
    assert data.input_shape == (3, 12, 12) and data.num_classes == 3 and data.rows["test"] == 40
    got = _rows(data.datasets["test"])
    pixels = got["x"]                                                      # uint8: workers scale on device
    assert pixels.dtype == np.uint8
    expected = images.transpose(0, 3, 1, 2)
    order = np.lexsort(pixels.reshape(len(pixels), -1).T)                 # streaming order is not file order
    ref = np.lexsort(expected.reshape(40, -1).T)
    np.testing.assert_array_equal(pixels[order], expected[ref])           # PNG is lossless: exact pixels
    np.testing.assert_array_equal(got["y"][order], labels[ref])


def test_parquet_without_split_folders_is_split_by_hash(tmp_path):
    images, labels = _images(300)
    _write_parquet(tmp_path / "pq", images, labels, "encoded")
    spec = DataSpec(source="parquet", path=str(tmp_path / "pq" / "*.parquet"), image_column="img",
                    label_column="cls", val_fraction=0.2, test_fraction=0.2)
    data = load_data(spec)
    seen = {name: {r["x"].tobytes() for r in ds.take_all()} for name, ds in data.datasets.items()}
    assert sum(len(s) for s in seen.values()) == 300                       # every row in exactly one split
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"])
    assert 30 < len(seen["test"]) < 90 and 130 < len(seen["train"]) < 230  # ~0.2 / ~0.64 of 300


def test_missing_label_column_names_file_and_field(tmp_path):
    images, labels = _images(4)
    _write_parquet(tmp_path / "pq", images, labels, "encoded")
    spec = DataSpec(source="parquet", path=str(tmp_path / "pq"), image_column="img")   # label_column: "label"
    with pytest.raises(DataError, match=r"column 'label' is not in .*pq \(columns: img, cls\)") as e:
        load_data(spec)
    assert e.value.field == "label_column"


# ---------------------------------------------------------------------------- image folders

def write_image_folder(root, per_class=20, size=16, classes=("cat", "dog", "emu"), seed=0):
    images, labels = generate(np.arange(per_class * len(classes) * 4) + seed, size, len(classes), 3, split_seed=0)
    counts = dict.fromkeys(range(len(classes)), 0)
    for i, (img, label) in enumerate(zip(images, labels)):
        if counts[label] == per_class:
            continue
        counts[label] += 1
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


def test_image_folder_labels_come_from_sorted_folder_names(tmp_path):
    root = tmp_path / "imgs"
    for name, base in (("b_dog", 100), ("a_cat", 0)):     # created first, yet sorted second
        (root / name).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(root / name / f"{i}.png"), np.full((6, 8, 3), base + i, np.uint8))
    spec = DataSpec(source="image_folder", path=str(root), val_fraction=0, test_fraction=0.2, color_mode="grayscale")
    data = load_data(spec)
    assert data.class_names == ["a_cat", "b_dog"] and data.input_shape == (1, 6, 8)
    rows = {**_rows(data.datasets["train"])}
    pixel = rows["x"][:, 0, 0, 0].astype(int)
    assert all((p >= 100) == (y == 1) for p, y in zip(pixel, rows["y"]))  # a_cat -> 0, b_dog (bright) -> 1
    assert data.rows == {"train": 8, "val": 0, "test": 2}


def test_corrupt_image_fails_naming_the_file_or_is_skipped(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=4, size=8)
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    spec = DataSpec(source="image_folder", path=str(root), val_fraction=0, test_fraction=0.1, split_seed=1)
    with pytest.raises(Exception, match=r"broken\.png: cannot decode image"):
        for ds in load_data(spec).datasets.values():
            ds.take_all()
    import ray

    from bigmodel_ray.data.pipeline import start_state

    state = start_state()
    data = load_data(spec.model_copy(update={"on_bad_record": "skip"}), state=state)
    total = sum(len(ds.take_all()) for ds in data.datasets.values())
    assert total == 12                                              # 13 files, 1 bad
    count, examples = ray.get(state.skipped_report.remote())
    assert count == 1 and "broken.png" in examples[0]


def test_image_folder_job_learns_and_bad_input_exits_2(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs", per_class=60, size=16)
    job = {"name": "folder", "storage": str(tmp_path / "runs"),
           "data": {"source": "image_folder", "path": str(root), "test_fraction": 0.2, "in_memory": True,
                    "augment": {"rotation_range": 10, "width_shift_range": 0.1, "fill_mode": "reflect"}},
           "model": {"name": "cnn2d", "args": {"channels": [16, 32]}},
           "train": {"epochs": 6, "batch_size": 16, "optimizer": {"lr": 0.005}}}
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["run", str(path)]) == 0
    result = json.loads((tmp_path / "runs" / "folder" / "result.json").read_text())
    assert result["test_accuracy"] > 0.6, result                      # 3 classes: chance is 0.33

    (root / "cat" / "00000.png").write_bytes(b"garbage")              # now a corrupt file: exit 2, one line
    job["name"] = "folder_bad"
    path.write_text(yaml.safe_dump(job))
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "00000.png: cannot decode image" in err and "on_bad_record" in err


def test_missing_path_is_a_spec_error(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "image_folder", "path": str(tmp_path / "nope")},
                                    "model": {"name": "mlp"}}))
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {path}: data.path: {tmp_path / 'nope'} is not a folder"


# ---------------------------------------------------------------------------- data CLI

def test_prepare_parquet_and_folder_round_trip(tmp_path, capsys):
    out = tmp_path / "pq"
    assert main(["data", "prepare", "synthetic", str(out), "--set", "count=300", "--set", "image_size=16"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["rows"] == {"train": 229, "val": 26, "test": 45} and info["image_shape"] == [16, 16, 3]
    direct = load_data(DataSpec(source="synthetic", count=300, image_size=16))
    via_parquet = load_data(DataSpec(source="parquet", path=str(out)))
    assert via_parquet.rows == direct.rows and via_parquet.num_classes == 10
    a, b = _rows(direct.datasets["test"]), _rows(via_parquet.datasets["test"])
    assert sorted(a["x"].sum(axis=(1, 2, 3)).round(3)) == sorted(b["x"].sum(axis=(1, 2, 3)).round(3))   # PNG: lossless

    folder = tmp_path / "png"
    assert main(["data", "prepare", str(out), str(folder), "--format", "folder"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["test", "train", "val"]
    from_folder = load_data(DataSpec(source="image_folder", path=str(folder)))
    assert from_folder.rows == direct.rows and from_folder.class_names == [str(i) for i in range(10)]

    marker = out / "keep.txt"                    # an existing, non-empty output folder is never touched
    marker.write_text("mine")
    capsys.readouterr()
    assert main(["data", "prepare", "synthetic", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and marker.read_text() == "mine"


def test_inspect_prints_balance_and_writes_a_grid(tmp_path, capsys):
    grid = tmp_path / "grid.png"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"data": {"source": "digits", "augment": {"rotation_range": 20}},
                                   "model": {"name": "mlp"}}))
    assert main(["data", "inspect", str(job), "--grid", str(grid), "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "model input: x float32 [1, 8, 8]" in out
    assert "rows                 1,374       153       270" in out
    image = cv2.imread(str(grid))
    assert image is not None and image.shape[1] > image.shape[0]        # 3 rows x 8 columns
    # --set keys as `run` spells them (data.KEY) or relative to data:
    spelled = [data_spec_of(str(job), [f"{prefix}augment.rotation_range=5"])[0] for prefix in ("data.", "")]
    assert spelled[0] == spelled[1] and spelled[0].augment.rotation_range == 5
    assert main(["data", "inspect", "synthetic", "--set", "image_size=300x"]) == 2
    assert capsys.readouterr().err.strip() == "error: synthetic: data.image_size: must be a valid integer, " \
                                              "unable to parse string as an integer (got '300x')"


def test_device_augmentation_draws_the_same_transform_as_the_data_path():
    import torch

    from bigmodel_ray.data.images import ImageFormat
    from bigmodel_ray.data.pipeline import Transform, augment_config, transform_batch
    from bigmodel_ray.train.inputs import ModelInputs

    spec = DataSpec(source="synthetic", normalize={"mean": [0.5] * 3, "std": [0.2] * 3},
                    augment={"rotation_range": 30, "width_shift_range": 0.2, "zoom_range": [0.8, 1.2],
                             "horizontal_flip": True, "fill_mode": "reflect", "brightness_range": [0.7, 1.3]})
    common = dict(storage="ids", fmt=ImageFormat(24, 24, 3), synthetic=(24, 3), seed=5)
    ids = {"id": np.arange(8)}
    on_data = transform_batch(ids, Transform(**common, augment=augment_config(spec.augment, 255.0)))
    keyed = transform_batch(ids, Transform(**common, emit_key=True))
    assert on_data["x"].dtype == keyed["x"].dtype == np.uint8
    data_path = ModelInputs(spec, seed=5)(torch.from_numpy(on_data["x"]))
    device_path = ModelInputs(spec, seed=5, device_augment_cfg=augment_config(spec.augment, 1.0))(
        torch.from_numpy(keyed["x"]), torch.from_numpy(keyed["key"]), epoch=0)
    # Same draws. The data path works on uint8 (OpenCV's fixed-point bilinear, rounding after the
    # warp and after brightness): up to 2 grey levels apart = 2/255/0.2 = 0.04 once normalized.
    # Another draw would differ by whole stripes (differences ~1-5).
    diff = (device_path - data_path).abs()
    assert diff.max() < 0.04 and diff.mean() < 0.015      # mean: two roundings, ~0.6 grey levels


def test_device_augmentation_job_trains(tiny_job, tmp_path):
    job = tiny_job("device_aug", data={"source": "digits", "augment": {"rotation_range": 10, "on": "device"}},
                   model={"name": "cnn2d", "args": {"channels": [8, 16]}}, train={"epochs": 5, "batch_size": 32})
    assert main(["run", str(job)]) == 0
    result = json.loads((tmp_path / "runs" / "device_aug" / "result.json").read_text())
    assert result["test_accuracy"] > 0.5, result        # 10 classes: chance is 0.1


def test_builtin_val_split_is_stratified_and_a_cached_split_needs_no_scikit_learn(tmp_path):
    """The split is scikit-learn's, made once and read back from the cache: a run's start does not
    import scikit-learn (~0.6 s) for a split it has made before."""
    import os
    import subprocess
    import sys

    script = ("import json, sys, numpy as np; from bigmodel_ray.data.builtin import _carve_val\n"
              "y = np.repeat(np.arange(4), 25); x = np.arange(100) * 10\n"
              "s = _carve_val(x, y, 0.2, int(sys.argv[1]))\n"
              "print(json.dumps([sorted(s['val'][0].tolist()), np.bincount(s['val'][1]).tolist(), 'sklearn' in sys.modules]))")

    def split(seed):
        done = subprocess.run([sys.executable, "-c", script, str(seed)], capture_output=True, text=True, check=True,
                              env={**os.environ, "BIGMODEL_RAY_CACHE": str(tmp_path)})
        return json.loads(done.stdout)

    made, again, other = split(3), split(3), split(4)
    assert made[1] == [5, 5, 5, 5] and made[2]       # stratified; scikit-learn made it
    assert again[:2] == made[:2] and not again[2]    # the same rows, read back without it
    assert other[0] != made[0]                        # another seed, other rows
    assert len(list((tmp_path / "splits").glob("*.npz"))) == 2
