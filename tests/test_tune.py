"""Sweeps on Ray Tune: schedulers, search algorithms, results, resume, and bad search blocks."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch
import yaml
from conftest import ROOT, kill_run

from bigmodel_ray import kinds
from bigmodel_ray.cli import main
from bigmodel_ray.spec import load_job
from bigmodel_ray.storage import filesystem
from bigmodel_ray.train.optim import apply_hyperparameters, build_optimizer, build_scheduler
from bigmodel_ray.tune.results import pareto_mask, read_history
from bigmodel_ray.tune.trial import history_file

# One worker at half a CPU plus the trial's driver: two trials at a time on the session's 3 CPUs.
SWEEP_RESOURCES = {"workers": 1, "cpus_per_worker": 0.5}


def run_sweep(job_path: Path) -> tuple[dict, pd.DataFrame, Path]:
    spec = load_job(job_path)
    summary = kinds.run(spec, str(job_path), say=lambda *_: None)
    sweep_dir = Path(spec.storage) / spec.name
    return summary, pd.read_csv(sweep_dir / "trials.csv"), sweep_dir


def trial_history(sweep_dir: Path, trial_id: str) -> pd.DataFrame:
    return read_history(history_file(sweep_dir, trial_id))


@pytest.mark.slow      # an 8-trial sweep: minutes on 2 cores (with fewer, ASHA may stop none)
def test_asha_stops_bad_trials_and_the_best_matches_its_history(ray_cluster, tiny_job):
    job = tiny_job("asha", resources=SWEEP_RESOURCES, train={"epochs": 4, "batch_size": 128}, search={
        "space": {"train.optimizer.lr": "loguniform(1e-4, 3e-2)", "model.args.channels": "choice([[4, 8], [8, 16]])"},
        "num_samples": 8, "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}})
    summary, trials, sweep_dir = run_sweep(job)

    assert len(trials) == 8 and set(trials["status"]) <= {"finished", "stopped"}
    stopped, finished = trials[trials.status == "stopped"], trials[trials.status == "finished"]
    assert len(stopped) >= 1 and len(finished) >= 1, trials[["trial", "status", "epoch"]]
    assert (stopped["epoch"] < 4).all() and (finished["epoch"] == 4).all()
    assert summary["epochs_trained"] == trials["epochs_trained"].sum() < 8 * 4

    best = summary["best"]
    assert best["val_accuracy"] == trials["val_accuracy"].max()
    history = trial_history(sweep_dir, best["trial"])
    assert history["epoch"].tolist() == list(range(1, best["epoch"] + 1))
    assert history["val_accuracy"].iloc[-1] == pytest.approx(best["val_accuracy"])
    if best["epoch"] == 4:                       # a finished trial also reports its test metrics
        assert history["test_accuracy"].iloc[-1] == pytest.approx(best["test_accuracy"])

    best_job = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best_job["train"]["optimizer"]["lr"] == pytest.approx(best["config"]["train.optimizer.lr"])
    assert "search" not in best_job and load_job(sweep_dir / "best.yaml").name == "asha-best"
    assert all((sweep_dir / f).stat().st_size > 0 for f in ("curves.png", "params.png", "trials.parquet"))
    assert not (sweep_dir / ".train").exists()
    # Ended trials keep their last checkpoint only.
    assert all(len(list(Path(p).glob("checkpoint_*"))) == 1 for p in sweep_dir.glob("run_trial_*"))


@pytest.mark.slow        # ~70 s: keeps the default suite inside its budget
def test_grid_search_covers_the_grid_exactly_once(ray_cluster, tiny_job):
    job = tiny_job("grid", resources=SWEEP_RESOURCES, train={"epochs": 1, "batch_size": 256}, search={
        "space": {"train.optimizer.lr": "choice([0.003, 0.01])", "model.args.channels": "grid([[4, 8], [8, 16]])"},
        "search_alg": "grid"})
    summary, trials, _ = run_sweep(job)

    points = sorted(zip(trials["train.optimizer.lr"], trials["model.args.channels"]))
    assert points == [(0.003, "[4, 8]"), (0.003, "[8, 16]"), (0.01, "[4, 8]"), (0.01, "[8, 16]")]
    assert (trials["status"] == "finished").all() and summary["epochs_trained"] == 4


@pytest.mark.slow
def test_multi_objective_returns_the_non_dominated_set(ray_cluster, tiny_job):
    job = tiny_job("pareto", resources=SWEEP_RESOURCES, train={"epochs": 1, "batch_size": 256}, search={
        "space": {"train.optimizer.lr": "loguniform(1e-3, 3e-2)",
                  "model.args.channels": "choice([[2, 4], [4, 8], [8, 16], [16, 32]])"},
        "num_samples": 5, "metric": ["val_accuracy", "params"], "search_alg": "optuna"})
    summary, trials, sweep_dir = run_sweep(job)

    assert len(trials) == 5 and summary["best"]["val_accuracy"] == trials["val_accuracy"].max()
    points = {t.trial: (t.val_accuracy, t.params) for t in trials.itertuples()}

    def beaten(a):   # by another trial at least as good on both and better on one
        return any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in points.values())

    expected = sorted(t for t, p in points.items() if not beaten(p))
    assert sorted(summary["pareto"]) == expected == sorted(pd.read_csv(sweep_dir / "pareto.csv")["trial"])
    assert (sweep_dir / "pareto.png").stat().st_size > 0


def test_pareto_mask_handles_ties_and_directions():
    points = [[0.9, 100], [0.9, 100], [0.8, 50], [0.7, 60], [0.95, 200]]
    assert pareto_mask(points, ["max", "min"]) == [True, True, True, False, True]
    assert pareto_mask([[1.0], [2.0]], ["min"]) == [True, False]


def test_restored_optimizer_takes_the_specs_learning_rate():
    """PBT continues another trial's checkpoint with its own values; a resume may change them too."""
    from bigmodel_ray.spec import TrainSpec

    old, new = TrainSpec(optimizer={"lr": 0.1}, epochs=2), TrainSpec(optimizer={"lr": 0.02, "weight_decay": 0.1}, epochs=2)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model.parameters(), old)
    scheduler = build_scheduler(optimizer, old, steps_per_epoch=4)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    saved = optimizer.state_dict(), scheduler.state_dict()

    optimizer = build_optimizer(model.parameters(), new)
    scheduler = build_scheduler(optimizer, new, steps_per_epoch=4)
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    apply_hyperparameters(optimizer, scheduler, new)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02) and optimizer.param_groups[0]["weight_decay"] == 0.1
    scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.02) and scheduler.last_epoch == 4


