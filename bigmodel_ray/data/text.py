"""Text sources: rows of one or more text columns and a label, tokenized in Ray Data tasks.

`data.source: text` reads parquet at `path` (a file, folder or glob); `reviews` is the real
e-commerce reviews set (`bigmodel-ray data fetch reviews`). Rows are split by a seeded hash of
their key, like parquet images. The tokenizer (Hugging Face `tokenizers`: BPE or WordPiece) is
trained on the train split's text, streamed through Ray Data, once per data and tokenizer
settings: it is cached under that key and kept in the run folder (`tokenizer.json`), so a
resumed run tokenizes exactly as before.

Rows leave the pipeline as `x`: int32 (max_length,) token ids, [CLS] first, padded with [PAD]
(id 0); the worker trims each batch to its longest row (train/inputs.py), so a batch of short
reviews costs what its own rows need, not max_length. Labels are integer classes, or strings
mapped to their index among the sorted class names. A row with no text, or with no label, is a
bad record (`data.on_bad_record`).

A language model's text (`train.task: lm`) has no labels: `y` is then the number of characters
the row's kept tokens cover, so that evaluation can report bits per character of exactly the
text the model saw; gzip's bits per character on the same test text come with the data.
"""

import functools
import gzip
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from bigmodel_ray.data.bundle import DataBundle
from bigmodel_ray.data.images import BadRecord
from bigmodel_ray.data.labels import class_id
from bigmodel_ray.data.parquet import read_files
from bigmodel_ray.data.pipeline import in_split
from bigmodel_ray.data.sources import SPLITS, DataError
from bigmodel_ray.data.splits import SplitRows, rows_of_split, split_counts, text_splits
from bigmodel_ray.storage import cache_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]     # ids 0..4, in this order
PAD_ID, CLS_ID = 0, 2
TOKENIZER_FILE = "tokenizer.json"
READ_ROWS = 4096


@dataclass(frozen=True)
class TextTransform:
    columns: tuple[str, ...]
    label_column: str | None                # None: a language model's text (y = characters covered)
    classes: tuple[str, ...] | None         # string labels: the sorted class names; None: integers
    tokenizer_json: str
    max_length: int
    split_seed: int
    keep_share: tuple[float, float]
    skip_bad: bool = False
    num_classes: int | None = None          # integer labels must be in [0, num_classes)


def source_path(spec) -> str:
    if spec.source == "reviews":
        from bigmodel_ray.data.fetch import path_of

        return str(path_of("reviews"))
    return spec.path


def load_text(spec, state=None, task: str = "classify") -> DataBundle:
    """The job's text splits as Ray Datasets of token ids (needs a running Ray)."""

    path = source_path(spec)
    columns = list(spec.text.columns)
    label = spec.label_column if task != "lm" else None
    classes, rows = _labels_and_rows(path, columns, label)
    counts = None
    if spec.split_column:
        import pyarrow.dataset as pads

        counts = read_files(pads.dataset(path, format="parquet"), lambda d: split_counts(d, spec.split_column, path), path)
    splits = text_splits(spec, rows["total"], counts)
    tokenizer_json = tokenizer_for(spec, path, splits["train"])
    base = dict(columns=tuple(columns), label_column=label, classes=classes,
                tokenizer_json=tokenizer_json, max_length=spec.text.max_length, split_seed=spec.split_seed,
                skip_bad=spec.on_bad_record == "skip", num_classes=rows["max_label"] + 1 if label and classes is None else None)
    datasets = {}
    for name in SPLITS:
        t = TextTransform(keep_share=splits[name].share, **base)
        datasets[name] = _read_split(path, columns + [label] * (label is not None), splits[name], spec.split_column).map_batches(
            tokenize_batch, fn_kwargs={"t": t, "state": state}, batch_format="numpy", batch_size=None)
    if label is None:     # the "classes" of a language model are its vocabulary
        num_classes = _loaded(tokenizer_json).get_vocab_size()
        reference = held_out_gzip(path, base, splits["test"], spec.split_column)
    else:
        num_classes, reference = len(classes) if classes is not None else rows["max_label"] + 1, {}
    return DataBundle(datasets=datasets, rows={name: split.rows for name, split in splits.items()},
                      input_shape=(spec.text.max_length,), num_classes=num_classes,
                      class_names=list(classes) if classes is not None else None, has_tasks=True,
                      device_augment=None, artifacts={TOKENIZER_FILE: tokenizer_json}, reference=reference)


