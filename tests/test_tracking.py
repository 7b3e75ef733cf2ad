"""Tracking against a real MLflow server (sqlite store and artifacts in a temp folder) and
TensorBoard event files read back: a run, a sweep, a server that does not answer, bad settings."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_tune import SWEEP_RESOURCES, run_sweep

from bigmodel_ray import kinds, runs, tracking
from bigmodel_ray.cli import main
from bigmodel_ray.spec import JobSpec, SpecError, dump, load_job

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")     # the tests' own client: no calls home
SERVER_START_S = 240       # seen: 12 s on a quiet 2-core machine, 67 s on a busy one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on a free loopback port, one worker, its store and artifacts in `folder`."""

    def __init__(self, folder: Path):
        self.folder, port = folder, free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(folder / "server.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                 "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1"],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> str:
        """The URL, once the server answers (it boots while Ray starts: the fixture does not wait)."""
        deadline = time.monotonic() + SERVER_START_S
        while not _answers(self.url + "/health"):
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"mlflow server not up after {SERVER_START_S} s"
            time.sleep(0.5)
        return self.url

    def stop(self) -> None:
        """End its whole process group (uvicorn's worker too): nothing keeps running."""
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def client_of(url: str):
    from mlflow import MlflowClient

    return MlflowClient(url)


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(tag)]


def test_a_run_logs_params_epochs_and_files_to_mlflow_and_tensorboard(mlflow_server, ray_cluster, tiny_job):
    url = mlflow_server.ready()
    job = tiny_job("tracked", tracking={"tensorboard": True, "mlflow": {"uri": url, "experiment": "t"}})
    summary = kinds.run(load_job(job), str(job), say=lambda *_: None)
    run_dir = Path(summary["run_dir"])
    rows = runs.read_epoch_log(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]

    client = client_of(url)
    [run] = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert tracking.read_state(run_dir) == {"mlflow_run_id": run.info.run_id}     # a resumed run goes on in it
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.args.channels"] == "[8, 16]"
    assert float(params["train.optimizer.lr"]) == 0.01 and not [k for k in params if k.startswith("tracking")]
    history = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["val_accuracy"])) for r in rows]
    assert {"train_loss", "lr", "samples_per_s", "val_loss"} <= set(run.data.metrics)
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert {"result.json", "spec.yaml", "curves.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    board = run_dir / tracking.TENSORBOARD_DIR
    assert scalars(board, "val_accuracy") == [(r["epoch"], pytest.approx(r["val_accuracy"], rel=1e-6)) for r in rows]
    assert scalars(board, "test_accuracy") == [(2, pytest.approx(summary["test_accuracy"], rel=1e-6))]


def test_a_server_that_does_not_answer_is_said_once_and_tensorboard_goes_on(tmp_path, tiny_job, capsys, monkeypatch):
    for name in tracking.MLFLOW_HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "down"
    run_dir.mkdir()
    # A port held bound but never listening: refused throughout, and nothing else can take it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        job = tiny_job("down", tracking={"tensorboard": True,
                                         "mlflow": {"uri": f"http://127.0.0.1:{held.getsockname()[1]}"}})
        with tracking.open_run(load_job(job), run_dir, say=lambda *_: None) as tracker:
            for epoch in (1, 2):
                tracker.epoch({"epoch": epoch, "val_accuracy": epoch / 4})
        tracker.finish({"epochs": 2, "test_accuracy": 0.75}, run_dir)

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "MLflow at http://127.0.0.1:" in warnings[0], warnings
    # MLflow's own retries (7, over about 2 minutes) would hold every epoch that long
    assert {name: os.environ[name] for name in tracking.MLFLOW_HTTP_DEFAULTS} == tracking.MLFLOW_HTTP_DEFAULTS
    assert scalars(run_dir / tracking.TENSORBOARD_DIR, "val_accuracy") == [(1, 0.25), (2, 0.5)]


