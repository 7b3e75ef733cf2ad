"""What `bigmodel-ray data prepare|inspect` do: convert a source to sharded parquet; look at a
source (the commands' arguments are in cli/data.py)."""

import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bigmodel_ray.data import SOURCES, open_pipeline
from bigmodel_ray.data.pipeline import Transform, in_split, labels_and_keys, stored_images
from bigmodel_ray.data.sources import DATASET_INFO, SPLITS, DataError

# Parquet files of at most ~128 MB (and ~16 MB once decoded: a file is one read task's input), and
# at least 16 per split where rows allow: the file count caps how many CPUs decode in parallel.
SHARD_BYTES, DECODED_BYTES, MIN_FILES, MIN_ROWS_PER_FILE = 128 << 20, 16 << 20, 16, 64


def data_spec_of(src: str, overrides: list[str]):
    """The DataSpec (and a seed) that SRC and the overrides describe."""
    from bigmodel_ray.spec import DataSpec, apply_overrides, load_job, validate_section

    overrides = [o.removeprefix("data.") for o in overrides]     # `run`'s spelling works here too
    if src.endswith((".yaml", ".yml")):
        job = load_job(src, [f"data.{o}" for o in overrides])
        return job.data, job.seed, Path(src).stem
    if src in SOURCES:
        raw = {"source": src}
    elif Path(src).is_dir() and not any(Path(src).glob("*.parquet")) and not (Path(src) / "train").is_dir() \
            or Path(src, "train").is_dir() and not any(Path(src, "train").glob("*.parquet")):
        raw = {"source": "image_folder", "path": src}
    else:
        raw = {"source": "parquet", "path": src}
    raw = apply_overrides(raw, overrides, src)
    return validate_section(DataSpec, raw, src, "data"), 0, Path(src.rstrip("/")).name or "data"


# ---------------------------------------------------------------------------- prepare