def held_out_gzip(path: str, base: dict, test: SplitRows, split_column: str | None) -> dict[str, float]:
    """gzip -9's bits per character on the test split's text, as much of each row as its kept
    tokens cover (what a language model of the run is scored on), rows in one stream."""
    t = TextTransform(keep_share=test.share, **base)
    tokenizer, kept = _loaded(t.tokenizer_json), []
    for batch in _read_split(path, list(t.columns), test, split_column).iter_batches(batch_size=READ_ROWS,
                                                                                    batch_format="numpy"):
        texts = [text for text in _texts(batch, t)[0] if text]
        kept += [text[:_covered(e)] for text, e in zip(texts, tokenizer.encode_batch(texts))]
    chars = sum(map(len, kept))
    packed = gzip.compress("\n".join(kept).encode(), compresslevel=9)
    return {"test_gzip_bpc": 8 * len(packed) / max(chars, 1), "test_chars": chars}


def _covered(encoding) -> int:
    """Characters of the text that an encoding's tokens cover (all of it unless truncated)."""
    return max((end for _, end in encoding.offsets), default=0)


def _read_split(path: str, columns: list[str], split: SplitRows, split_column: str | None):
    if split.values is None:
        return _read(path, columns)
    return _read(path, columns + [split_column]).map_batches(
        rows_of_split, fn_kwargs={"column": split_column, "values": split.values}, batch_format="pyarrow", batch_size=None)


def _read(path: str, columns: list[str]):
    import ray.data

    return ray.data.read_parquet(path, columns=columns, include_paths=True, include_row_hash=True)


def _labels_and_rows(path: str, columns: list[str], label_column: str | None):
    """Sorted class names (string labels) or None, and the row count and largest integer label:
    from the label column alone (one narrow read on the driver). No label column: the row count."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    try:
        ds = pads.dataset(path, format="parquet")
    except (OSError, ValueError) as e:
        raise DataError("path", f"cannot read parquet at {path}: {e}") from None
    names = ds.schema.names
    for key, column in [("text.columns", c) for c in columns] + [("label_column", label_column)] * bool(label_column):
        if column not in names:
            raise DataError(key, f"column {column!r} is not in {path} (columns: {', '.join(names)})")
    if label_column is None:
        return None, {"total": read_files(ds, lambda d: d.count_rows(), path), "max_label": 0}
    labels = read_files(ds, lambda d: d.to_table(columns=[label_column]).column(0), path)
    rows = {"total": len(labels), "max_label": 0}
    if pa.types.is_integer(labels.type):
        rows["max_label"] = int(pc.max(labels).as_py() or 0)
        if (pc.min(labels).as_py() or 0) < 0:
            raise DataError("label_column", f"column {label_column!r} has negative classes")
        return None, rows
    if not (pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type)):
        raise DataError("label_column", f"column {label_column!r} is {labels.type}, not integer or string classes")
    return tuple(sorted(v for v in pc.unique(labels).to_pylist() if v is not None)), rows


def tokenizer_for(spec, path: str, train: SplitRows) -> str:
    """The tokenizer trained on the train split's text (as JSON), from the cache when it was trained before."""
    from pathlib import Path

    t = spec.text
    if t.tokenizer_file is not None:
        return _given_tokenizer(t)
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(_files(Path(path)))]
    # Not the labels: a classifier and a language model of the same text share one tokenizer.
    key = json.dumps([stamp, t.model_dump(mode="json"), spec.split_seed, spec.val_fraction,
                      spec.test_fraction] + [spec.split_column] * bool(spec.split_column), sort_keys=True)
    cached = cache_dir() / "tokenizers" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cached.exists():
        return cached.read_text()
    tokenizer = new_tokenizer(t.tokenizer, t.lowercase, t.max_length)
    trainer = _trainer(t.tokenizer, t.vocab_size)
    probe = TextTransform(columns=tuple(t.columns), label_column=None, classes=None, tokenizer_json="",
                          max_length=t.max_length, split_seed=spec.split_seed, keep_share=train.share, skip_bad=True)
    texts = (text for batch in _read_split(path, list(t.columns), train, spec.split_column).iter_batches(
        batch_size=READ_ROWS, batch_format="numpy") for text in _texts(batch, probe)[0] if text)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(tokenizer.to_str())
    tmp.replace(cached)
    return cached.read_text()


