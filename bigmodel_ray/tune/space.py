"""Search spaces written in job files: `train.optimizer.lr: loguniform(1e-4, 1e-1)`.

A space maps dotted spec paths to one distribution each:
  loguniform(lo, hi)   uniform(lo, hi)   randint(lo, hi)   (hi exclusive, as Ray Tune's)
  choice([a, b, ...])  grid([a, b, ...]) (every value exactly once, crossed with other grids)
Arguments are YAML values. `parse_space` checks the paths against the job spec and every value a
distribution can produce against the spec's own validation, so a bad space fails before any
trial runs, with the file and key named.
"""

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from bigmodel_ray.spec import SpecError, set_path, validate

_CALL = re.compile(r"^\s*(loguniform|uniform|randint|choice|grid)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args[0]))
        if self.kind == "choice":
            return tune.choice(list(self.args[0]))
        return {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[self.kind](*self.args)

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
                        f"choice([...]) or grid([...]) (got {text!r})")
    kind, inner = match.groups()
    try:
        args = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError:
        raise SpecError(f"{where}: arguments of {kind}(...) are not valid YAML (got {inner!r})") from None
    if kind in ("choice", "grid"):
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise SpecError(f"{where}: {kind} takes one non-empty list of values (got {inner!r})")
        return Distribution(kind, (tuple(args[0]),))
    args = [_number(a) for a in args]
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise SpecError(f"{where}: {kind} takes two numbers, lo and hi (got {inner!r})")
    lo, hi = args
    if not lo < hi:
        raise SpecError(f"{where}: {kind} needs lo < hi (got {lo!r}, {hi!r})")
    if kind == "loguniform" and lo <= 0:
        raise SpecError(f"{where}: loguniform needs lo > 0 (got {lo!r})")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise SpecError(f"{where}: randint takes integers (got {inner!r})")
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
        if path.split(".")[0] in ("name", "storage", "search", "kind", "resources"):
            # resources: every trial reserves the same CPUs/GPUs, which sizes the sweep's concurrency
            raise SpecError(f"{where}: cannot be searched")
        dist = parse_distribution(text, where)
        for value in dist.corners():
            _check_value(raw_job, path, value, where)
        parsed[path] = dist
    return parsed


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


GRID_POINT = "grid_point"     # a grid search's one Tune parameter: the trial's values, by path


def tune_space(space: dict[str, Distribution], search_alg: str, seed: int) -> dict:
    """Ray Tune's param_space. A grid search is one Tune grid over its points (`grid_points`),
    listed in a seeded random order."""
    if search_alg == "grid":
        from ray import tune

        return {GRID_POINT: tune.grid_search(grid_points(space, seed))}
    return {path: dist.to_tune() for path, dist in space.items()}


def trial_values(config: dict) -> dict:
    """A trial's values by dotted path, whichever search produced them."""
    return dict(config[GRID_POINT]) if GRID_POINT in config else dict(config)


def grid_points(space: dict[str, Distribution], seed: int) -> list[dict]:
    """Every combination of the (grid or choice) values exactly once, in a seeded random order.

    Not in the grid's nested order: early stopping judges each trial against the ones already
    seen, and a sweep that first meets every value of the outer parameter with its worst value
    of the inner one keeps too many trials going (measured in benchmarks/tune_asha.py)."""
    import itertools
    import random

    paths = list(space)
    points = [dict(zip(paths, values)) for values in itertools.product(*(space[p].args[0] for p in paths))]
    random.Random(seed).shuffle(points)
    return points


def grid_size(space: dict[str, Distribution]) -> int:
    return math.prod(len(d.args[0]) for d in space.values() if d.kind == "grid")


def trial_count(space: dict[str, Distribution], search) -> int:
    if search.search_alg == "grid":
        return math.prod(len(d.args[0]) for d in space.values())
    return search.num_samples * grid_size(space)


def apply(raw_job: dict, config: dict[str, Any]) -> dict:
    """The job with the trial's values set at their dotted paths (a new dict)."""
    import copy

    job = copy.deepcopy(raw_job)
    for path, value in config.items():
        try:
            set_path(job, path, copy.deepcopy(value))
        except KeyError as e:
            raise SpecError(f"{e.args[0]} (searching {path})") from None
    return job


def _check_value(raw_job: dict, path: str, value, where: str) -> None:
    """Unknown keys, wrong types and out-of-range values fail the spec's own validation."""
    try:
        validate(apply(raw_job, {path: value}), "job")
    except SpecError as e:
        detail = str(e).removeprefix("job: ")
        raise SpecError(f"{where}: value {value!r} is not valid here: {detail}") from None
