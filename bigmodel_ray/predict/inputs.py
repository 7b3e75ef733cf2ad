"""DATA -> rows prepared as the run's training prepared its evaluation rows, in Ray Data tasks.

`find_inputs` checks DATA on the driver before Ray starts (paths, parquet schema; nothing read
but metadata); `prepared_rows` reads it lazily and `prepare_batch` turns stored rows into `x` —
uint8 (C, H, W) images decoded, converted and resized by data/images.py as the pipeline does it,
float32 (C, L) series, or int32 token ids from data/text.py's `tokenize_batch` with the run's
tokenizer — and `error`: why a row is a bad record ("" for a good one). Bad rows keep their
place (zeros in `x`), so every row's position is known downstream.
"""

import glob
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bigmodel_ray.data.images import BadRecord, ImageFormat, decode, from_raw, max_pixels_of, read_file
from bigmodel_ray.data.parquet import arrow_errors, first_line
from bigmodel_ray.data.sources import IMAGE_EXTENSIONS
from bigmodel_ray.data.text import TextTransform, tokenize_batch
from bigmodel_ray.errors import SpecError

SERIES_COLUMN = "x"        # 1-D series: one list of floats per row, as the built-in sets name it
ID_COLUMN = "id"           # a parquet column naming the rows; without one, rows go by position
# Image paths per block, a unit of work for an actor. The driver holds the listing and puts
# the blocks in the object store: measured for 200,000 paths, 256 a block cost it 48 MB, 2048 16 MB.
FILE_BLOCK_ROWS = 2048
LISTING_CHUNK = 65536      # paths gathered as Python strings before they move into Arrow


@dataclass(frozen=True)
class Inputs:
    source: str                                 # files | encoded | raw | series | text
    paths: list[str]                            # parquet files, a glob's matches
    images: object = None                       # files: their paths, a pyarrow array (~100 bytes a path)
    columns: tuple[str, ...] = ()               # parquet: the column(s) the model's input comes from
    id_type: str = "path"                       # path | column (the parquet's id column) | position
    id_arrow_type: object = None                # column: its type (pyarrow), kept in the output
    fmt: ImageFormat | None = None
    raw_shape: tuple[int, int, int] | None = None
    series_shape: tuple[int, int] | None = None
    max_pixels: int = 0
    tokenizer_json: str | None = None
    max_length: int = 0


def find_inputs(data: str, run) -> Inputs:
    """What DATA is, checked against what the run's model takes; a SpecError naming DATA if it does not fit."""
    spec = run.data
    images, paths = _listing(data)
    if images is not None:
        if run.modality != "images":
            raise SpecError(f"{data}: images; a {run.modality} run predicts from parquet with column(s) "
                            f"{', '.join(_columns(run))}")
        return Inputs("files", [], images=images, fmt=_format(run), max_pixels=max_pixels_of(spec))
    schema = _schema(paths, data)
    columns = _columns(run)
    for column in columns:
        if column not in schema.names:
            raise SpecError(f"{data}: no column {column!r}, the run's {_column_key(run)} "
                            f"(columns: {', '.join(schema.names)[:200]})")
    ids = {"id_type": "column", "id_arrow_type": schema.field(ID_COLUMN).type} if ID_COLUMN in schema.names \
        else {"id_type": "position"}
    if run.modality == "text":
        return Inputs("text", paths, columns=columns, **ids, tokenizer_json=run.tokenizer_json,
                      max_length=spec.text.max_length)
    if run.modality == "series":
        return Inputs("series", paths, columns=columns, **ids, series_shape=tuple(run.input_shape))
    source = "encoded" if spec.image_format == "encoded" else "raw"
    return Inputs(source, paths, columns=columns, **ids, fmt=_format(run), raw_shape=spec.image_shape,
                  max_pixels=max_pixels_of(spec))


def _listing(data: str):
    """(image files as a pyarrow array, or None; parquet paths) that DATA names: a glob's matches,
    a file, or what a folder holds at any depth, in the order of their sorted paths (rows without
    an id count through them in this order)."""
    import pyarrow as pa

    path = Path(data).expanduser()
    if any(ch in data for ch in "*?["):
        if not (matches := sorted(glob.glob(str(path)))):
            raise SpecError(f"{data}: no files match")
        return None, matches
    if not path.exists():
        raise SpecError(f"{data}: does not exist")
    if not path.is_dir():
        return None, [str(path)]
    images, chunk, parquet = [], [], []
    for file in _walk(str(path)):
        suffix = os.path.splitext(file)[1].lower()
        if suffix == ".parquet":
            parquet.append(file)
        elif suffix in IMAGE_EXTENSIONS:
            chunk.append(file)
            if len(chunk) == LISTING_CHUNK:
                images.append(pa.array(chunk, pa.string()))
                chunk = []
    images.append(pa.array(chunk, pa.string()))
    count = sum(len(a) for a in images)
    if count and parquet:
        raise SpecError(f"{data}: holds both images and parquet files; give one kind (its own folder, or a "
                        f"glob such as {data}/*.parquet)")
    if not count and not parquet:
        raise SpecError(f"{data}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no parquet files under it")
    return (pa.chunked_array(images, pa.string()) if count else None), parquet


def _walk(folder: str):
    """Every file under `folder` (not following links), in the order of their sorted paths: a
    folder's entries sorted with `/` after folder names, as it follows them in a full path."""
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        elif entry.is_file():
            yield entry.path