def _given_tokenizer(t) -> str:
    from pathlib import Path

    from tokenizers import Tokenizer

    path = Path(t.tokenizer_file).expanduser()
    try:
        if path.is_dir() and not (path / TOKENIZER_FILE).exists():     # a Hugging Face folder with vocab.txt & co
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True).backend_tokenizer
        else:
            tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE if path.is_dir() else path))
    except Exception as e:      # tokenizers raises its own Exception for a missing or malformed file
        raise DataError("text.tokenizer_file", f"cannot load {path} as a tokenizer: {str(e)[:200]}") from None
    if tokenizer.token_to_id(SPECIAL_TOKENS[PAD_ID]) != PAD_ID:
        raise DataError("text.tokenizer_file", f"{path}: [PAD] is not id 0 (rows are padded with id 0)")
    if tokenizer.get_vocab_size() > t.vocab_size:
        raise DataError("text.tokenizer_file", f"{path} has {tokenizer.get_vocab_size()} tokens, more than "
                                               f"text.vocab_size {t.vocab_size}")
    tokenizer.enable_truncation(t.max_length)
    return tokenizer.to_str()


def new_tokenizer(kind: str, lowercase: bool, max_length: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if kind == "bpe":      # byte-level BPE (GPT-2's): every string has a tokenization, no [UNK]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", CLS_ID)])
    tok.enable_truncation(max_length)
    return tok


def _trainer(kind: str, vocab_size: int):
    from tokenizers import pre_tokenizers, trainers

    if kind == "bpe":
        return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)


@functools.lru_cache(maxsize=4)
def _loaded(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def _texts(batch, t: TextTransform):
    """The joined text of the batch's rows in this split, their keys, and their origins."""
    key = batch["row_hash"].astype(np.uint64)
    keep = in_split(key, t)
    parts = [batch[c][keep] for c in t.columns]
    texts = ["\n".join(str(v).strip() for v in row if v is not None and str(v).strip()) for row in zip(*parts)]
    return texts, key[keep], keep


def tokenize_batch(batch: dict[str, np.ndarray], t: TextTransform, state=None) -> dict[str, np.ndarray]:
    """Stored rows -> {"x": int32 (n, max_length) token ids, "y": int64} for this split's rows."""
    texts, key, keep = _texts(batch, t)
    labels = batch[t.label_column][keep] if t.label_column else [0] * len(texts)
    paths = batch["path"][keep]
    ok, y, bad = np.ones(len(texts), bool), np.zeros(len(texts), np.int64), []
    index = {name: i for i, name in enumerate(t.classes)} if t.classes is not None else None
    for i, (text, label) in enumerate(zip(texts, labels)):
        problem = "no text" if not text else "no label" if label is None or label != label else None
        if problem is None and index is not None:
            y[i] = index.get(label, -1)
        elif problem is None:
            y[i], problem = class_id(label, t.num_classes)
        if problem or y[i] < 0:
            origin = f"{paths[i]} (row_hash {key[i]})"
            if not t.skip_bad:
                raise BadRecord(f"{origin}: {problem or f'label {label!r} is not a known class'}")
            ok[i] = False
            bad.append((origin, problem or "unknown label"))
    if bad and state is not None:
        import ray

        ray.get(state.record_skipped.remote(bad))
    encoded = _loaded(t.tokenizer_json).encode_batch([text for text, good in zip(texts, ok) if good])
    x = np.zeros((len(encoded), t.max_length), np.int32)        # [PAD] = 0
    for i, e in enumerate(encoded):
        x[i, :len(e.ids)] = e.ids
    if t.label_column is None:
        return {"x": x, "y": np.array([_covered(e) for e in encoded], np.int64)}
    return {"x": x, "y": y[ok]}


def _files(path):
    if path.is_file():
        return [path]
    if path.is_dir():
        return list(path.rglob("*.parquet"))
    import glob

    return [type(path)(p) for p in glob.glob(str(path), recursive=True)]      # a glob such as data/*.parquet
