"""`bigmodel-ray predict`: a trained run's model over an image folder and parquet on Ray Data,
equal to a plain in-process loop; bad records as the run says; one-line errors, --out kept safe."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from bigmodel_ray.cli import main
from bigmodel_ray.data.synthetic import generate
from bigmodel_ray.runs import result_checkpoint
from bigmodel_ray.train.state import load_model

pytestmark = pytest.mark.usefixtures("ray_cluster")

CLASSES = ("cat", "dog", "emu")
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
COLUMNS = ["id", "predicted", "confidence", "probabilities"]


def _images(n: int, size: int, seed: int = 0):
    return generate(np.arange(n) + seed, size, len(CLASSES), 3, split_seed=0)


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A run trained for one epoch on 20x20 PNGs resized to 16x16 and normalized; bad records skipped."""
    tmp = tmp_path_factory.mktemp("predict")
    images, labels = _images(60, 20)
    for i, (img, label) in enumerate(zip(images, labels)):
        (tmp / "train" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        (tmp / "train" / CLASSES[label] / f"{i:03d}.png").write_bytes(_png(img))
    job = {"name": "folder", "storage": str(tmp / "runs"),
           "data": {"source": "image_folder", "path": str(tmp / "train"), "target_size": [16, 16],
                    "test_fraction": 0.2, "normalize": {"mean": MEAN, "std": STD}, "on_bad_record": "skip"},
           "model": {"name": "cnn2d", "args": {"channels": [8, 16]}},
           "train": {"epochs": 1, "batch_size": 16}, "resources": {"workers": 1}}
    (tmp / "folder.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp / "folder.yaml")]) == 0
    return tmp / "runs" / "folder"


@pytest.fixture
def new_images(tmp_path):
    """24x24 PNGs (resized down by the run) in nested folders that are not class names, and one corrupt file."""
    images, _ = _images(30, 24, seed=1000)
    paths = []
    for i, img in enumerate(images):
        path = tmp_path / "new" / f"batch{i % 2}" / ("deep" if i % 3 else "") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(img))
        paths.append(str(path))
    (tmp_path / "new" / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp_path / "new", sorted(paths), images


def plain_loop(run_dir, images: np.ndarray) -> np.ndarray:
    """The reference: resize (OpenCV, area), scale, normalize, the model, softmax — no Ray."""
    model = load_model(result_checkpoint(run_dir))
    x = np.stack([cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA) for img in images]).astype(np.float32)
    x = (x / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), 1).numpy()