def encode_batch(batch, t: Transform, encoding: str, state=None) -> dict:
    images, y, _ = stored_images(batch, t, state)
    if images.dtype != np.uint8:                     # built-in float images in 0..1
        images = np.round(images * 255).astype(np.uint8)
    if encoding == "raw":
        column = [im.tobytes() for im in images]
    else:
        ext, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]) if encoding == "png" else \
            (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
        bgr = (cv2.COLOR_RGB2BGR,) if images.shape[-1] == 3 else ()
        column = [cv2.imencode(ext, cv2.cvtColor(im, *bgr) if bgr else im, params)[1].tobytes() for im in images]
    return {"image": np.array(column, dtype=object), "label": y}


def prepare(src: str, out: str, encoding: str, overrides: list[str], layout: str = "parquet", say=print) -> dict:
    """Write SRC's train/val/test splits under OUT as parquet shards (or an image folder)."""
    import ray
    import ray.data

    from bigmodel_ray.data.pipeline import start_state

    spec, _, _ = data_spec_of(src, overrides)
    out_dir = Path(out).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError("out", f"{out_dir} exists and is not empty; choose a new folder")
    if layout == "folder" and encoding == "raw":
        raise DataError("out", "an image folder holds png or jpeg files, not raw pixels")
    spec = spec.model_copy(update={"augment": None, "normalize": None})   # stored images are the originals
    source, fmt, _, transform, _ = open_pipeline(spec)
    if fmt is None:
        raise DataError("source", f"{spec.source} is not an image set; prepare writes images")
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    state = start_state()
    tmp = out_dir.with_name(f".{out_dir.name}.partial")      # renamed into place only when complete
    shutil.rmtree(tmp, ignore_errors=True)
    sample = encode_batch(_stored_batch(source, 8), transform("train"), encoding)["image"]
    bytes_per_row = max(np.mean([len(b) for b in sample]) if len(sample) else 1, 1)
    class_names = source.class_names or [str(i) for i in range(source.num_classes)]
    rows = {}
    for name in SPLITS:
        start = time.perf_counter()
        ds = source.splits[name].map_batches(encode_batch, fn_kwargs={"t": transform(name), "encoding": encoding,
                                                                    "state": state},
                                             batch_size=256, batch_format="numpy")
        if layout == "folder":
            rows[name] = _write_folder(ds, tmp / name, class_names, ".png" if encoding == "png" else ".jpg")
            files = list((tmp / name).rglob("*.*"))
        else:
            (tmp / name).mkdir(parents=True, exist_ok=True)        # an empty split still has its folder
            decoded_row = fmt.height * fmt.width * fmt.channels
            per_file = int(max(MIN_ROWS_PER_FILE, min(SHARD_BYTES // bytes_per_row, DECODED_BYTES // decoded_row,
                                                      -(-source.rows[name] // MIN_FILES))))
            ds.write_parquet(str(tmp / name), min_rows_per_file=per_file, max_rows_per_file=per_file)
            files = list((tmp / name).glob("*.parquet"))
            rows[name] = sum(pq_rows(f) for f in files)
        size = sum(f.stat().st_size for f in files)
        say(f"{name}: {rows[name]:,} rows -> {len(files):,} files, {size / 2**20:,.1f} MB "
            f"({time.perf_counter() - start:.1f}s)")
    skipped, examples = ray.get(state.skipped_report.remote())
    info = {"classes": class_names, "rows": rows, "image_shape": [fmt.height, fmt.width, fmt.channels],
            "encoding": encoding, "image_column": "image", "label_column": "label", "prepared_from": src,
            "skipped_records": skipped}
    if layout == "parquet":
        (tmp / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()                                   # empty (checked above)
    tmp.rename(out_dir)
    if skipped:
        say(f"skipped {skipped} bad records, e.g. {'; '.join(examples)}")
    if layout == "folder":
        say(f"wrote {out_dir}; use it with data: {{source: image_folder, path: {out_dir}}}")
    else:
        fields = f"image_format: raw, image_shape: {info['image_shape']}" if encoding == "raw" else "image_format: encoded"
        say(f"wrote {out_dir}; use it with data: {{source: parquet, path: {out_dir}, {fields}}}")
    return info


def _write_folder(ds, root: Path, class_names: list[str], ext: str) -> int:
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    n = 0
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for data, label in zip(batch["image"], batch["label"]):
            (root / class_names[label] / f"{n:07d}{ext}").write_bytes(data)
            n += 1
    return n


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _stored_batch(source, n: int) -> dict:
    """Up to n stored train rows as a numpy batch (more are read where a hash split drops some)."""
    rows = source.splits["train"].take(n * 4 if source.hash_split else n)
    return {k: np.array([r[k] for r in rows], dtype=object if isinstance(rows[0][k], bytes | str) else None)
            for k in rows[0]} if rows else {}


# ---------------------------------------------------------------------------- inspect

def inspect(src: str, overrides: list[str], grid: str | None, samples: int, say=print) -> None:
    spec, seed, name = data_spec_of(src, overrides)
    source, fmt, input_shape, transform, _ = open_pipeline(spec, seed)
    say(f"source: {spec.source}" + (f" ({spec.path})" if spec.path else "") + f"; stored as {source.storage}")
    for split_name, ds in source.splits.items():
        if split_name == "train":
            say(f"stored columns: {', '.join(f'{n}: {t}' for n, t in zip(ds.schema().names, ds.schema().types))}")
    say(f"model input: x float32 {list(input_shape)}, y int64 in 0..{source.num_classes - 1}")
    names = source.class_names or [str(i) for i in range(source.num_classes)]
    counts = {split: _label_counts(source.splits[split], transform(split), source.num_classes) for split in SPLITS}
    say(f"{'class':<16}" + "".join(f"{s:>10}" for s in SPLITS))
    for c, cname in enumerate(names):
        say(f"{cname[:15]:<16}" + "".join(f"{counts[s][c]:>10,}" for s in SPLITS))
    say(f"{'rows':<16}" + "".join(f"{counts[s].sum():>10,}" for s in SPLITS))
    if fmt is None:
        say("not an image set: no sample grid")
        return
    path = Path(grid or f"inspect_{name}.png")
    _sample_grid(source, transform, spec, samples, path)
    what = "augmented samples (one row per image, one column per epoch)" if spec.augment else \
        "samples (no augment section: originals only)"
    say(f"wrote {path}: {what}")


def _label_counts(ds, t: Transform, num_classes: int) -> np.ndarray:
    def labels(batch):          # labels and split membership only: images are never decoded here
        y, key = labels_and_keys(batch, t)
        return {"y": y[in_split(key, t)]}

    if t.storage in ("encoded", "raw"):
        ds = ds.select_columns([t.label_column, "row_hash"])
    counts = np.zeros(num_classes, np.int64)
    for batch in ds.map_batches(labels, batch_format="numpy", batch_size=4096).iter_batches(batch_size=None):
        counts += np.bincount(batch["y"], minlength=num_classes)[:num_classes]
    return counts


def _sample_grid(source, transform, spec, samples: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bigmodel_ray.data.augment import augment_batch, draws_for_keys
    from bigmodel_ray.data.pipeline import augment_config

    plain = Transform(**{**transform("train").__dict__, "augment": None, "emit_key": False})
    images, labels, keys = stored_images(_stored_batch(source, samples), plain)
    images, labels, keys = images[:samples], labels[:samples], keys[:samples]
    # The same draws the pipeline makes (seed 0, epochs 1..7), shown with the OpenCV warp.
    cfg = augment_config(spec.augment, 255.0 if images.dtype == np.uint8 else 1.0) if spec.augment else None
    columns = 8 if cfg else 1
    fig, axes = plt.subplots(len(images), columns, figsize=(1.6 * columns, 1.6 * len(images)), squeeze=False)
    names = source.class_names or [str(i) for i in range(source.num_classes)]
    for epoch in range(columns):
        shown = augment_batch(images, cfg, draws=draws_for_keys(keys, 0, epoch)) if cfg and epoch else images
        for row, img in enumerate(shown):
            ax = axes[row, epoch]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if epoch == 0 else f"epoch {epoch}", fontsize=8)
            if epoch == 0:
                ax.set_ylabel(names[labels[row]][:12], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
