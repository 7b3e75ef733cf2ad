"""Parquet sources: a file, folder, glob or URI of rows with an image column (encoded bytes or
raw pixels) and an integer label column; split folders (`train/`, `val/`, `test/`, as `data
prepare` writes them) are used as they are, otherwise rows are split by the hash of their key.
Only metadata (schema, row counts, labels) and the first image are read on the driver."""

import json
from pathlib import Path

import numpy as np

from bigmodel_ray.data.sources import DATASET_INFO, SPLITS, DataError, Source, probe_image, split_shares


def open_parquet(spec) -> Source:
    import pyarrow.dataset as pads
    import ray.data

    layout = parquet_layout(spec.path)
    datasets, rows, label_parts = {}, {}, []
    info = _read_info(spec.path)
    for name, paths in layout.items():
        where = paths if isinstance(paths, str) else paths[0]
        if isinstance(paths, str) and Path(paths).is_dir() and not any(Path(paths).rglob("*.parquet")):
            datasets[name], rows[name] = ray.data.from_items([]), 0          # an empty split (e.g. val: 0)
            continue
        try:
            table_meta = pads.dataset(paths, format="parquet")
        except (OSError, ValueError) as e:
            raise DataError("path", f"cannot read parquet at {where}: {e}") from None
        _check_columns(table_meta.schema, spec, where)
        rows[name] = table_meta.count_rows()
        if info is None:     # class count from the labels (one narrow column read)
            label_parts.append(table_meta.to_table(columns=[spec.label_column]).column(0))
        ds = _read_parquet(paths, len(table_meta.files), shuffle_seed=spec.split_seed if name != "test" else None)
        datasets[name] = ds.select_columns([spec.image_column, spec.label_column, "path", "row_hash"])
    if info is not None:
        num_classes, class_names = len(info["classes"]), info["classes"]
    else:
        import pyarrow.compute as pc

        num_classes, class_names = max(int(pc.max(part).as_py() or 0) for part in label_parts) + 1, None
    source = Source("encoded" if spec.image_format == "encoded" else "raw", datasets, rows, num_classes,
                    class_names=class_names)
    if set(layout) == {"all"}:       # no split folders: split rows by the hash of their key
        source.hash_split = split_shares(spec)
        total = rows.pop("all")
        source.splits = {name: datasets["all"] for name in SPLITS}
        source.rows = {name: round(total * (hi - lo)) for name, (lo, hi) in source.hash_split.items()}
    elif "train" in layout:
        missing = [s for s in SPLITS if s not in layout]
        if missing:
            raise DataError("path", f"{spec.path} has train/ but no {'/ '.join(missing)}/ (run `bigmodel-ray data "
                                    f"prepare` to write all three, or point path at the files to split them by hash)")
    source.first_image = _first_parquet_image(layout, spec)
    return source


def _read_parquet(paths, n_files: int, shuffle_seed: int | None = None):
    """One read task per file, through Ray Data's V1 parquet reader; files in a new seeded order
    every pass (epoch) when `shuffle_seed` is given.

    Measured on 2 CPUs, 16 files of 224x224 JPEGs: the default V2 reader spends ~1 s per pass
    listing files in a task and then reads every file in ONE task (decode runs serially: ~650
    img/s); V1 reads the 16 files in 16 tasks (~1,100 img/s, first batch 0.55 s instead of 3 s).
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved, ctx.use_datasource_v2 = ctx.use_datasource_v2, False       # read at plan time, by read_parquet
    try:
        shuffle = ray.data.FileShuffleConfig(seed=shuffle_seed) if shuffle_seed is not None else None
        return ray.data.read_parquet(paths, include_paths=True, include_row_hash=True, shuffle=shuffle,
                                     override_num_blocks=max(1, n_files))
    finally:
        ctx.use_datasource_v2 = saved


def parquet_layout(path: str) -> dict[str, str | list[str]]:
    """{"train": .., "val": .., "test": ..} for split folders, else {"all": paths}."""
    if any(ch in path for ch in "*?["):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(path)
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        found = sorted(fs.glob(path))
        if not found:
            raise DataError("path", f"no files match {path}")
        return {"all": found if protocol in ("file", "local") else [f"{protocol}://{p}" for p in found]}
    if "://" not in path:
        local = Path(path).expanduser()
        if not local.exists():
            raise DataError("path", f"{local} does not exist")
        if local.is_dir() and (local / "train").is_dir():
            return {name: str(local / name) for name in SPLITS if (local / name).is_dir()}
        return {"all": str(local)}
    return {"all": path}


def _read_info(path: str) -> dict | None:
    if "://" in path or any(ch in path for ch in "*?["):
        return None
    info = Path(path).expanduser() / DATASET_INFO
    return json.loads(info.read_text()) if info.is_file() else None


def _check_columns(schema, spec, where: str) -> None:
    import pyarrow as pa

    names = schema.names
    for key, column in (("image_column", spec.image_column), ("label_column", spec.label_column)):
        if column not in names:
            raise DataError(key, f"column {column!r} is not in {where} (columns: {', '.join(names)})")
    if not pa.types.is_integer(schema.field(spec.label_column).type):
        raise DataError("label_column", f"column {spec.label_column!r} in {where} is "
                                        f"{schema.field(spec.label_column).type}, not integer class ids")


def _first_parquet_image(layout, spec) -> np.ndarray:
    import pyarrow.dataset as pads

    from bigmodel_ray.data.images import ImageFormat, from_raw

    paths = layout.get("train", layout.get("all"))
    head = pads.dataset(paths, format="parquet").head(1, columns=[spec.image_column]).column(0)
    if len(head) == 0:
        raise DataError("path", f"no rows in {paths}")
    value = head[0].as_py()
    if spec.image_format == "raw":
        h, w, c = spec.image_shape
        fmt = ImageFormat(*(spec.target_size or (h, w)), 1 if spec.color_mode == "grayscale" else 3, resize=True)
        return from_raw(value, spec.image_shape, fmt, "first row")
    if not isinstance(value, bytes):
        raise DataError("image_format", f"column {spec.image_column!r} holds {type(value).__name__}, not encoded "
                                        f"image bytes (set image_format: raw and image_shape for raw pixels)")
    return probe_image(value, spec, f"{paths} (first row)")
