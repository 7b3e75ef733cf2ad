"""The one-worker runner a sweep's small trials use (train/in_process.py): checkpoints kept in
the run folder, callbacks, restarts after a failure — as a Ray Train run would."""

import json
import tempfile
from pathlib import Path

import pytest
from ray.train import Checkpoint

from bigmodel_ray.train.in_process import InProcessTrainer


def epoch_loop(fail_after: set):
    """Reports epochs 1..4 with a checkpoint each; raises once after each epoch in `fail_after`."""
    def loop(config):
        calls = config["train_calls"]
        assert calls.rank_and_world() == (0, 1) and calls.checkpoint() is None
        start = 0
        if config.get("init_checkpoint"):
            start = json.loads((Path(config["init_checkpoint"]) / "state.json").read_text())["epoch"]
        for epoch in range(start + 1, 5):
            with tempfile.TemporaryDirectory() as d:      # deleted after the report, as the worker's
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                calls.report({"epoch": epoch}, Checkpoint.from_directory(d))
            if epoch in fail_after:
                fail_after.discard(epoch)
                raise RuntimeError(f"failed after epoch {epoch}")
        return {"epochs": 4, "started_at": start}
    return loop


class Seen:
    def __init__(self):
        self.reports = []

    def after_report(self, run_context, metrics, checkpoint):
        state = json.loads((Path(checkpoint.path) / "state.json").read_text())
        self.reports.append((metrics[0]["epoch"], state["epoch"]))


def test_a_failed_loop_restarts_from_its_last_kept_checkpoint(tmp_path):
    seen = Seen()
    trainer = InProcessTrainer(epoch_loop({2}), {}, datasets={}, run_dir=tmp_path / "run", keep=2,
                               callbacks=[seen], max_failures=1)
    result = trainer.fit()

    assert result.return_value == {"epochs": 4, "started_at": 2}      # again from epoch 2's checkpoint
    assert seen.reports == [(1, 1), (2, 2), (3, 3), (4, 4)]            # each callback saw a copy that exists
    assert result.metrics == {"epoch": 4}
    kept = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert kept == ["checkpoint_000002", "checkpoint_000003"]           # the last `keep`
    assert json.loads((Path(result.checkpoint.path) / "state.json").read_text()) == {"epoch": 4}


def test_failures_beyond_max_failures_are_raised(tmp_path):
    trainer = InProcessTrainer(epoch_loop({1, 2}), {}, datasets={}, run_dir=tmp_path / "run", keep=1,
                               max_failures=1)
    with pytest.raises(RuntimeError, match="failed after epoch 2"):
        trainer.fit()