@pytest.mark.parametrize("search, message", [
    ({"space": {"train.optimizer.lr": "uniform(0.1, 0.01)"}}, "search.space.train.optimizer.lr: uniform needs lo < hi"),
    ({"space": {"train.optimizer.lr": "loguniform(1e-4, 1e-1)"}, "metric": "accuracy"},
     "search.metric: unknown metric 'accuracy'"),
    ({"space": {"train.optimizer.lr": "loguniform(1e-4, 1e-1)"}, "metric": ["val_accuracy", "params"],
      "scheduler": "asha"}, "search.scheduler: asha stops trials on one metric"),
    ({"space": {"train.optimizer.lr": "loguniform(1e-4, 1e-1)"}, "search_alg": "grid"},
     "search.space.train.optimizer.lr: search_alg grid needs grid([...]) or choice([...]) values"),
    ({"space": {"train.optimizer.lr": "grid([0.1, 0.01])"}, "scheduler": "pbt"}, "pbt perturbs values"),
    ({"space": {"resources.workers": "choice([1, 2])"}}, "search.space.resources.workers: cannot be searched"),
    ({"space": {"train.optimizer.lr": "loguniform(1e-4, 1e-1)"}, "mode": ["max", "min"]},
     "search.mode: must match metric"),
    ({"space": {"train.epochs": "choice([2, 4])"}, "scheduler": "asha"}, "asha decides how long trials run"),
])
def test_bad_search_blocks_exit_2_naming_file_and_key(tiny_job, capsys, search, message):
    job = tiny_job("bad", search=search)
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {job}: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_pbt_trials_continue_from_cloned_checkpoints(ray_cluster, tiny_job):
    # A population of two that trains side by side: at every epoch the worse one clones the better.
    job = tiny_job("pbt", resources=SWEEP_RESOURCES, train={"epochs": 3, "batch_size": 128}, search={
        "space": {"train.optimizer.lr": "loguniform(1e-4, 3e-2)"}, "num_samples": 2, "max_concurrent_trials": 2,
        "scheduler": {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5}})
    summary, trials, sweep_dir = run_sweep(job)

    assert (trials["status"] == "finished").all() and (trials["epoch"] == 3).all()
    assert list(sweep_dir.glob("pbt_policy_*.txt")), "PBT never exploited"
    switches = []
    for trial in trials["trial"]:
        history = trial_history(sweep_dir, trial)
        lrs = [c["train.optimizer.lr"] for c in history["config"]]
        switches += [(history["epoch"][i], history["lr"][i], lrs[i]) for i in range(1, len(lrs)) if lrs[i] != lrs[i - 1]]
    assert switches, "no trial changed its configuration"
    for epoch, reported_lr, config_lr in switches:
        # The clone went on from the donor's epoch, not from 1, with its own perturbed lr.
        assert epoch > 1 and reported_lr == pytest.approx(config_lr)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", pytest.param("bucket", marks=pytest.mark.long)])
