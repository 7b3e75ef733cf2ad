"""A finished run as `predict` needs it: its model's checkpoint, the `data` section that says how
its inputs were prepared, its input shape and its class names."""

import json
from dataclasses import dataclass
from pathlib import Path

from bigmodel_ray import runs
from bigmodel_ray.data.text import TOKENIZER_FILE, source_path
from bigmodel_ray.errors import SpecError
from bigmodel_ray.models import is_language_model
from bigmodel_ray.spec import DataSpec, validate_section
from bigmodel_ray.spec.yaml_input import BadYAML, read_yaml
from bigmodel_ray.train.state import load_classifier, read_state

KINDS = ("train", "transfer")      # runs whose result.json names one classifier's checkpoint


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    checkpoint: Path
    data: DataSpec                      # the run's data section
    input_shape: tuple[int, ...]        # (C, H, W) images, (C, L) series, (max_length,) token ids
    num_classes: int
    class_names: list[str] | None       # None: predictions are class ids
    tokenizer_json: str | None = None   # text runs: the tokenizer kept in the run folder

    @property
    def modality(self) -> str:
        if self.data.text is not None:
            return "text"
        return "series" if len(self.input_shape) == 2 else "images"


def read_run_job(folder: Path) -> dict:
    """The run folder's spec.yaml, as a mapping (not validated)."""
    spec_file = folder / runs.SPEC_FILE
    try:
        job = read_yaml(spec_file)
    except (OSError, BadYAML) as e:
        raise SpecError(f"{spec_file}: not a run folder's spec ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(job, dict):
        raise SpecError(f"{spec_file}: not a run folder's spec (a mapping of sections)")
    return job


def read_run_data(folder: Path) -> DataSpec:
    """The run's data section, validated."""
    return validate_section(DataSpec, read_run_job(folder).get("data"), str(folder / runs.SPEC_FILE), "data")


def open_run(folder: Path) -> TrainedRun:
    """The run in `folder`, its model loaded once here so that a checkpoint that is not one
    classifier is refused in one line before Ray starts."""
    if not folder.is_dir():
        raise SpecError(f"{folder}: no such run folder")
    job, spec_file = read_run_job(folder), folder / runs.SPEC_FILE
    if job.get("search"):
        raise SpecError(f"{folder}: a sweep; predict takes one run (run the sweep's best.yaml for one)")
    if job.get("kind", "train") not in KINDS:
        raise SpecError(f"{folder}: a {job.get('kind')} run; predict takes a train or transfer run")
    if not runs.finished(folder):
        raise SpecError(f"{folder}: not a finished run (no result.json with a checkpoint)")
    if not isinstance(job.get("data"), dict):
        raise SpecError(f"{folder}: a run without a data section (an rl run: `bigmodel-ray rollout` plays its policy)")
    if isinstance(job["data"].get("interactions"), dict):
        raise SpecError(f"{folder}: a recommender run: `bigmodel-ray recommend RUN --user ID` lists a user's top items")
    checkpoint = runs.result_checkpoint(folder)
    data = validate_section(DataSpec, job.get("data"), str(spec_file), "data")
    model = load_classifier(checkpoint, str(folder))
    if is_language_model(model):
        raise SpecError(f"{folder}: a language model run: `bigmodel-ray generate` continues text with it")
    meta = read_state(checkpoint)["meta"]
    tokenizer = None
    if data.text is not None:
        try:
            tokenizer = (folder / TOKENIZER_FILE).read_text()
        except OSError as e:
            raise SpecError(f"{folder / TOKENIZER_FILE}: the run's tokenizer cannot be read ({e.strerror})") from None
    kept = meta.get("class_names")           # recorded by training; older runs: found from the data
    names = kept if isinstance(kept, list) and len(kept) == meta["num_classes"] else class_names(data, meta["num_classes"])
    return TrainedRun(folder, checkpoint, data, tuple(meta["input_shape"]), meta["num_classes"],
                      [str(n) for n in names] if names else None, tokenizer)


def class_names(data, num_classes: int) -> list[str] | None:
    """The names training gave the classes, found again from the run's data (for runs whose
    checkpoint does not record them): an image folder's sorted class folders, a parquet folder's dataset.json, a
    text source's sorted string labels. None where the data is gone or gives another count."""
    try:
        names = _names(data)
    except (OSError, ValueError, KeyError, TypeError):       # ValueError: also pyarrow's and DataError
        return None
    return names if names is not None and len(names) == num_classes else None


def _names(data) -> list[str] | None:
    if data.source == "image_folder":      # as data/sources.py lists them
        root = Path(data.path).expanduser()
        root = root / "train" if (root / "train").is_dir() else root
        return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if data.source == "parquet" and "://" not in data.path:
        info = json.loads((Path(data.path).expanduser() / "dataset.json").read_text())
        return [str(name) for name in info["classes"]] if isinstance(info, dict) else None
    if data.text is not None and data.label_column:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        labels = pads.dataset(source_path(data), format="parquet").to_table(columns=[data.label_column]).column(0)
        if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
            return sorted(v for v in pc.unique(labels).to_pylist() if v is not None)
    return None
