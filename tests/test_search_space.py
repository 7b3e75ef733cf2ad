"""Search spaces in job files: parsing, and rejection of bad spaces before any trial runs."""

import pytest

from bigmodel_ray.spec import SpecError
from bigmodel_ray.spec.overrides import apply
from bigmodel_ray.spec.space import parse_distribution, parse_space
from bigmodel_ray.tune.space import grid_size, to_tune

JOB = {"name": "t", "data": {"source": "mnist1d"}, "model": {"name": "cnn1d", "args": {"channels": [8, 16]}},
       "train": {"epochs": 3}}


def test_distributions_parse_and_map_to_ray_tune():
    from ray import tune

    space = parse_space({"train.optimizer.lr": "loguniform(1e-4, 1e-1)", "train.batch_size": "choice([32, 64])",
                         "model.args.channels": "grid([[8, 16], [16, 32]])", "train.epochs": "randint(1, 4)",
                         "train.label_smoothing": "uniform(0, 0.2)"}, JOB, "job.yaml")
    assert space["train.optimizer.lr"].args == (1e-4, 1e-1)
    assert space["model.args.channels"].args == (([8, 16], [16, 32]),)
    assert grid_size(space) == 2
    assert isinstance(to_tune(space["train.optimizer.lr"]), tune.search.sample.Float)
    assert to_tune(space["model.args.channels"]) == {"grid_search": [[8, 16], [16, 32]]}


@pytest.mark.parametrize("space, message", [
    ({"train.optimizer.lr": "loguniform(0, 1)"}, "loguniform needs lo > 0"),
    ({"train.optimizer.lr": "uniform(0.1, 0.01)"}, "uniform needs lo < hi"),
    ({"train.optimizer.lr": "normal(0, 1)"}, "expected loguniform(lo, hi)"),
    ({"train.optimizer.lr": 0.1}, "expected loguniform(lo, hi)"),
    ({"train.batch_size": "choice([])"}, "choice takes one non-empty list"),
    ({"train.batch_size": "randint(1.5, 4)"}, "randint takes integers"),
    ({"train.optimizer.lrr": "uniform(0.1, 0.2)"}, "train.optimizer.lrr: unknown key"),
    ({"train.optimizer.lr": "uniform(-1, 0.2)"}, "value -1 is not valid here: train.optimizer.lr: must be > 0"),
    ({"train.precision": "choice([fp32, fp8])"}, "value 'fp8' is not valid here"),
    ({"model.args.depth": "choice([1, 2])"}, "unknown argument 'depth' for model 'cnn1d'"),
    ({"train.epochs.x": "choice([1])"}, "train.epochs: is not a section"),
    ({"name": "choice([a, b])"}, "cannot be searched"),
])
def test_bad_spaces_are_rejected_naming_file_and_key(space, message):
    with pytest.raises(SpecError, match=r"^job\.yaml: search\.space\.") as e:
        parse_space(space, JOB, "job.yaml")
    assert message in str(e.value)


def test_apply_sets_dotted_paths_without_touching_the_original():
    job = apply(JOB, {"train.optimizer.lr": 0.01, "model.args.channels": [4, 8]})
    assert job["train"]["optimizer"]["lr"] == 0.01 and job["model"]["args"]["channels"] == [4, 8]
    assert "optimizer" not in JOB["train"] and JOB["model"]["args"]["channels"] == [8, 16]
    assert parse_distribution("choice([a, 2, [3]])", "x").args == (("a", 2, [3]),)


def test_grid_points_cover_every_combination_once_in_a_seeded_order():
    from bigmodel_ray.tune.space import grid_points

    space = parse_space({"train.optimizer.lr": "grid([0.1, 0.01, 0.001])", "model.args.channels": "choice([[4], [8]])"},
                        JOB, "job.yaml")
    points = grid_points(space, seed=0)
    combos = sorted((p["train.optimizer.lr"], p["model.args.channels"]) for p in points)
    assert combos == sorted((lr, c) for lr in (0.1, 0.01, 0.001) for c in ([4], [8]))
    assert points == grid_points(space, seed=0) and points != grid_points(space, seed=1)
