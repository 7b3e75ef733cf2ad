"""Run folders: where a job's run lives, whether a rerun may resume it, and what it leaves.

`<storage>/<name>/` holds `spec.yaml` (the resolved job), `metrics.jsonl` (one line per epoch),
checkpoints and `result.json` (the summary). Files the user reads are replaced atomically, so a
killed run never leaves half a file behind.
"""

import json
from pathlib import Path

import yaml

from bigmodel_ray.errors import SpecError
from bigmodel_ray.storage import RunFolder, run_folder

RESULT_FILE, SPEC_FILE, METRICS_FILE = "result.json", "spec.yaml", "metrics.jsonl"


def unfinished(folder) -> str:
    """What commands that need a finished run say of a run folder without its result yet."""
    return f"{folder}: the run has not finished (no {RESULT_FILE} with a checkpoint): rerun its job to finish it"


# Sections that change where results are also sent, never what a run computes: not compared on resume.
NOT_COMPARED = frozenset({"tracking"})


def folder_of(spec) -> RunFolder:
    """Where the job's run lives (storage.py): its local folder, or its mirror and URI."""
    return run_folder(spec.storage, spec.name, spec.storage_options)


def run_dir_of(spec, source: str) -> Path:
    """The job's run folder to work in: for a run in object storage, its local mirror, made a
    copy of what is stored (so a run resumes on any machine)."""
    folder = folder_of(spec)
    try:
        folder.pull()
    except SpecError as e:
        raise SpecError(f"{source}: {e}" if source else str(e)) from None
    return folder.local


def check_same_job(run_dir: Path, spec, source: str, keys=("model", "data", "seed"), what="run") -> None:
    """Resuming is only sound for the same job (the `keys` sections); refuse rather than mix runs."""
    old_file = run_dir / SPEC_FILE
    if not old_file.exists():
        return
    old = yaml.safe_load(old_file.read_text()) or {}
    new = spec.model_dump(mode="json")
    for key in (k for k in keys if k not in NOT_COMPARED):
        if _with_defaults(old.get(key), getattr(spec, key)) != new[key]:
            raise SpecError(f"{source}: {key}: differs from the {what} in {run_dir} that this job would resume; "
                            f"use another name (--set name=...)")
    done = epochs_logged(run_dir)
    if spec.train is not None and spec.train.epochs < done:      # it would train nothing, yet relabel the run
        raise SpecError(f"{source}: train.epochs: {spec.train.epochs} is fewer than the {done} epochs the {what} in "
                        f"{run_dir} has trained; use another name (--set name=...) or train.epochs >= {done}")


def _with_defaults(old, section):
    """A section as an earlier version wrote it, with the fields added since at their defaults
    (they did what the default does), so that a run made before them still resumes."""
    if not isinstance(old, dict) or not hasattr(section, "model_validate"):
        return old
    try:
        return type(section).model_validate(old).model_dump(mode="json")
    except ValueError:          # pydantic's ValidationError: it is not the same section any more
        return old


def read_epoch_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epochs_logged(run_dir: Path) -> int:
    return max((r["epoch"] for r in read_epoch_log(run_dir)), default=0)


def finished(run_dir: Path, epochs: int | None = None) -> bool:
    """Whether `run_dir` holds a finished run (of `epochs` epochs, when given)."""
    try:
        result = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return False
    trained = epochs is None or result.get("epochs") == epochs or result.get("stopped_early") is True
    return bool(result.get("checkpoint")) and trained


def result_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run's result.json names (its model), never outside the run
    folder: result.json is data, and must not point a loader at files elsewhere. A run folder
    moved since keeps working (the checkpoint is then looked up by its name inside it)."""
    result_file = Path(run_dir) / RESULT_FILE
    try:
        recorded = json.loads(result_file.read_text())["checkpoint"]
        recorded = Path(recorded)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{result_file}: checkpoint: not a finished run's result ({type(e).__name__})") from None
    home = Path(run_dir).resolve()
    for candidate in (recorded, home / recorded.name):
        if candidate.resolve().is_relative_to(home) and candidate.name not in ("", ".", "..") and candidate.exists():
            return candidate.resolve()
    raise SpecError(f"{result_file}: checkpoint: {str(recorded)[:200]} is not a checkpoint inside {home}")


def write_result(run_dir: Path, summary: dict) -> None:
    write_atomic(run_dir / RESULT_FILE, json.dumps(summary, indent=2, default=str) + "\n")


def write_spec(run_dir: Path, text: str) -> None:
    write_atomic(run_dir / SPEC_FILE, text)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
