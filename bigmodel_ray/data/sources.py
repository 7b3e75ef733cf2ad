"""Where rows come from: each source becomes lazy Ray Datasets of *stored* rows, per split.

Stored rows have columns `y` (int64 label), `key` (uint64, stable per row: it seeds the row's
augmentation and hash split) and, by `Source.storage`:
  files    `path` of an image file (image folders; read and decoded in the pipeline)
  encoded  the image column: PNG/JPEG/... bytes, + `path` of the parquet file (for errors)
  raw      the image column: uint8 pixels of `image_shape` (bytes or a list), + `path`
  ids      `id` only: synthetic images are generated from it
  array    `x` float32 (C, H, W) or (C, L): the built-in sets
`pipeline.py` turns them into model inputs. Nothing here reads image data on the driver
except the first image (for its size) and parquet metadata (schema, row counts, labels).

Sources here: built-in sets, synthetic images, image folders; parquet.py: parquet files.

Splits: a `train/` (+ `val/`, `test/`) folder layout is used as is, missing val/test carved from
train; otherwise rows are split by `split_seed`: image files stratified by class, parquet rows by
a hash of their key (streaming: every split reads the files, keeping its share).
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bigmodel_ray.data.builtin import BUILTIN
from bigmodel_ray.data.bundle import LazyDatasets
from bigmodel_ray.data.images import BadRecord, read_file
from bigmodel_ray.errors import DataError

if TYPE_CHECKING:
    import ray

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
DATASET_INFO = "dataset.json"        # written by `data prepare`: class names and split sizes
PROBE_TRIES = 20                     # on_bad_record: skip — images tried for the first good one


@dataclass
class Source:
    storage: str                                   # files | encoded | raw | ids | array
    splits: Mapping[str, "ray.data.Dataset"]      # LazyDatasets for built-in sets (made on first use)
    rows: dict[str, int]                           # exact, or estimated for hash splits
    num_classes: int
    first_image: np.ndarray | None = None          # one train image as stored (its size fixes the format)
    class_names: list[str] | None = None
    hash_split: dict[str, tuple[float, float]] = field(default_factory=dict)   # split -> [lo, hi) of hash share
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)   # array storage: (x, y) per split


def split_shares(spec) -> dict[str, tuple[float, float]]:
    """[lo, hi) of a uniform hash for each split: test first, val from the rest, then train."""
    test = spec.test_fraction
    val = test + (1 - test) * spec.val_fraction
    return {"test": (0.0, test), "val": (test, val), "train": (val, 1.0)}


def hash_share(keys: np.ndarray, split_seed: int) -> np.ndarray:
    """Uniform [0, 1) per key and seed (splitmix64 finalizer)."""
    z = keys.astype(np.uint64) + np.uint64(split_seed * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) / 2.0**53


# ---------------------------------------------------------------------------- built-in sets

def open_builtin(spec) -> Source:
    variant = {"generator": spec.generator} if spec.generator else {}        # mnist1d only (spec.py checks)
    splits = BUILTIN[spec.source](spec.val_fraction, spec.test_fraction, spec.split_seed, **variant)
    if spec.shift is not None:
        from bigmodel_ray.data.shift import apply_shift

        # The whole set's range, so that every split is inverted and noised alike.
        lo = min(float(x.min()) for x, _ in splits.values() if len(x))
        hi = max(float(x.max()) for x, _ in splits.values() if len(x))
        # Each row its own noise: seeded by (split, row), the same in every run.
        first_row = {"train": 0, "val": 1 << 24, "test": 2 << 24}
        splits = {name: (apply_shift(x, spec.shift, lo, hi, seeds=first_row[name] + np.arange(len(x))), y)
                  for name, (x, y) in splits.items()}

    keyed = {"train": spec.augment is not None}
    datasets = LazyDatasets({name: partial(_from_arrays, x, y, keyed.get(name, False)) for name, (x, y) in splits.items()})
    return Source("array", datasets,
                  rows={k: len(y) for k, (_, y) in splits.items()},
                  num_classes=int(max(y.max() for _, y in splits.values() if len(y)) + 1),
                  first_image=splits["train"][0][0], arrays=splits)


def _from_arrays(x: np.ndarray, y: np.ndarray, keyed: bool, blocks: int = 16) -> "ray.data.Dataset":
    """Rows {x, y[, key]} as a Dataset of a few Arrow blocks (ray.data.from_items builds a dict
    per row and puts ~200 blocks: ~0.4 s a split, paid by every run at its start). A key only
    where augmentation needs one: it travels with every batch."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    def table(rows):
        columns = {"x": ArrowTensorArray.from_numpy(x[rows]), "y": pa.array(y[rows])}
        return pa.table(columns | ({"key": pa.array(rows.astype(np.uint64))} if keyed else {}))

    return ray.data.from_arrow([table(rows) for rows in np.array_split(np.arange(len(y)), min(blocks, max(len(y), 1)))])


# ---------------------------------------------------------------------------- synthetic

