"""Search spaces written in job files: `train.optimizer.lr: loguniform(1e-4, 1e-1)`.

A space maps dotted spec paths to one distribution each:
  loguniform(lo, hi)   uniform(lo, hi)   randint(lo, hi)   (hi exclusive, as Ray Tune's)
  choice([a, b, ...])  grid([a, b, ...]) (every value exactly once, crossed with other grids)
Arguments are YAML values. `parse_space` checks the paths against the job spec and every value a
distribution can produce against the spec's own validation, so a bad space fails before any
trial runs, with the file and key named.
"""

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bigmodel_ray.errors import SpecError
from bigmodel_ray.spec.job import JobSpec
from bigmodel_ray.spec.messages import one_line, shown
from bigmodel_ray.spec.overrides import apply
from bigmodel_ray.spec.yaml_input import BadYAML, load_yaml

_CALL = re.compile(r"^\s*(loguniform|uniform|randint|choice|grid)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple

    def corners(self) -> list:
        """Values that bound what the distribution produces (checked against the spec)."""
        if self.kind in ("grid", "choice"):
            return list(self.args[0])
        lo, hi = self.args
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]


def parse_distribution(text: Any, where: str) -> Distribution:
    match = _CALL.match(text) if isinstance(text, str) else None
    if not match:
        raise SpecError(f"{where}: expected loguniform(lo, hi), uniform(lo, hi), randint(lo, hi), "
                        f"choice([...]) or grid([...]) (got {shown(text)})")
    kind, inner = match.groups()
    try:
        args = load_yaml(f"[{inner}]")
    except BadYAML as e:
        raise SpecError(f"{where}: arguments of {kind}(...) are {e.what} (got {shown(inner)})") from None
    if not isinstance(args, list):
        raise SpecError(f"{where}: arguments of {kind}(...) are not a list of values (got {shown(inner)})")
    if kind in ("choice", "grid"):
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise SpecError(f"{where}: {kind} takes one non-empty list of values (got {shown(inner)})")
        return Distribution(kind, (tuple(args[0]),))
    args = [_number(a) for a in args]
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise SpecError(f"{where}: {kind} takes two numbers, lo and hi (got {shown(inner)})")
    lo, hi = args
    if not lo < hi:
        raise SpecError(f"{where}: {kind} needs lo < hi (got {shown(lo)}, {shown(hi)})")
    if kind == "loguniform" and lo <= 0:
        raise SpecError(f"{where}: loguniform needs lo > 0 (got {shown(lo)})")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise SpecError(f"{where}: randint takes integers (got {shown(inner)})")
    return Distribution(kind, (lo, hi))


def _number(a):
    """PyYAML reads 1e-4 (no dot) as a string; a number is meant."""
    if isinstance(a, str):
        try:
            return float(a)
        except ValueError:
            return a
    return a


def parse_space(space: Any, raw_job: dict, source: str) -> dict[str, Distribution]:
    """Distributions by dotted path, each checked against the job spec at its extreme values."""
    if not isinstance(space, dict) or not space:
        raise SpecError(f"{source}: search.space: must be a mapping of spec paths to distributions")
    parsed = {}
    for path, text in space.items():
        where = f"{source}: search.space.{path}"
        if path.split(".")[0] in ("name", "storage", "search", "kind", "resources", "tracking"):
            # resources: every trial reserves the same CPUs/GPUs, which sizes the sweep's concurrency
            raise SpecError(f"{where}: cannot be searched")
        dist = parse_distribution(text, where)
        for value in dist.corners():
            _check_value(raw_job, path, value, where)
        parsed[path] = dist
    return parsed


def distributions(search) -> dict[str, Distribution]:
    """The space of a validated job's search block (checked when the job was loaded)."""
    return {path: parse_distribution(text, path) for path, text in search.space.items()}


def check_space(search, raw_job: dict, source: str) -> dict[str, Distribution]:
    """The parsed space, checked against the job and against what the search algorithm can draw."""
    space = parse_space(search.space, raw_job, source)
    for path, dist in space.items():
        where = f"{source}: search.space.{path}"
        if search.search_alg == "grid" and dist.kind not in ("grid", "choice"):
            raise SpecError(f"{where}: search_alg grid needs grid([...]) or choice([...]) values (got {dist.kind})")
        if dist.kind == "grid" and search.search_alg == "optuna":
            raise SpecError(f"{where}: optuna draws its own points; use choice([...]) instead of grid([...])")
        if dist.kind == "grid" and search.scheduler.name == "pbt":
            raise SpecError(f"{where}: pbt perturbs values; use choice([...]) instead of grid([...])")
    if search.scheduler.name == "asha" and "train.epochs" in space:
        raise SpecError(f"{source}: search.space.train.epochs: asha decides how long trials run; fix train.epochs")
    return space


def _check_value(raw_job: dict, path: str, value, where: str) -> None:
    """Unknown keys, wrong types and out-of-range values fail the spec's own validation."""
    try:
        JobSpec.model_validate(apply(raw_job, {path: value}))
    except ValidationError as e:
        raise SpecError(f"{where}: value {shown(value)} is not valid here: {one_line(e)}") from None
    except SpecError as e:          # the path runs through a value that is not a section
        raise SpecError(f"{where}: value {shown(value)} is not valid here: {e}") from None