def _format(run) -> ImageFormat:
    """The run's input size and channels (its checkpoint's input shape), resized to when the run resized."""
    channels, height, width = run.input_shape
    return ImageFormat(height, width, channels, resize=run.data.target_size is not None)


def _columns(run) -> tuple[str, ...]:
    if run.modality == "text":
        return tuple(run.data.text.columns)
    return (SERIES_COLUMN,) if run.modality == "series" else (run.data.image_column,)


def _column_key(run) -> str:
    return {"text": "data.text.columns", "series": "1-D series column"}.get(run.modality, "data.image_column")


def _schema(paths: list[str], data: str):
    import pyarrow.dataset as pads

    try:
        return pads.dataset(paths, format="parquet").schema
    except arrow_errors() as e:
        raise SpecError(f"{data}: cannot read it as parquet ({first_line(e)})") from None


def prepared_rows(inputs: Inputs):
    """The rows as `prepare_batch` makes them, read lazily (needs a running Ray)."""
    import pyarrow as pa
    import ray.data

    from bigmodel_ray.data.pipeline import batch_rows

    if inputs.source == "files":
        table = pa.table({"path": inputs.images})
        ds = ray.data.from_arrow([table.slice(i, FILE_BLOCK_ROWS) for i in range(0, len(table), FILE_BLOCK_ROWS)])
    else:
        ds = ray.data.read_parquet(inputs.paths, include_paths=True)
        ds = ds.select_columns([*inputs.columns, "path"] + [ID_COLUMN] * (inputs.id_type == "column"))
    # Without the listing: every task receives these arguments.
    kwargs = {"inputs": replace(inputs, paths=[], images=None), "rows": batch_rows(inputs.fmt)}
    return ds.map_batches(prepare_blocks, fn_kwargs=kwargs, batch_size=None, batch_format="numpy")


def prepare_blocks(block: dict[str, np.ndarray], inputs: Inputs, rows: int):
    """`prepare_batch` over a whole block, yielding `rows` rows at a time: a block of large images
    or a big parquet row group never becomes one huge array (as data/pipeline.py's transform_blocks)."""
    for start in range(0, len(block["path"]), rows):
        yield prepare_batch({k: v[start:start + rows] for k, v in block.items()}, inputs)


def prepare_batch(batch: dict[str, np.ndarray], inputs: Inputs) -> dict[str, np.ndarray]:
    """Stored rows -> {"x", "error"} (+ "id": the image path or the id column), one row per stored row."""
    import cv2

    cv2.setNumThreads(1)       # a Ray Data task holds one CPU; OpenCV's own pool would oversubscribe it
    n = len(batch["path"])
    if inputs.source == "text":
        x, errors = _tokens(batch, inputs)
    else:
        x, errors = _arrays(batch, inputs, n)
    out = {"x": x, "error": errors}
    if inputs.id_type != "position":
        out["id"] = batch["path"] if inputs.source == "files" else batch[ID_COLUMN]
    return out


def _arrays(batch, inputs: Inputs, n: int):
    if inputs.source == "series":
        x = np.zeros((n, *inputs.series_shape), np.float32)
    else:
        x = np.zeros((n, inputs.fmt.channels, inputs.fmt.height, inputs.fmt.width), np.uint8)
    errors = np.full(n, "", dtype=object)
    for i in range(n):
        origin = batch["path"][i] if inputs.source == "files" else "row"
        try:
            x[i] = _one(batch, i, inputs, origin)
        except BadRecord as e:
            errors[i] = str(e).removeprefix(f"{origin}: ")
    return x, errors


def _one(batch, i: int, inputs: Inputs, origin: str) -> np.ndarray:
    if inputs.source == "series":
        return _series(batch[inputs.columns[0]][i], inputs.series_shape, origin)
    if inputs.source == "files":
        img = decode(read_file(origin), inputs.fmt, origin, inputs.max_pixels)
    elif inputs.source == "encoded":
        img = decode(batch[inputs.columns[0]][i], inputs.fmt, origin, inputs.max_pixels)
    else:
        img = from_raw(batch[inputs.columns[0]][i], inputs.raw_shape, inputs.fmt, origin)
    return img.transpose(2, 0, 1)          # (H, W, C) -> channels first, as the pipeline hands it on


def _series(value, shape: tuple[int, int], origin: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRecord(f"{origin}: not a list of numbers") from None
    if arr.size != shape[0] * shape[1]:
        raise BadRecord(f"{origin}: {arr.size} values; the run's series have {shape[0] * shape[1]}")
    return arr.reshape(shape)


def _tokens(batch, inputs: Inputs):
    """Token ids exactly as training made them (its join, normalizer, truncation, padding); a row
    with no text is a bad record, as in training."""
    parts = [batch[c] for c in inputs.columns]
    has_text = np.array([any(v is not None and str(v).strip() for v in row) for row in zip(*parts)], bool)
    x = np.zeros((len(has_text), inputs.max_length), np.int32)
    if has_text.any():
        t = TextTransform(columns=inputs.columns, label_column=None, classes=None,
                          tokenizer_json=inputs.tokenizer_json, max_length=inputs.max_length, split_seed=0,
                          keep_share=(0.0, 1.0))          # every row: no split
        rows = {c: batch[c][has_text] for c in (*inputs.columns, "path")}
        rows["row_hash"] = np.zeros(int(has_text.sum()), np.uint64)
        x[has_text] = tokenize_batch(rows, t)["x"]
    return x, np.where(has_text, "", "no text").astype(object)