def test_killed_driver_resumes_the_sweep(where, tiny_job, tmp_path, request):
    """SIGKILL the driver mid-sweep, rerun: every trial goes on from its latest checkpoint. In a
    bucket, the rerun has nothing local (another machine): Tune's state, its signatures and the
    trials' checkpoints and histories all come from the bucket."""
    storage = str(tmp_path / "runs") if where == "folder" else f"{request.getfixturevalue('s3_bucket')}/runs"
    job = tiny_job("sweepkill", storage=storage, resources={"workers": 1}, train={"epochs": 4, "batch_size": 128},
                   search={"space": {"train.optimizer.lr": "loguniform(1e-3, 3e-2)"}, "num_samples": 3,
                           "max_concurrent_trials": 2})
    ray_tmp = tempfile.mkdtemp(prefix="bmr-", dir="/tmp")
    cache = tmp_path / "cache"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "BIGMODEL_RAY_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "bigmodel_ray", "run", str(job)]
    fs, sweep = filesystem(f"{storage}/sweepkill") if where == "bucket" else (pafs.LocalFileSystem(), f"{storage}/sweepkill")

    def read(name: str) -> str | None:
        try:
            with fs.open_input_stream(f"{sweep}/{name}") as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def epochs_reported() -> dict[str, list[int]]:
        found = fs.get_file_info(pafs.FileSelector(f"{sweep}/histories", allow_not_found=True))
        return {Path(i.path).stem: [json.loads(line)["epoch"] for line in (read(f"histories/{i.base_name}") or "").splitlines()
                                    if line.strip()] for i in found}

    driver = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not sum(len(e) >= 2 for e in epochs_reported().values()) >= 2:   # two trials past epoch 2
            assert driver.poll() is None and time.time() < deadline, "sweep ended before it could be killed"
            time.sleep(0.2)
    finally:
        kill_run(driver, ray_tmp)        # every process of the run, its trials' too, is gone
    before = epochs_reported()
    assert read("result.json") is None
    assert sum(max(e, default=0) == 4 for e in before.values()) < 3, "every trial ended before the kill"
    shutil.rmtree(cache, ignore_errors=True)

    try:
        rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        kill_run(subprocess.Popen(["true"], start_new_session=True), ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming the sweep" in rerun.stdout
    trials = pd.read_csv(io.StringIO(read("trials.csv")))
    assert len(trials) == 3 and (trials["status"] == "finished").all() and (trials["epoch"] == 4).all()
    after = epochs_reported()
    for name, epochs in before.items():
        if not epochs:
            continue
        # Every trial that had reported went on from its latest checkpoint: the rerun's reports
        # start at the next epoch (or repeat the last one: a report whose checkpoint was still
        # being written) and finished trials at most repeat their final report.
        assert after[name][:len(epochs)] == epochs, (name, epochs, after[name])
        rest = after[name][len(epochs):]
        if not rest:   # it had finished and Tune had recorded it: nothing to repeat
            assert epochs[-1] == 4, (name, epochs)
            continue
        assert rest == list(range(rest[0], 5)) and epochs[-1] <= rest[0] <= epochs[-1] + 1, (name, epochs, rest)


COMPRESS_JOB = {"kind": "compress", "data": {"source": "digits"}, "model": {"name": "cnn2d", "args": {"channels": [16, 32]}},
                "train": {"epochs": 3, "batch_size": 64, "optimizer": {"lr": 0.003}},
                "compress": {"methods": [{"method": "prune", "structured": True, "amount": 0.3, "finetune_epochs": 1}],
                             "measure": {"batch_sizes": [1, 64], "rounds": 1},
                             "select": {"max_accuracy_drop": 0.05, "minimize": "bytes"}}}


@pytest.mark.parametrize("search, message", [
    ({"space": {"compress.methods.0.amount": "uniform(0.1, 0.5)"}, "metric": "train_loss"},
     "search: metric train_loss is not reported by compress trials"),
    ({"space": {"compress.methods.0.amount": "uniform(0.1, 0.5)"}, "scheduler": "asha"},
     "search: a compress trial reports once"),
    ({"space": {"compress.methods.3.amount": "uniform(0.1, 0.5)"}}, "compress.methods: has 1 entries"),
    ({"space": {"compress.methods.0.amount": "uniform(0.1, 1.5)"}}, "compress.methods.0.amount: must be < 1"),
])
def test_bad_compress_searches_exit_2(tmp_path, capsys, search, message):
    job = tmp_path / "c.yaml"
    job.write_text(yaml.safe_dump({**COMPRESS_JOB, "name": "c", "search": search}))
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_compress_sweep_selects_across_trials_and_exports(ray_cluster, tmp_path):
    from bigmodel_ray.spec import validate

    raw = {**COMPRESS_JOB, "name": "csweep", "storage": str(tmp_path / "runs"),
           "resources": {"workers": 1, "cpus_per_worker": 0.5},
           "search": {"space": {"compress.methods.0.amount": "grid([0.2, 0.6])"}, "search_alg": "grid",
                      "metric": ["val_accuracy", "bytes"]}}
    summary = kinds.run(validate(raw, "csweep.yaml"), "csweep.yaml", say=lambda *_: None)
    sweep_dir = tmp_path / "runs" / "csweep"
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert sorted(trials["compress.methods.0.amount"]) == [0.2, 0.6] and (trials["status"] == "finished").all()
    assert trials.set_index("compress.methods.0.amount").loc[0.6, "bytes"] < trials.set_index(
        "compress.methods.0.amount").loc[0.2, "bytes"]
    table = pd.read_csv(sweep_dir / "candidates.csv")
    assert table["candidate"].iloc[0] == "teacher" and len(table) == 3
    ok = table[table["accuracy_drop"] <= 0.05]
    assert summary["selected"] == ok.loc[ok["bytes"].idxmin(), "candidate"]
    if summary["selected"] != "teacher":
        assert summary["export"]["argmax_agreement"] == 1.0
    assert (sweep_dir / "pareto.csv").exists() and (sweep_dir / "pareto.png").exists()
    # The trials signed their candidates with the driver's key, which never reached the disk.
    from bigmodel_ray import integrity

    key = integrity.signing_key()
    leaked = [f for f in sweep_dir.rglob("*") if f.is_file() and (key in (b := f.read_bytes()) or key.hex().encode() in b)]
    assert leaked == []