def open_synthetic(spec) -> Source:
    import ray.data

    n_test = round(spec.count * spec.test_fraction)
    n_val = round((spec.count - n_test) * spec.val_fraction)
    rows = {"test": n_test, "val": n_val, "train": spec.count - n_test - n_val}
    offsets = {"test": 0, "val": n_test, "train": n_test + n_val}     # ids [offset, offset + rows)

    def ids(offset):
        return lambda batch: {"id": batch["id"] + offset}

    datasets = {name: ray.data.range(n).map_batches(ids(offsets[name])) if n else ray.data.from_items([])
                for name, n in rows.items()}
    return Source("ids", datasets, rows, num_classes=spec.num_classes)


# ---------------------------------------------------------------------------- image folders

def check_folder(spec) -> None:
    if not Path(spec.path).expanduser().is_dir():
        raise DataError("path", f"{Path(spec.path).expanduser()} is not a folder")


def open_image_folder(spec) -> Source:
    import pyarrow as pa
    import ray.data

    check_folder(spec)
    root = Path(spec.path).expanduser()
    layout = {name: root / name for name in SPLITS if (root / name).is_dir()}
    train_root = layout.get("train", root)
    classes = sorted(d.name for d in train_root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if "train" not in layout and set(classes) & set(SPLITS):
        raise DataError("path", f"{root} has {sorted(set(classes) & set(SPLITS))} but no train/ folder")
    if len(classes) < 2:
        raise DataError("path", f"{train_root} needs one subfolder per class (found {len(classes)})")
    files = {name: _list_images(d, classes) for name, d in layout.items() if name != "train"}
    files["train"] = _list_images(train_root, classes)
    if not files["train"][0]:
        raise DataError("path", f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {train_root}")
    # An empty folder would still be a class: an output the model is never shown.
    present = set(files["train"][1])
    if empty := [name for c, name in enumerate(classes) if c not in present]:
        raise DataError("path", f"class folder {train_root / empty[0]} has no images ({', '.join(IMAGE_EXTENSIONS)})"
                                + (f", nor do {len(empty) - 1} more" if len(empty) > 1 else ""))
    _carve(files, spec)
    first = first_usable(files["train"][0], lambda p: probe_image(read_file(p), spec, p), spec)

    datasets = {}
    for name, (paths, labels) in files.items():
        # Listed class by class; a seeded shuffle so that streamed batches mix the classes.
        order = np.random.default_rng(spec.split_seed).permutation(len(paths))
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
        keys = [_path_key(str(Path(p).relative_to(root))) for p in paths]
        table = pa.table({"path": paths, "y": pa.array(labels, pa.int64()), "key": pa.array(keys, pa.uint64())})
        # Many small blocks: file reading and decoding spread over all the data CPUs.
        datasets[name] = ray.data.from_arrow([table.slice(i, 256) for i in range(0, max(len(table), 1), 256)])
    return Source("files", datasets, rows={k: len(v[0]) for k, v in files.items()}, num_classes=len(classes),
                  first_image=first, class_names=classes)


def _list_images(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        found = sorted(str(p) for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        paths += found
        labels += [label] * len(found)
    extra = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in classes) if folder.is_dir() else []
    if extra and folder.name in SPLITS[1:]:
        raise DataError("path", f"{folder} has class folders {extra} that train/ does not have")
    return paths, labels


def _carve(files: dict, spec) -> None:
    """Seeded, class-stratified val/test from train where the folder does not provide them."""
    from sklearn.model_selection import train_test_split

    for name, fraction in (("test", spec.test_fraction), ("val", spec.val_fraction)):
        if name in files:
            continue
        paths, labels = files["train"]
        if fraction == 0 or len(paths) < 2:
            files[name] = ([], [])
            continue
        try:
            keep, held, keep_y, held_y = train_test_split(paths, labels, test_size=fraction,
                                                          random_state=spec.split_seed, stratify=labels)
        except ValueError:       # a class with a single image cannot be stratified
            keep, held, keep_y, held_y = train_test_split(paths, labels, test_size=fraction, random_state=spec.split_seed)
        files["train"], files[name] = (keep, keep_y), (held, held_y)


def _path_key(relative: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(relative.encode(), digest_size=8).digest(), "little")


def probe_image(data: bytes, spec, origin: str) -> np.ndarray:
    """The first image as the pipeline will see it: resized if a target size is set."""
    from bigmodel_ray.data.images import ImageFormat, decode_any, fit, max_pixels_of

    img = decode_any(data, 1 if spec.color_mode == "grayscale" else 3, origin, max_pixels_of(spec))
    return fit(img, ImageFormat(*spec.target_size, img.shape[2], resize=True), origin) if spec.target_size else img


def first_usable(stored: Iterable, probe: Callable[..., np.ndarray], spec) -> np.ndarray:
    """`probe(item)` of the first stored item that is a good record: its image fixes the size.

    With on_bad_record: fail the first record must be good, as it must in the pipeline; with skip
    a bad one is passed over (the pipeline skips it too), up to PROBE_TRIES of them.
    """
    tries = PROBE_TRIES if spec.on_bad_record == "skip" else 1
    problems = []
    for item in islice(stored, tries):
        try:
            return probe(item)
        except BadRecord as e:
            problems.append(str(e))
    if not problems:
        raise DataError("path", f"no rows in {spec.path}")
    if tries == 1:
        raise DataError("path", f"{problems[0]} (data.on_bad_record: skip drops such records)")
    raise DataError("path", f"none of the first {len(problems)} images can be used, e.g. {problems[0]}")
