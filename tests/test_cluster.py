"""A real two-node Ray cluster on loopback, with token auth: submit, follow, stop, refuse.

The head and a second node are separate `ray start` processes with their own temp dir, ports
and a custom resource each; the test tears them down by the processes it started (never
`ray stop`, which would kill every Ray on the machine).
"""

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from bigmodel_ray import submit
from bigmodel_ray.cli import main
from bigmodel_ray.local_ray import free_ports, processes, stop
from bigmodel_ray.spec import load_job

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


@dataclass
class LoopbackCluster:
    address: str           # http://127.0.0.1:<dashboard port>
    token_path: Path
    temp_dir: str
    gcs: str               # 127.0.0.1:<port>, what `run --address` attaches to


def _agent_ports() -> list[str]:
    agent, grpc, metrics, runtime_env = free_ports(4)
    return ["--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env)]


def _cmdlines(pids) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore"))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def loopback_cluster():
    temp_dir = tempfile.mkdtemp(prefix="bmrc-", dir="/tmp")     # short: socket paths must fit in 107 bytes
    token_path = Path(temp_dir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
               BIGMODEL_RAY_CACHE=str(Path(temp_dir) / "cache"))   # mirrors of runs in object storage
    gcs, dashboard, client = free_ports(3)
    ray = str(VENV_BIN / "ray")
    common = ["--temp-dir", temp_dir, "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([ray, "start", "--head", "--port", str(gcs), "--dashboard-port", str(dashboard),
                        "--dashboard-host", "127.0.0.1", "--ray-client-server-port", str(client),
                        "--resources", '{"head_node": 1}', *common, *_agent_ports()],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{gcs}", "--resources", '{"second_node": 1}',
                        *common, *_agent_ports()], env=env, check=True, capture_output=True, timeout=120)
        yield LoopbackCluster(f"http://127.0.0.1:{dashboard}", token_path, temp_dir, f"127.0.0.1:{gcs}")
    finally:
        stop(temp_dir, gcs)
        assert processes(temp_dir, gcs) == [], "cluster processes left behind"


