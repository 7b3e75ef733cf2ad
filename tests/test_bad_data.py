"""Bad data: every bad record goes through `data.on_bad_record`, a file that cannot be read is a
one-line error naming it, and inputs are bounded (pixels checked from the header before decoding).

Record-level checks run on real bytes and files without Ray; one test goes through Ray Data."""

import json
import re
import struct
import zlib

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigmodel_ray.data.images import BadRecord, ImageFormat, decode, from_raw
from bigmodel_ray.data.labels import class_ids
from bigmodel_ray.data.parquet import open_parquet
from bigmodel_ray.data.pipeline import Transform, transform_batch
from bigmodel_ray.data.sources import DataError, open_image_folder
from bigmodel_ray.spec import DataSpec

FMT = ImageFormat(4, 4, 3)


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _png_bomb(width: int, height: int) -> bytes:
    """A real grayscale PNG of zeros (height a multiple of 100): width x height bytes decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, rows = zlib.compressobj(1), b"\0" * (width + 1) * 100     # a filter byte + zeros, per row
    idat = b"".join(packer.compress(rows) for _ in range(height // 100)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _batch(images, labels, **extra):
    n = len(labels)
    return {"img": np.array(images, dtype=object), "cls": np.array(labels, dtype=object),
            "path": np.array(["f.parquet"] * n, dtype=object), "row_hash": np.arange(n, dtype=np.uint64), **extra}


def _transform(storage="encoded", skip=True, **kw):
    return Transform(storage=storage, fmt=FMT, image_column="img", label_column="cls", skip_bad=skip,
                     raw_shape=(4, 4, 3), num_classes=3, **kw)


# ---------------------------------------------------------------------------- records

def test_image_column_holding_str_or_int_is_a_bad_record():
    good = _png(np.full((4, 4, 3), 7, np.uint8))
    out = transform_batch(_batch([good, "abc", 7, good], [0, 1, 2, 1]), _transform())
    assert out["x"].shape == (2, 3, 4, 4) and list(out["y"]) == [0, 1]
    with pytest.raises(BadRecord, match=r"^f\.parquet \(row_hash 1\): the image column holds str"):
        transform_batch(_batch([good, "abc"], [0, 1]), _transform(skip=False))
    for value in ("abc", 7):
        with pytest.raises(BadRecord, match="not raw pixels"):
            from_raw(value, (4, 4, 3), FMT, "r")


def test_raw_pixels_of_other_channels_sizes_or_range_are_bad_records():
    ok = np.arange(48).reshape(4, 4, 3)                     # int64 whole numbers in range: exact pixels
    np.testing.assert_array_equal(from_raw(ok, (4, 4, 3), FMT, "r"), ok.astype(np.uint8))
    cases = {"shape [4, 4, 4], image_shape is [4, 4, 3]": np.zeros((4, 4, 4), np.uint8),     # RGBA
             "shape [4, 4, 2]": np.zeros((4, 4, 2), np.uint8),
             "shape [4, 3, 4]": np.zeros((4, 3, 4), np.uint8),                              # same size, other layout
             "shape [47]": bytes(47),
             "found 0..300": np.r_[np.zeros(47, int), 300],                                  # would wrap to 44
             "found -1..0": np.r_[np.zeros(47, int), -1],
             "found 0.0..0.5": np.r_[np.zeros(47), 0.5],
             "not an array of pixels": [[1, 2], [3]]}
    for message, value in cases.items():
        with pytest.raises(BadRecord, match=re.escape(message)):
            from_raw(value, (4, 4, 3), FMT, "r")
    batch = _batch([ok.ravel(), np.r_[np.zeros(47, int), 300], bytes(47), bytes(48)], [0, 1, 2, 0])
    assert list(transform_batch(batch, _transform("raw"))["y"]) == [0, 0]      # 2 of 4 skipped


def test_labels_missing_not_integers_or_outside_the_classes_are_bad_records():
    ids, problems = class_ids(np.array([0, 2, 3, -1], np.int32), 3)
    assert list(ids) == [0, 2, -1, -1] and problems == {2: "label 3 is not a class id (0..2)",
                                                        3: "label -1 is not a class id (0..2)"}
    ids, problems = class_ids(np.array([1.0, np.nan, 2.5]), 3)                # a nullable int column, as numpy
    assert list(ids) == [1, -1, -1] and problems[1] == "no label" and "not an integer" in problems[2]
    image = _png(np.zeros((4, 4, 3), np.uint8))
    batch = _batch([image] * 6, [0, None, "1", 3, -1, 2])
    assert list(transform_batch(batch, _transform())["y"]) == [0, 2]
    with pytest.raises(BadRecord, match=r"\(row_hash 1\): no label"):
        transform_batch(batch, _transform(skip=False))
    with pytest.raises(BadRecord, match=r"\(row_hash 1\): label 3 is not a class id \(0\.\.2\)"):
        transform_batch(_batch([image] * 2, [0, 3]), _transform(skip=False))


def test_decompression_bomb_is_refused_from_its_header_before_decoding():
    bomb = _png_bomb(10_000, 8_000)                            # 80 M pixels: ~80 MB once decoded
    assert len(bomb) < 400_000
    with pytest.raises(BadRecord, match=r"10000x8000 = 80,000,000 pixels, more than data.max_image_pixels "
                                        r"\(64,000,000\)"):
        decode(bomb, FMT, "bomb.png")
    small = _png(np.zeros((4, 4, 3), np.uint8))
    assert decode(small, FMT, "s.png", max_pixels=16).shape == (4, 4, 3)
    with pytest.raises(BadRecord, match="more than data.max_image_pixels"):
        decode(small, FMT, "s.png", max_pixels=15)
    out = transform_batch(_batch([bomb, small], [0, 1]), _transform())
    assert list(out["y"]) == [1]                               # skipped as a bad record


# ---------------------------------------------------------------------------- whole files

def _write(path, images, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"img": images, "cls": labels}), path)


def _spec(path, **kw):
    return DataSpec(source="parquet", path=str(path), image_column="img", label_column="cls", **kw)


def test_unreadable_parquet_files_and_dataset_json_are_errors_naming_them(tmp_path):
    good = [_png(np.zeros((4, 4, 3), np.uint8))] * 2
    _write(tmp_path / "pq" / "a.parquet", good, pa.array([0, 1], pa.int32()))
    (tmp_path / "pq" / "b.parquet").write_bytes(b"PAR1 not really PAR1")
    for skip in ("fail", "skip"):            # a whole file is not a record: skip does not pass over it
        with pytest.raises(DataError, match=r"^cannot read parquet file .*pq/b\.parquet: "):
            open_parquet(_spec(tmp_path / "pq", on_bad_record=skip))
    _write(tmp_path / "pq" / "b.parquet", good, pa.array(["x", "y"]))      # readable, but string labels
    with pytest.raises(DataError, match=r"'cls' in .*pq/b\.parquet is string, not integer class ids") as e:
        open_parquet(_spec(tmp_path / "pq"))
    assert e.value.field == "label_column"
    (tmp_path / "pq" / "b.parquet").unlink()
    (tmp_path / "pq" / "dataset.json").write_text('{"classes": ["a", "b"')
    with pytest.raises(DataError, match=r"pq/dataset\.json: cannot read it as JSON"):
        open_parquet(_spec(tmp_path / "pq"))
    (tmp_path / "pq" / "dataset.json").write_text(json.dumps({"classes": "ab"}))
    with pytest.raises(DataError, match=r"dataset\.json: needs \"classes\", a list of class names"):
        open_parquet(_spec(tmp_path / "pq"))


def test_a_bad_first_image_fails_naming_it_or_is_passed_over_with_skip(tmp_path):
    from bigmodel_ray.data.parquet import _first_parquet_image

    good = _png(np.zeros((5, 4, 3), np.uint8))
    _write(tmp_path / "pq" / "a.parquet", [b"garbage", good], pa.array([0, 1]))
    layout = {"all": str(tmp_path / "pq")}
    with pytest.raises(DataError, match=r"a\.parquet \(row 0\): cannot decode image \(7 bytes\) "
                                        r"\(data\.on_bad_record: skip drops such records\)"):
        _first_parquet_image(layout, _spec(tmp_path / "pq"))
    assert _first_parquet_image(layout, _spec(tmp_path / "pq", on_bad_record="skip")).shape == (5, 4, 3)
    _write(tmp_path / "pq" / "a.parquet", [b"garbage"], pa.array([0]))
    with pytest.raises(DataError, match=r"none of the first 1 images can be used, e\.g\. .*cannot decode"):
        _first_parquet_image(layout, _spec(tmp_path / "pq", on_bad_record="skip"))

    folder = tmp_path / "imgs"                 # split folders: the broken file stays the first listed
    for name in ("a", "b"):
        (folder / "train" / name).mkdir(parents=True)
        cv2.imwrite(str(folder / "train" / name / "1.png"), np.zeros((4, 4, 3), np.uint8))
    (folder / "val").mkdir()
    (folder / "test").mkdir()
    (folder / "train" / "a" / "0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"a/0\.png: cannot decode image \(6 bytes\)"):
        open_image_folder(DataSpec(source="image_folder", path=str(folder)))


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    for name in ("cat", "dog", "emu"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
    for name in ("cat", "emu"):
        cv2.imwrite(str(tmp_path / "imgs" / name / "1.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*imgs/dog has no images \(\.png"):
        open_image_folder(DataSpec(source="image_folder", path=str(tmp_path / "imgs")))


# ---------------------------------------------------------------------------- through Ray Data

@pytest.mark.usefixtures("ray_cluster")
def test_bad_records_in_parquet_are_skipped_and_counted_or_stop_the_run(tmp_path):
    import ray

    from bigmodel_ray.data import load_data
    from bigmodel_ray.data.images import bad_record_in
    from bigmodel_ray.data.pipeline import start_state

    pixels = [list(range(i, i + 48)) for i in range(6)]
    pixels[2] = [300] * 48                                            # out of 0..255
    pixels[4] = list(range(36))                                       # wrong size
    _write(tmp_path / "pq" / "train" / "a.parquet", pixels, pa.array([0, 1, 2, None, 1, 5], pa.int64()))
    _write(tmp_path / "pq" / "train" / "b.parquet", [list(range(48))] * 2, pa.array([1, 2], pa.int64()))
    (tmp_path / "pq" / "val").mkdir()
    (tmp_path / "pq" / "test").mkdir()
    (tmp_path / "pq" / "dataset.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    spec = _spec(tmp_path / "pq", image_format="raw", image_shape=(4, 4, 3), on_bad_record="skip")
    state = start_state()
    data = load_data(spec, state=state)
    rows = sum((ds.take_all() for ds in data.datasets.values()), [])
    assert data.num_classes == 3 and sorted(int(r["y"]) for r in rows) == [0, 1, 1, 2]
    count, examples = ray.get(state.skipped_report.remote())
    assert count == 4, examples                                       # 300, None, wrong size, label 5
    with pytest.raises(Exception) as e:
        for ds in load_data(spec.model_copy(update={"on_bad_record": "fail"})).datasets.values():
            ds.take_all()
    assert "a.parquet (row_hash" in bad_record_in(e.value)
