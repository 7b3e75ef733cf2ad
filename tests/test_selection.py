"""The chosen epoch (best by a validation metric) and early stopping, in the loop and on resume."""

import json
from pathlib import Path

import pytest

from bigmodel_ray import kinds
from bigmodel_ray.spec import load_job
from bigmodel_ray.train.selection import Best, Patience, Tracker, default_metric
from bigmodel_ray.train.state import read_state


def rows(metric: str, values) -> list[dict]:
    return [{"epoch": i + 1, metric: v} for i, v in enumerate(values)]


def test_tracker_follows_the_direction_and_ignores_nan():
    up, down = Tracker("val_accuracy", "max"), Tracker("val_loss", "min")
    for row in rows("val_accuracy", [0.5, 0.7, float("nan"), 0.6, 0.7]):
        up.update(row)
    for row in rows("val_loss", [1.0, 0.8, 0.9, 0.8]):
        down.update(row)
    assert (up.epoch, up.value) == (2, 0.7) and (down.epoch, down.value) == (2, 0.8)   # ties keep the first


def test_a_tie_goes_to_the_lower_validation_loss_and_is_remembered():
    best = Tracker("val_accuracy", "max", tie_break="val_loss")
    history = [(0.9, 0.5), (0.95, 0.3), (0.95, 0.2), (0.95, 0.25), (0.94, 0.1)]
    for epoch, (accuracy, loss) in enumerate(history, 1):
        best.update({"epoch": epoch, "val_accuracy": accuracy, "val_loss": loss})
    assert (best.epoch, best.value, best.tie_value) == (3, 0.95, 0.2)
    kept = Best("val_accuracy", "max", keep_weights=True)         # as a resumed run restores it
    kept.restore({**vars(best), "model": {}})
    kept.update(None, {"epoch": 6, "val_accuracy": 0.95, "val_loss": 0.21})
    assert kept.tracker.epoch == 3


def test_patience_counts_epochs_without_a_big_enough_gain():
    p = Patience("val_accuracy", None, patience=2, min_delta=0.05)
    stops = [p.update(row) for row in rows("val_accuracy", [0.5, 0.53, 0.54, 0.56])]
    assert stops == [False, False, True, False]      # 0.53, 0.54 are within 0.05 of 0.5; 0.56 is not
    again = Patience("val_accuracy", None, patience=2, min_delta=0.05)
    again.restore(p.state())
    assert not again.exhausted(5) and again.exhausted(6)


def test_default_metric_prefers_accuracy_then_loss():
    assert default_metric({"val_accuracy": 1, "val_loss": 1}) == ("val_accuracy", "max")
    assert default_metric({"val_loss": 1, "val_perplexity": 3}) == ("val_loss", "min")
    assert default_metric({"val_rotated_accuracy": 1, "val_loss": 1}) == ("val_rotated_accuracy", "max")


@pytest.mark.slow      # three runs of a few epochs: minutes on 2 cores
def test_best_epoch_is_tested_kept_and_remembered_when_stopping_early(ray_cluster, tiny_job):
    """A run reports the test metrics of its best epoch and leaves that model; early stopping
    ends it; a rerun remembers how long the metric has not improved."""
    # min_delta 1.0: no epoch after the first ever counts as an improvement for patience.
    stopping = {"patience": 10, "min_delta": 1.0}
    job = tiny_job("select", train={"epochs": 3, "early_stopping": stopping})
    first = kinds.run(load_job(job), str(job), say=lambda _: None)
    run_dir = Path(first["run_dir"])
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))["epoch"]    # ties: lower loss
    assert first["best"]["epoch"] == best_epoch == first["test_epoch"] and not first["stopped_early"]
    assert read_state(first["checkpoint"])["epoch"] == best_epoch         # the model the run leaves
    assert read_state(first["last_checkpoint"])["epoch"] == 3             # what a rerun continues from
    assert (run_dir / "curves.png").stat().st_size > 0

    # Rerun for up to 8 epochs with patience 3: patience counts from epoch 1 (remembered from
    # the checkpoint), so the run stops after epoch 4 — it would go on to 7 if it forgot.
    job = tiny_job("select", train={"epochs": 8, "early_stopping": {**stopping, "patience": 3}})
    second = kinds.run(load_job(job), str(job), say=lambda _: None)
    assert second["stopped_early"] and second["epochs"] == 4 and second["resumed_from_epoch"] == 3

    # Run again: nothing left to train, the same result.
    third = kinds.run(load_job(job), str(job), say=lambda _: None)
    assert third["epochs"] == 4 and third["epochs_this_run"] == 0
    assert third["test_accuracy"] == pytest.approx(second["test_accuracy"], abs=1e-12)


