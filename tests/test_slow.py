"""Minutes-long checks, run by CI after the default suite (`make test-slow`); the shipped jobs
marked `long` run with `make test-long`."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import ROOT, kill_run

from bigmodel_ray.cli import main

pytestmark = pytest.mark.slow


# Jobs whose data a user prepares first, with the command their header gives.
PREPARE = {"image_folder": ["digits", "--format", "folder"],
           "parquet": [str(ROOT / "jobs" / "synthetic_augmented.yaml"), "--encoding", "jpeg"]}


LONG = pytest.mark.long


@pytest.mark.parametrize("job, floor", [("quickstart", 0.93), ("digits_cnn", 0.97),
                                        pytest.param("mnist1d_transformer", 0.90, marks=LONG),
                                        pytest.param("digits_augmented", 0.97, marks=LONG),
                                        pytest.param("synthetic_augmented", 0.95, marks=LONG),
                                        pytest.param("image_folder", 0.95, marks=LONG),
                                        pytest.param("parquet", 0.95, marks=LONG),
                                        pytest.param("digits_multitask", 0.9, marks=LONG),
                                        pytest.param("digits_dann", 0.5, marks=LONG)])
def test_shipped_jobs_reach_their_accuracy(ray_cluster, tmp_path, job, floor):
    overrides = ["--set", f"storage={tmp_path}"]
    if job in PREPARE:
        src, *options = PREPARE[job]
        assert main(["data", "prepare", src, str(tmp_path / "data"), *options]) == 0
        overrides += ["--set", f"data.path={tmp_path / 'data'}"]
    assert main(["run", str(ROOT / "jobs" / f"{job}.yaml"), *overrides]) == 0
    result = json.loads((tmp_path / job / "result.json").read_text())
    print(f"{job}: test_accuracy {result['test_accuracy']:.4f} in {result['wall_s']:.0f}s")
    assert result["test_accuracy"] >= floor


def test_killed_driver_resumes_on_rerun(s3_bucket, tiny_job, tmp_path):
    # In object storage, the harder case: the rerun also rebuilds its local mirror from the bucket
    # alone (a local rerun resumes in the default suite).
    storage = f"{s3_bucket}/runs"
    job = tiny_job("driverkill", storage=storage, train={"epochs": 8, "batch_size": 32})
    # Own Ray temp dir (short: Ray's socket paths must fit in 107 bytes): its processes are
    # found, and killed, by this path.
    ray_tmp = tempfile.mkdtemp(prefix="bmr-", dir="/tmp")
    cache = tmp_path / "cache"             # where a run in object storage is mirrored
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "BIGMODEL_RAY_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "bigmodel_ray", "run", str(job)]

    def stored(name: str) -> str | None:
        from bigmodel_ray.storage import filesystem
        fs, path = filesystem(f"{storage}/driverkill/{name}")
        try:
            with fs.open_input_stream(path) as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    driver = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while len((stored("metrics.jsonl") or "").splitlines()) < 3:
            assert driver.poll() is None and time.time() < deadline, "run ended before it could be killed"
            time.sleep(0.2)
    finally:
        kill_run(driver, ray_tmp)
    assert stored("result.json") is None
    shutil.rmtree(cache, ignore_errors=True)       # the rerun starts from the bucket alone

    try:
        rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        kill_run(subprocess.Popen(["true"], start_new_session=True), ray_tmp)   # nothing should be left; make sure
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from the last checkpoint" in rerun.stdout
    result = json.loads(stored("result.json"))
    assert result["resumed_from_epoch"] >= 2 and result["epochs"] == 8
    assert [json.loads(line)["epoch"] for line in stored("metrics.jsonl").splitlines()] == list(range(1, 9))
