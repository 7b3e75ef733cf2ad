"""A checked search space (spec/space.py) as Ray Tune's param_space, and a trial's values back."""

import math

from bigmodel_ray.spec.space import Distribution


def to_tune(dist: Distribution):
    from ray import tune

    if dist.kind == "grid":
        return tune.grid_search(list(dist.args[0]))
    if dist.kind == "choice":
        return tune.choice(list(dist.args[0]))
    return {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[dist.kind](*dist.args)


GRID_POINT = "grid_point"     # a grid search's one Tune parameter: the trial's values, by path


def tune_space(space: dict[str, Distribution], search_alg: str, seed: int) -> dict:
    """Ray Tune's param_space. A grid search is one Tune grid over its points (`grid_points`),
    listed in a seeded random order."""
    if search_alg == "grid":
        from ray import tune

        return {GRID_POINT: tune.grid_search(grid_points(space, seed))}
    return {path: to_tune(dist) for path, dist in space.items()}


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
