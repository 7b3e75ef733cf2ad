"""`bigmodel-ray up` / `down`: a Ray kept running on this machine, that runs attach to, with its
own token, and that `down` stops to the last process (never `ray stop`); runs taken by the warm
process `up` keeps ready, or run by the command itself when that process declines."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

from bigmodel_ray import local_ray, warm
from bigmodel_ray.cli import main


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    folder = tmp_path / "local-ray"
    monkeypatch.setenv(local_ray.STATE_ENV, str(folder))
    return folder


def test_up_serves_runs_behind_its_token_and_down_stops_every_process(state_dir, tiny_job, tmp_path, capsys):
    assert main(["up", "--cpus", "3", "--object-store-mb", "256"]) == 0
    try:
        ray = local_ray.running()
        assert ray is not None and local_ray.processes(ray.temp_dir)
        assert (Path(ray.token_path).stat().st_mode & 0o777) == 0o600
        with pytest.raises(urllib.error.HTTPError) as refused:          # the Jobs API wants the token
            urllib.request.urlopen(f"{ray.dashboard}/api/jobs/", timeout=10)
        assert refused.value.code == 401
        assert main(["up"]) == 2 and "already up" in capsys.readouterr().err

        # A run attaches, in the warm process that `up` keeps ready, is stopped by Ctrl-C (one
        # line: where, and the command that resumes it; exit 130), and the same command with
        # more epochs resumes it; `up` lives on.
        wait_for_warm_process(state_dir)
        job = tiny_job("attached", train={"epochs": 20, "batch_size": 32})
        metrics = tmp_path / "runs" / "attached" / "metrics.jsonl"
        run = run_for_two_epochs(job, metrics)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 130, err[-2000:]
        assert out.splitlines()[0] == f"attached to the local Ray at {ray.address} (bigmodel-ray up, run by its warm process)"
        stopped = max(json.loads(line)["epoch"] for line in metrics.read_text().splitlines())
        assert err.strip() == (f"interrupted after epoch {stopped} in {metrics.parent}: `bigmodel-ray run {job}` "
                               f"resumes it from its last checkpoint")

        # A command whose settings differ from the warm process's (a variable that modules read
        # when imported) is declined and runs itself.
        wait_for_warm_process(state_dir)
        rerun = subprocess.run([sys.executable, "-m", "bigmodel_ray", "run", str(job), "--set",
                                f"train.epochs={stopped + 1}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "TORCH_SHOW_CPP_STACKTRACES": "1"})
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert rerun.stdout.splitlines()[0] == f"attached to the local Ray at {ray.address} (bigmodel-ray up)"
        result = json.loads((metrics.parent / "result.json").read_text())
        assert result["epochs"] == stopped + 1 and result["resumed_from_epoch"] == stopped, result

        # Bad input through the warm process: the command's own one line and exit code 2.
        wait_for_warm_process(state_dir)
        bad = subprocess.run([sys.executable, "-m", "bigmodel_ray", "run", str(job), "--set", "train.epochs=0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith(f"error: {job}: train.epochs"), bad.stderr

        # A command that is killed: the warm process stops its run as Ctrl-C would, and exits.
        wait_for_warm_process(state_dir)
        [taker] = warm_processes(ray.temp_dir)
        metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
        run = run_for_two_epochs(tiny_job("killed", train={"epochs": 20, "batch_size": 32}), metrics)
        run.kill()
        assert "interrupted after epoch" in run.communicate(timeout=120)[1]       # said by the warm process
        deadline = time.time() + 120
        while taker in warm_processes(ray.temp_dir):
            assert time.time() < deadline, "the warm process goes on without its command"
            time.sleep(0.2)
        assert len(metrics.read_text().splitlines()) < 20
        wait_for_warm_process(state_dir)
        assert local_ray.processes(ray.temp_dir), "the runs took the local Ray down with them"
    finally:
        assert main(["down"]) == 0
    assert local_ray.processes(ray.temp_dir) == [] and local_ray.running() is None
    assert not (state_dir / local_ray.TOKEN_FILE).exists() and not Path(ray.temp_dir).exists()
    assert not (state_dir / warm.SOCKET).exists()
    capsys.readouterr()
    assert main(["down"]) == 0 and capsys.readouterr().out.strip() == "no local Ray is up"


def run_for_two_epochs(job: Path, metrics: Path) -> subprocess.Popen:
    """`bigmodel-ray run JOB` started, once its second epoch is logged."""
    run = subprocess.Popen([sys.executable, "-m", "bigmodel_ray", "run", str(job)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert run.poll() is None and time.time() < deadline, run.communicate()[1][-2000:]
        time.sleep(0.2)
    return run


def wait_for_warm_process(state_dir: Path, timeout_s: float = 90) -> None:
    """Until `up`'s warm process listens (it imports PyTorch and Ray first, after the run before it ends)."""
    deadline = time.time() + timeout_s
    while not (state_dir / warm.SOCKET).is_socket():
        assert time.time() < deadline, "no warm process listens"
        time.sleep(0.2)


def warm_processes(temp_dir: str) -> list[int]:
    return [pid for pid in local_ray.processes(temp_dir)
            if b"bigmodel_ray.cli.warm_process" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_down_stops_nothing_but_what_up_started(state_dir, capsys):
    state_dir.mkdir()
    (state_dir / local_ray.STATE_FILE).write_text(json.dumps({"address": "127.0.0.1:1", "temp_dir": "/",
                                                             "dashboard": "", "token_path": "", "cpus": 1}))
    assert main(["down"]) == 2
    assert "temp_dir is not one that `up` made; nothing stopped" in capsys.readouterr().err
    assert local_ray.running() is None               # and a state whose Ray does not answer is not attached to