@pytest.mark.slow        # ~70 s: a sweep of 2 trials
def test_a_sweep_logs_a_parent_run_and_a_child_run_per_trial(mlflow_server, ray_cluster, tiny_job):
    url = mlflow_server.ready()
    job = tiny_job("swept", resources=SWEEP_RESOURCES, train={"epochs": 1, "batch_size": 256},
                   search={"space": {"train.optimizer.lr": "choice([0.003, 0.01])"}, "search_alg": "grid"},
                   tracking={"tensorboard": True, "mlflow": {"uri": url, "experiment": "sweeps"}})
    summary, trials, sweep_dir = run_sweep(job)

    client = client_of(url)
    found = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    [parent] = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["bigmodel_ray.trial"]: r for r in found
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.run_name == "swept" and parent.info.status == "FINISHED"
    assert parent.data.params["search.search_alg"] == "grid"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(summary["best"]["val_accuracy"])
    assert {"trials.csv", "best.yaml", "curves.png", "result.json", "spec.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(found) == 3 and sorted(children) == sorted(trials["trial"])
    for _, trial in trials.iterrows():
        child = children[trial["trial"]]
        assert child.info.status == "FINISHED" and child.info.run_name == f"swept-{trial['trial']}"
        assert float(child.data.params["train.optimizer.lr"]) == pytest.approx(trial["train.optimizer.lr"])
        assert child.data.params["train.epochs"] == "1"
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [(m.step, m.value) for m in history] == [(1, pytest.approx(trial["val_accuracy"]))]
        assert child.data.metrics["test_accuracy"] == pytest.approx(trial["test_accuracy"])
        board = sweep_dir / tracking.TENSORBOARD_DIR / trial["trial"]
        assert scalars(board, "val_accuracy") == [(1, pytest.approx(trial["val_accuracy"], rel=1e-6))]


@pytest.mark.parametrize("uri, message", [
    ("http://me:secret@mlflow.example:5000", "credentials"),
    ("https://token@mlflow.example", "credentials"),
    ("postgresql://me:secret@db/mlflow", "credentials"),
    ("ftp://mlflow.example", "schemes"),
])
def test_mlflow_uris_with_credentials_or_unknown_schemes_are_refused(tiny_job, uri, message):
    with pytest.raises(SpecError, match=rf"tracking\.mlflow\.uri: .*{message}"):
        load_job(tiny_job("bad", tracking={"mlflow": {"uri": uri}}))


def test_a_missing_package_or_uri_is_one_line_at_validate(tiny_job, monkeypatch, capsys):
    job = tiny_job("nouri", tracking={"mlflow": {"experiment": "x"}})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["validate", str(job)]) == 2
    assert "tracking.mlflow.uri: not given, and MLFLOW_TRACKING_URI is not set" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert main(["validate", str(job)]) == 0
    capsys.readouterr()

    monkeypatch.setitem(sys.modules, "mlflow", None)        # as if it were not installed
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'bigmodel-ray[tracking]'" in err, err


def test_params_are_the_spec_by_dotted_key_without_tracking_or_secrets():
    params = tracking.flat_params({
        "train": {"optimizer": {"lr": 0.01}, "epochs": 2}, "model": {"args": {"a/b": [1, 2]}},
        "data": {"path": "s3://key:secret@bucket/x.parquet?X-Amz-Signature=abc", "augment": None},
        "tracking": {"mlflow": {"uri": "http://mlflow.example"}}})
    assert params == {"train.optimizer.lr": "0.01", "train.epochs": "2", "model.args.a_b": "[1, 2]",
                      "data.path": "s3://***@bucket/x.parquet?***", "data.augment": "null"}


def test_a_changed_tracking_section_still_resumes(tmp_path, tiny_job):
    run_dir = tmp_path / "same"
    run_dir.mkdir()
    runs.write_spec(run_dir, dump(load_job(tiny_job("same", tracking={"tensorboard": True}))))
    every = [k for k in JobSpec.model_fields if k != "name"]         # what a sweep compares
    runs.check_same_job(run_dir, load_job(tiny_job("same")), "same.yaml", keys=every)
    with pytest.raises(SpecError, match="seed: differs"):
        runs.check_same_job(run_dir, load_job(tiny_job("same", seed=1)), "same.yaml", keys=every)