@pytest.fixture
def with_token(loopback_cluster, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(loopback_cluster.token_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    return loopback_cluster


class _Timed:
    """A stdout stand-in that records when the first log text arrives."""

    def __init__(self):
        self.text, self.first_at = "", None

    def write(self, s):
        if s and self.first_at is None:
            self.first_at = time.monotonic()
        self.text += s

    def flush(self):
        pass


def test_submit_follow_succeeds_across_both_nodes(with_token, tiny_job, tmp_path, capsys):
    cluster = with_token
    job = tiny_job("cluster_tiny")
    start = time.monotonic()
    submission_id = submit.submit(load_job(job), str(job), cluster.address)
    submitted = time.monotonic()
    out = _Timed()
    code = submit.follow(cluster.address, submission_id, out=out)
    done = time.monotonic()
    assert code == 0, out.text[-3000:]
    assert "cluster_tiny: test_accuracy" in out.text                  # the summary: the very last line
    timings = {"submit_s": round(submitted - start, 1), "first_log_line_s": round(out.first_at - start, 1),
               "succeeded_s": round(done - start, 1)}
    print(f"loopback cluster timings: {timings}")
    (Path(tempfile.gettempdir()) / "bigmodel_ray_cluster_timings.json").write_text(json.dumps(timings))

    result = json.loads((tmp_path / "runs" / "cluster_tiny" / "result.json").read_text())
    assert result["epochs"] == 2 and len(set(result["rank_nodes"])) == 2    # one trainer on each node

    capsys.readouterr()
    assert main(["status", submission_id, "--address", cluster.address]) == 0
    assert capsys.readouterr().out.startswith(f"{submission_id}: SUCCEEDED")
    assert main(["list", "--address", cluster.address]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["SUBMISSION", "ID"] and any(submission_id in r and "SUCCEEDED" in r for r in table)


def test_a_job_across_both_nodes_keeps_its_run_in_object_storage(with_token, s3_bucket, tiny_job):
    # The cluster's nodes have the credentials in their environment (conftest.py), as nodes with an
    # instance profile would; the job names the S3-compatible server's address.
    cluster = with_token
    job = tiny_job("cluster_s3", storage=f"{s3_bucket}/runs",
                   storage_options={"endpoint_override": os.environ["AWS_ENDPOINT_URL"]})
    submission_id = submit.submit(load_job(job), str(job), cluster.address, say=lambda _: None)
    out = _Timed()
    assert submit.follow(cluster.address, submission_id, out=out) == 0, out.text[-3000:]

    from bigmodel_ray.storage import filesystem
    fs, path = filesystem(f"{s3_bucket}/runs/cluster_s3")
    with fs.open_input_stream(f"{path}/result.json") as f:
        result = json.loads(f.read())
    assert result["epochs"] == 2 and len(set(result["rank_nodes"])) == 2      # a trainer on each node
    assert result["last_checkpoint"].startswith(f"{s3_bucket}/runs/cluster_s3/checkpoint_")
    with fs.open_input_stream(f"{path}/metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f.read().decode().splitlines()] == [1, 2]


def test_a_sweep_in_object_storage_needs_no_folder_that_the_nodes_share(with_token, s3_bucket, tiny_job, tmp_path):
    """Tune and each trial write a sweep to the bucket themselves, on whatever node they run.
    Here the driver's cache (its mirror of the bucket) is a tmpfs in a mount namespace of its
    own, which no Ray process sees, as another machine's disk is to a cluster's nodes: the sweep
    still runs, its results land in the bucket, and a rerun resumes it from there."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespaces here (unshare --mount needs CAP_SYS_ADMIN)")
    # One trial at a time: it holds 0.75 of a node's one CPU, and Ray Data's tasks need a whole one.
    job = tiny_job("sweep_s3", storage=f"{s3_bucket}/runs", resources={"workers": 1, "cpus_per_worker": 0.5},
                   search={"space": {"train.optimizer.lr": "grid([0.003, 0.01])"}, "search_alg": "grid",
                           "max_concurrent_trials": 1})
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "BIGMODEL_RAY_CACHE": str(cache), "RAY_AUTH_MODE": "token"}
    private = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"',
               str(cache), str(VENV_BIN / "bigmodel-ray"), "run", str(job), "--address", with_token.gcs]
    first = subprocess.run(private, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert not any(cache.iterdir())         # the driver's mirror was its own: nothing of it is here

    from bigmodel_ray.storage import filesystem
    fs, path = filesystem(f"{s3_bucket}/runs/sweep_s3")
    with fs.open_input_stream(f"{path}/result.json") as f:
        result = json.loads(f.read())
    assert result["trials"] == 2 and result["epochs_trained"] == 4, result       # 2 epochs each, from the histories
    stored = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    assert {"tuner.pkl", "signatures.json", "trials.csv", "best.yaml", "spec.yaml", "histories"} <= stored, stored

    again = subprocess.run(private, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "(2 trials already ended)" in again.stdout, again.stdout[-2000:]


def test_cli_submit_follow_mirrors_a_failed_job(with_token, tiny_job, capsys):
    # A job whose data path does not exist *on the cluster*: it validates here, fails there with exit 2.
    job = tiny_job("cluster_bad", data={"source": "image_folder", "path": "/nonexistent/images"},
                   model={"name": "cnn2d"})
    assert main(["submit", str(job), "--address", with_token.address, "--follow"]) == 2
    assert "data.path: /nonexistent/images is not a folder" in capsys.readouterr().out


def test_stop_ends_the_job_and_its_processes(with_token, tiny_job, tmp_path, capsys):
    cluster = with_token
    job = tiny_job("cluster_long", train={"epochs": 500})
    assert main(["submit", str(job), "--address", cluster.address]) == 0
    submission_id = capsys.readouterr().out.split("submitted ")[1].split()[0]
    metrics = tmp_path / "runs" / "cluster_long" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().strip()):      # training is under way
        assert time.monotonic() < deadline, "the long job never logged an epoch"
        time.sleep(0.5)

    assert main(["stop", submission_id, "--address", cluster.address]) == 0
    assert capsys.readouterr().out.strip() == f"{submission_id}: STOPPED"
    markers = ("ray::RayTrainWorker", "ray::TrainController", "bigmodel_ray.cli run")
    deadline = time.monotonic() + 60
    while any(m in cmd for cmd in _cmdlines(processes(cluster.temp_dir)) for m in markers):
        assert time.monotonic() < deadline, "trainer processes survived the stop"
        time.sleep(0.5)
    assert main(["logs", submission_id, "--address", cluster.address, "--follow"]) == submit.STOPPED_EXIT


def test_submission_without_the_token_is_refused(loopback_cluster, tiny_job, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no_token_here"))
    monkeypatch.setenv("HOME", str(tmp_path))                            # no ~/.ray/auth_token either
    job = tiny_job("cluster_no_token")
    assert main(["submit", str(job), "--address", loopback_cluster.address]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "RAY_AUTH_TOKEN" in err and len(err.strip().splitlines()) == 1

    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)                      # a wrong token fares no better
    assert main(["list", "--address", loopback_cluster.address]) == 2
    assert "refused" in capsys.readouterr().err