def test_evaluate_last_keeps_no_weights_and_tests_the_last_epoch():
    import torch.nn as nn

    best = Best(None, None, keep_weights=False)
    model = nn.Linear(2, 2)
    for row in rows("val_accuracy", [0.9, 0.5]):
        best.update(model, row)
    assert best.tracker.epoch == 1 and best.chosen_epoch(2) == 2 and best.load_into(model, 2) == 2


def test_a_best_epoch_before_the_last_is_swapped_in_on_every_rank(ray_cluster, tiny_job):
    # "Best" by the highest validation loss: the first epoch, so the final test runs on weights
    # broadcast from rank 0's copy, and the last epoch's test is reported beside it.
    job = tiny_job("worst", train={"epochs": 2}, checkpoint={"best": {"metric": "val_loss", "mode": "max"}})
    result = kinds.run(load_job(job), str(job), say=lambda _: None)
    history = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    worst = max(history, key=lambda r: r["val_loss"])["epoch"]
    assert worst == 1 and result["test_epoch"] == 1 and result["best"] == {
        "metric": "val_loss", "mode": "max", "min_delta": 0.0, "epoch": 1, "value": history[0]["val_loss"],
        "tie_break": None, "tie_value": None}
    chosen = read_state(result["checkpoint"])
    assert chosen["epoch"] == 1 and not any(k.startswith("module.") for k in chosen["model"])
    assert result["last_epoch_test_loss"] == history[-1]["last_epoch_test_loss"]
    assert result["last_epoch_test_loss"] != result["test_loss"]          # other weights (accuracies may tie)
    assert result["rank_param_checksums"][0] == pytest.approx(result["rank_param_checksums"][1], rel=1e-12)



def _swap_worker(rank: int, world: int, strategy: str, init_file: str, out: str):
    import torch
    import torch.distributed as dist
    import torch.nn as nn

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        fully_shard(model[0])
        model = fully_shard(model)
    else:
        model = nn.parallel.DistributedDataParallel(model)
    best = Best("val_accuracy", "max", keep_weights=True)
    best.update(model, {"epoch": 1, "val_accuracy": 0.9})
    kept = {k: v.clone() for k, v in best.weights.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model(torch.randn(2, 4))        # FSDP2 keeps the root's parameters gathered after this
    best.update(model, {"epoch": 2, "val_accuracy": 0.5})
    for _ in range(2):                  # twice: the kept copy is saved in checkpoints and loaded again
        assert best.load_into(model, 2) == 1
    assert sorted(best.weights) == sorted(kept)
    loaded = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    torch.save({"kept": kept, "loaded": loaded}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_best_weights_are_swapped_into_a_wrapped_model_and_the_kept_copy_stays(strategy, tmp_path):
    import torch
    import torch.multiprocessing as mp

    out = str(tmp_path / "state")
    mp.spawn(_swap_worker, args=(2, strategy, str(tmp_path / "init"), out), nprocs=2)
    for rank in range(2):
        saved = torch.load(f"{out}.{rank}", weights_only=True)
        loaded = {k.removeprefix("module."): v for k, v in saved["loaded"].items()}
        assert loaded.keys() == saved["kept"].keys()
        assert all(torch.equal(loaded[k], saved["kept"][k]) for k in loaded)