def test_an_image_folder_is_predicted_as_a_plain_loop_predicts_it(image_run, new_images, tmp_path, capsys):
    folder, paths, images = new_images
    out = tmp_path / "predictions.parquet"
    assert main(["predict", str(image_run), str(folder), "--out", str(out), "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "30 predictions" in printed and "skipped 1 bad records" in printed and "broken.png" in printed, printed

    table = pq.read_table(out)
    assert table.column_names == COLUMNS
    assert table.schema.field("probabilities").type == pa.list_(pa.float32())
    rows = table.to_pydict()
    assert rows["id"] == paths                                            # every image under DATA, in path order
    expected = plain_loop(image_run, images[[int(Path(p).stem) for p in paths]])
    assert np.abs(np.array(rows["probabilities"]) - expected).max() < 1e-5
    assert rows["predicted"] == [CLASSES[c] for c in expected.argmax(1)]
    assert np.abs(np.array(rows["confidence"]) - expected.max(1)).max() < 1e-5


def _parquet(path, images, bad_row: int, ids=None):
    column = [_png(img) for img in images]
    column[bad_row] = b"not an image"
    pq.write_table(pa.table({"image": column, **({"id": ids} if ids else {})}), path)
    return path


def test_parquet_rows_go_by_position_and_bad_records_are_skipped_as_the_run_says(image_run, tmp_path, capsys):
    images, _ = _images(12, 24, seed=2000)
    data, out = _parquet(tmp_path / "rows.parquet", images, bad_row=5), tmp_path / "p.parquet"
    assert main(["predict", str(image_run), str(data), "--out", str(out)]) == 0
    rows = pq.read_table(out).to_pydict()
    assert rows["id"] == [i for i in range(12) if i != 5]                 # positions; row 5 skipped
    expected = plain_loop(image_run, np.delete(images, 5, axis=0))
    assert np.abs(np.array(rows["probabilities"]) - expected).max() < 1e-5
    printed = capsys.readouterr().out
    assert "skipped 1 bad records" in printed and "rows.parquet (row 5): cannot decode image" in printed, printed


def test_a_run_that_fails_on_bad_records_stops_and_leaves_out_as_it_was(image_run, tmp_path, capsys):
    failing = tmp_path / "failing"
    shutil.copytree(image_run, failing)
    spec = yaml.safe_load((failing / "spec.yaml").read_text())
    spec["data"]["on_bad_record"] = "fail"
    (failing / "spec.yaml").write_text(yaml.safe_dump(spec))
    data = _parquet(tmp_path / "rows.parquet", _images(12, 24)[0], bad_row=5, ids=[f"r{i}" for i in range(12)])
    out = tmp_path / "p.parquet"
    out.write_bytes(b"the previous predictions")
    assert main(["predict", str(failing), str(data), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rows.parquet (id r5): cannot decode image" in err, err
    assert out.read_bytes() == b"the previous predictions"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []      # no temporary file left


def _unfinished(image_run, tmp_path):
    folder = tmp_path / "unfinished"
    shutil.copytree(image_run, folder)
    (folder / "result.json").unlink()
    return folder


@pytest.mark.parametrize("case, message", [
    ("no run", "{tmp}/nope: no such run folder"),
    ("unfinished run", "{tmp}/unfinished: not a finished run (no result.json with a checkpoint)"),
    ("no data", "{tmp}/missing: does not exist"),
    ("empty folder", "{tmp}/empty: no images (.png"),
    ("images and parquet", "{tmp}/new: holds both images and parquet files"),
    ("parquet without the column", "{tmp}/other.parquet: no column 'image', the run's data.image_column"),
    ("not parquet", "{tmp}/notes.txt: cannot read it as parquet"),
    ("existing out", "{tmp}/out.parquet: --out exists (--overwrite replaces it)"),
    ("out in no folder", "{tmp}/no/out.parquet: --out: no folder {tmp}/no"),
])
def test_a_bad_run_data_or_out_exits_2_with_one_line(image_run, tmp_path, capsys, case, message):
    run, data, out = str(image_run), str(tmp_path / "new"), tmp_path / "fresh.parquet"
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "0.png").write_bytes(_png(_images(1, 20)[0][0]))
    if case == "no run":
        run = str(tmp_path / "nope")
    elif case == "unfinished run":
        run = str(_unfinished(image_run, tmp_path))
    elif case == "no data":
        data = str(tmp_path / "missing")
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        data = str(tmp_path / "empty")
    elif case == "images and parquet":
        pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "new" / "old_predictions.parquet")
    elif case == "parquet without the column":
        pq.write_table(pa.table({"pixels": [b"x"]}), tmp_path / "other.parquet")
        data = str(tmp_path / "other.parquet")
    elif case == "not parquet":
        (tmp_path / "notes.txt").write_text("hello")
        data = str(tmp_path / "notes.txt")
    elif case == "existing out":
        out = tmp_path / "out.parquet"
        out.write_text("keep me")
    else:
        out = tmp_path / "no" / "out.parquet"
    assert main(["predict", run, data, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(tmp=tmp_path) in err, err
    if case == "existing out":
        assert out.read_text() == "keep me"


@pytest.mark.long
@pytest.mark.slow
def test_a_text_run_predicts_with_its_own_tokenizer(reviews_subset, tmp_path, capsys):
    from tokenizers import Tokenizer

    job = {"name": "text", "storage": str(tmp_path / "runs"),
           "data": {"source": "text", "path": str(reviews_subset), "label_column": "Department Name",
                    "on_bad_record": "skip", "text": {"columns": ["Title", "Review Text"], "vocab_size": 1000,
                                                      "max_length": 32}},
           "model": {"name": "text_transformer", "args": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
           "train": {"epochs": 1, "batch_size": 64}, "resources": {"workers": 1}}
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "text.yaml")]) == 0
    run = tmp_path / "runs" / "text"
    reviews = pq.read_table(reviews_subset).slice(0, 200)
    pq.write_table(reviews, tmp_path / "new.parquet")
    out = tmp_path / "p.parquet"
    assert main(["predict", str(run), str(tmp_path / "new.parquet"), "--out", str(out), "--batch-size", "50"]) == 0
    rows = pq.read_table(out).to_pydict()

    # The reference: the run's tokenizer on the joined columns, padded, trimmed per batch of 50.
    tokenizer, model = Tokenizer.from_file(str(run / "tokenizer.json")), load_model(result_checkpoint(run))
    texts = ["\n".join(str(v).strip() for v in row if v is not None and str(v).strip())
             for row in zip(*(reviews[c].to_pylist() for c in ("Title", "Review Text")))]
    kept = [i for i, text in enumerate(texts) if text]
    assert rows["id"] == kept
    probs = []
    for start in range(0, len(texts), 50):
        batch = [texts[i] for i in range(start, min(start + 50, len(texts))) if texts[i]]
        ids = [e.ids for e in tokenizer.encode_batch(batch)]
        x = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for i, row in enumerate(ids):
            x[i, :len(row)] = torch.tensor(row)
        with torch.no_grad():
            probs.append(torch.softmax(model(x), 1).numpy())
    expected = np.concatenate(probs)
    assert np.abs(np.array(rows["probabilities"]) - expected).max() < 1e-5
    classes = sorted(set(pq.read_table(reviews_subset)["Department Name"].to_pylist()) - {None})
    assert rows["predicted"] == [classes[c] for c in expected.argmax(1)]


@pytest.mark.slow
def test_a_series_run_predicts_float_lists(tiny_job, tmp_path):
    from bigmodel_ray.data.builtin import load_mnist1d

    job = tiny_job("series", train={"epochs": 1}, resources={"workers": 1})
    assert main(["run", str(job)]) == 0
    run = tmp_path / "runs" / "series"
    x = load_mnist1d(0.1, 0.15, 0)["test"][0][:100]                       # (100, 1, 40) float32
    pq.write_table(pa.table({"x": [row[0].tolist() for row in x]}), tmp_path / "series.parquet")
    out = tmp_path / "p.parquet"
    assert main(["predict", str(run), str(tmp_path / "series.parquet"), "--out", str(out)]) == 0
    rows = pq.read_table(out).to_pydict()
    with torch.no_grad():
        expected = torch.softmax(load_model(result_checkpoint(run))(torch.from_numpy(x)), 1).numpy()
    assert rows["id"] == list(range(100)) and rows["predicted"] == expected.argmax(1).tolist()
    assert np.abs(np.array(rows["probabilities"]) - expected).max() < 1e-5
