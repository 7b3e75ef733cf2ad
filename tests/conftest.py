import atexit
import os
import shutil
import tempfile

# Read by ray.init and forwarded to Train controller/workers: must be set before Ray starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Credentials for the S3-compatible server a test starts (it takes any): the Ray workers that
# write checkpoints there find them in their environment, as on a real cluster.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# A Ray that `bigmodel-ray up` keeps running on this machine is not the tests': they start their own.
os.environ["BIGMODEL_RAY_LOCAL"] = tempfile.mkdtemp(prefix="bmr-local-")
atexit.register(shutil.rmtree, os.environ["BIGMODEL_RAY_LOCAL"], True)

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray instance for the whole session (starting Ray costs ~10 s)."""
    import ray

    from bigmodel_ray.runtime import start_ray

    # 3 CPUs = 2 trainers + the data pipeline, what `bigmodel-ray run` asks for on this 2-core
    # machine. The dashboard (for the state API) runs on a free port, never a shared 8265.
    start_ray(num_cpus=3, state_api=True)
    yield
    ray.shutdown()


def _die_with_parent():
    """In a server's process before it starts: end it when the test process ends, even killed."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)       # PR_SET_PDEATHSIG


@contextmanager
def _local_server(argv: list[str], folder: Path, what: str, env_var: str, address: str):
    """Run `argv` (a server on 127.0.0.1) until the block ends, with `env_var` = `address`
    meanwhile: how the project, and Ray's workers, find it. Its output goes to folder/server.log."""
    import socket

    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            port, deadline = int(address.rsplit(":", 1)[1]), time.time() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert server.poll() is None and time.time() < deadline, f"{what} did not start"
                    time.sleep(0.1)
            os.environ[env_var] = address
            yield
        finally:
            os.environ.pop(env_var, None)
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_bucket(tmp_path_factory):
    """An S3-compatible server (moto's) on 127.0.0.1 for the session, with an empty bucket;
    yields the bucket's URI. The server runs in a process of its own, stopped at the end."""
    pytest.importorskip("moto")
    import pyarrow.fs as pafs

    from bigmodel_ray.runtime import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with _local_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                       tmp_path_factory.mktemp("s3"), "the S3 server", "AWS_ENDPOINT_URL", endpoint):
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("runs-bucket")
        yield "s3://runs-bucket"


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
    """A Google Cloud Storage emulator on 127.0.0.1 for the session, with an empty bucket; yields
    the bucket's URI (STORAGE_EMULATOR_HOST names it, as for Google's own libraries)."""
    pytest.importorskip("gcp_storage_emulator")
    import pyarrow.fs as pafs

    from bigmodel_ray.runtime import free_port

    port = free_port()
    with _local_server([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                        "--port", str(port), "--in-memory"], tmp_path_factory.mktemp("gcs"), "the GCS emulator",
                       "STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}"):
        pafs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{port}", scheme="http",
                           project_id="test").create_dir("runs-bucket")
        yield "gs://runs-bucket"


TINY_JOB = {
    "kind": "train",
    "seed": 0,
    "data": {"source": "mnist1d"},
    "model": {"name": "cnn1d", "args": {"channels": [8, 16], "kernel_size": 5}},
    "train": {"epochs": 2, "batch_size": 128, "optimizer": {"name": "adamw", "lr": 0.01}},
    "resources": {"workers": 2},
}


@pytest.fixture
def tiny_job(tmp_path):
    """Write a tiny MNIST-1D job (2 workers, 2 epochs) whose runs land in tmp_path/runs."""

    def write(name="tiny", **sections) -> Path:
        job = {**TINY_JOB, "name": name, "storage": str(tmp_path / "runs")}
        for key, value in sections.items():
            job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    return write


@pytest.fixture(scope="session")
def reviews_subset(tmp_path_factory):
    """3,000 real reviews (title, text, department as a string) as a parquet file of our own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bigmodel_ray.data.fetch import fetch

    source = fetch("reviews", say=lambda _: None)[0]
    table = pq.read_table(source, columns=["Title", "Review Text", "Department Name"])
    table = table.filter(pa.compute.is_in(table["Department Name"], pa.array(["Tops", "Dresses", "Bottoms"])))
    path = tmp_path_factory.mktemp("reviews") / "reviews.parquet"
    pq.write_table(table.slice(0, 3000), path)
    return path


def processes_mentioning(marker: str) -> list[int]:
    """Processes with `marker` in their command line or environment: Ray renames its workers'
    command lines (ray::...), but they inherit the driver's environment (RAY_TMPDIR)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and any(marker.encode() in (proc / part).read_bytes() for part in ("cmdline", "environ")):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def kill_run(driver: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the driver's process group, then any Ray process of its private temp dir."""
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    for _ in range(50):
        left = [p for p in processes_mentioning(ray_tmp) if p != os.getpid()]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
