"""Starting or joining Ray, quietly unless asked otherwise."""

import atexit
import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from bigmodel_ray import local_ray
from bigmodel_ray.errors import RunFailed, first_line

STATE_API = None    # the embedded Ray's dashboard URL: pass it to ray.util.state calls made here
# (not set in os.environ: the Jobs SDK would then send every submission to this instance)
WARM_PROCESS = False    # whether this process is the warm process of `bigmodel-ray up` (warm.py)
_LOCAL = False      # whether the Ray joined is one of this machine's own (embedded, or `up`)


def start_ray(address: str | None = None, verbose: bool = False, dashboard: bool = False,
              num_cpus: float | None = None, object_store_mb: int | None = None, state_api: bool = False) -> None:
    """Embedded Ray in this process (address None; the local Ray of `bigmodel-ray up` instead
    while it is up), or attach to a running cluster.

    `num_cpus` (embedded only): logical CPUs to offer, at least the machine's cores. A job asks
    for its trainers' CPUs plus `resources.data_cpus`, so the data pipeline's tasks always find a
    CPU even when the trainers hold every core (they then share the cores, as they must).

    `object_store_mb` (embedded only) sizes the shared-memory object store. Ray's default (30 %
    of RAM) lets streamed blocks land on fresh pages until the whole store has been touched, so
    the processes' resident memory grows with the amount of data streamed (measured: 1.47x peak
    for 10x data); a store a few times the pipeline's budget reuses its pages instead.

    The embedded instance runs no dashboard unless asked: `dashboard` serves it on the usual
    8265, `state_api` on a free port (tests that look up Ray's actors). Starting it costs ~1 s of
    `ray.init` and its processes' imports compete with the run's start; nothing a run does needs
    it (Ray Train's placement-group cleaner, which asks it, is left out on a Ray of this machine:
    train/trainer.py). With a dashboard, every process of the job is pointed at it: the state
    API's auto-detection picks another Ray's dashboard (127.0.0.1:8265) on a shared machine.
    """
    global STATE_API, _LOCAL
    local = local_ray.running() if address is None and not _ray_started() else None
    _LOCAL = address is None
    for key, value in ray_env(local=address is None).items():
        os.environ.setdefault(key, value)
    if not verbose:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if local is not None:           # `bigmodel-ray up` is running: attach to it with its token
        _use_token(local.token_path)
        address, STATE_API = local.address, local.dashboard
        how = "bigmodel-ray up, run by its warm process" if WARM_PROCESS else "bigmodel-ray up"
        print(f"attached to the local Ray at {local.address} ({how})", flush=True)
    elif address is None and not _ray_started():
        _private_token()
    import ray
    import ray.data

    if ray.is_initialized():
        return
    cpus = None if address is not None else math.ceil(max(os.cpu_count() or 1, num_cpus or 0))
    attach = {"_node_ip_address": "127.0.0.1"} if local is not None else {}     # the node `up` started
    served = address is None and (dashboard or state_api)
    port = 8265 if dashboard else free_port()
    embedded = {} if address is not None else {
        # Only this machine talks to it: the dashboard / Jobs API binds 127.0.0.1 (Ray's default,
        # stated), and the node advertises the loopback address. Ray 2.60's gRPC servers (GCS,
        # raylet) bind every interface regardless; the token is what keeps others out of them.
        "num_cpus": cpus, "include_dashboard": served, "_node_ip_address": "127.0.0.1",
        "object_store_memory": object_store_mb * 2**20 if object_store_mb else None}
    if served:
        embedded.update(dashboard_host="127.0.0.1", dashboard_port=port,
                        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
    try:
        ray.init(address=address, log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR,
                 **embedded, **attach)
    except Exception as e:      # e.g. its processes did not come up in time on an overloaded machine
        raise RunFailed(f"Ray did not start{f' at {address}' if address else ''}: {first_line(e)}") from None
    if served:
        STATE_API = embedded["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"]
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.print_on_execution_start = verbose
    data_ctx.enable_progress_bars = verbose and sys.stderr.isatty()
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.rllib"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def on_this_machine() -> bool:
    """Whether this process's Ray is a single node on this machine: embedded, or `bigmodel-ray up`."""
    return _LOCAL


def ray_env(local: bool = True) -> dict[str, str]:
    """Settings that Ray's processes read from their environment (embedded Ray, `up`)."""
    env = {"RAY_USAGE_STATS_ENABLED": "0",
           # Train's controller polls its workers this often (Ray's default: 2 s); each epoch's
           # report waits for a poll, so the default adds up to 2 s per epoch on short epochs.
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    if local:
        # Ray starts worker processes at nice 15 so its control plane stays responsive; on a
        # machine of our own that only makes training yield to every other process (measured:
        # 0.84x of torchrun's throughput on 2 cores). Run workers at normal priority, as torchrun does.
        env["RAY_worker_niceness"] = "0"
        # Spot-instance preemption watching means nothing for a single local node.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return env


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _private_token() -> None:
    """Token authentication for the embedded Ray, with a token of its own (mode 0600 in a private
    folder, removed at exit): without it any local user could submit code through the dashboard's
    Jobs API or the GCS and have it run as us. Ray reads RAY_AUTH_* from the environment only;
    its processes inherit it."""
    _remove_orphan_tokens()
    folder = Path(tempfile.mkdtemp(prefix=f"{TOKEN_PREFIX}{os.getpid()}-"))      # mode 0700
    token = folder / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    atexit.register(shutil.rmtree, folder, True)
    _use_token(token)


TOKEN_PREFIX = "bigmodel-ray-auth-"


def _remove_orphan_tokens() -> None:
    """Token folders of this user's embedded Rays whose process is gone without its exit handler
    (killed): removed, so that a killed run leaves no token behind for long. The folder is named
    by its process; one whose process still runs (or is another's of the same id) is left alone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TOKEN_PREFIX}*-*"):
        pid = folder.name.removeprefix(TOKEN_PREFIX).split("-")[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid() or _alive(int(pid)):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process
        pass
    return True


def _use_token(path) -> None:
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
    os.environ.pop("RAY_AUTH_TOKEN", None)     # it would win over the file
    if "ray" in sys.modules:        # Ray read the auth mode when it was imported: make it read again
        from ray._raylet import Config

        Config.initialize("")


def free_port() -> int:
    return local_ray.free_ports(1)[0]
