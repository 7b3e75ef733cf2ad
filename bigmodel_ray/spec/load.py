"""Reading a job: bounded YAML (yaml_input.py), `--set` overrides, validation, one-line errors."""

from pathlib import Path

from pydantic import BaseModel, ValidationError

from bigmodel_ray.errors import SpecError
from bigmodel_ray.spec.job import JobSpec, without_search
from bigmodel_ray.spec.messages import describe, one_line
from bigmodel_ray.spec.overrides import apply_overrides
from bigmodel_ray.spec.runs import with_run_sections
from bigmodel_ray.spec.space import check_space
from bigmodel_ray.spec.yaml_input import BadYAML, read_yaml


def load_job(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read, override (`key.path=value`, value parsed as YAML) and validate a job file."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror or e})") from None
    except BadYAML as e:
        raise SpecError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: must be a YAML mapping of sections (got {type(raw).__name__})")
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides, path)
    return validate(raw, str(path))


def validate(raw: dict, source: str) -> JobSpec:
    """The job in `raw`, validated; `source` (the file) prefixes errors. With a `search` block,
    every searched path must make a valid job at the extreme values it may draw."""
    raw = with_run_sections(raw, source)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{source}: {one_line(e)}") from None
    if spec.search is not None:
        check_space(spec.search, without_search(raw), source)
    return spec


def validate_section(model: type[BaseModel], raw: dict, source: str, prefix: str):
    """Validate one section on its own (e.g. the data CLI's `data` fields)."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(f"{source}: {describe({**err, 'loc': (prefix, *err['loc'])})}") from None
