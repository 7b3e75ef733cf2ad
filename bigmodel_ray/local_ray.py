"""`bigmodel-ray up` / `down`: a Ray that stays up on this machine, so that runs skip starting one.

`up` starts a Ray head with `ray start` (token auth, every server on 127.0.0.1, its own temp
dir and free ports) and writes where it is to a state folder (~/.cache/bigmodel_ray/local-ray,
or $BIGMODEL_RAY_LOCAL); `run` and the other commands that start Ray attach to it while it
answers. `down` stops exactly the processes of that Ray, found by its temp dir (never `ray
stop`, which kills every Ray on the machine).
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bigmodel_ray import warm
from bigmodel_ray.errors import SpecError
from bigmodel_ray.storage import cache_dir

STATE_ENV, STATE_FILE, TOKEN_FILE = "BIGMODEL_RAY_LOCAL", "state.json", "token"


@dataclass
class LocalRay:
    address: str        # the GCS, HOST:PORT
    dashboard: str      # http://127.0.0.1:PORT (state API, Jobs API)
    temp_dir: str
    token_path: str
    cpus: int


def state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or cache_dir() / "local-ray")


def running() -> LocalRay | None:
    """The Ray that `up` started, if its state is there and its GCS answers."""
    try:
        ray = LocalRay(**json.loads((state_dir() / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    host, port = ray.address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return None
    return ray


def up(cpus: int, object_store_mb: int, environment: dict[str, str], say=print) -> LocalRay:
    """Start the local Ray (`environment`: variables its processes need, e.g. runtime.ray_env())."""
    if ray := running():
        raise SpecError(f"up: a local Ray is already up at {ray.address} (bigmodel-ray down stops it)")
    down(say=lambda _: None)                    # what a crashed one left behind
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    token = folder / TOKEN_FILE
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix="bmr-up-", dir="/tmp")    # short: socket paths must fit in 107 bytes
    gcs, dashboard, client, agent, agent_grpc, metrics, runtime_env = free_ports(7)
    ray = LocalRay(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", temp_dir, str(token), cpus)
    env = {**os.environ, **environment, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_API_SERVER_ADDRESS": ray.dashboard}      # Ray Train's placement-group cleaner asks it
    env.pop("RAY_AUTH_TOKEN", None)
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", "127.0.0.1",
               "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--include-dashboard", "true", "--ray-client-server-port", str(client),
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
               "--num-cpus", str(cpus), "--object-store-memory", str(object_store_mb * 2**20),
               "--temp-dir", temp_dir, "--disable-usage-stats"]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        stop(temp_dir, gcs)
        lines = [line for line in started.stderr.splitlines() if line.strip()]
        raise SpecError(f"up: ray start failed: {lines[-1] if lines else started.returncode}")
    (folder / STATE_FILE).write_text(json.dumps(asdict(ray)))
    warm.start(folder, temp_dir)       # the next run's Python, with its imports done
    say(f"local Ray up at {ray.address} ({cpus} CPUs, dashboard {ray.dashboard}); runs attach to it "
        f"until `bigmodel-ray down`")
    return ray


def down(say=print) -> bool:
    """Stop the local Ray's processes and forget it; whether there was one."""
    folder = state_dir()
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    # What is killed and removed is found by this path: only ever one that `up` made.
    if not re.fullmatch(r"/tmp/bmr-up-\w+", str(state.get("temp_dir"))):
        raise SpecError(f"down: {folder / STATE_FILE}: temp_dir is not one that `up` made; nothing stopped")
    stop(state["temp_dir"], int(state["address"].rsplit(":", 1)[1]))
    shutil.rmtree(state["temp_dir"], ignore_errors=True)
    for name in (STATE_FILE, TOKEN_FILE, warm.SOCKET):
        (folder / name).unlink(missing_ok=True)
    say(f"local Ray at {state['address']} stopped")
    return True


def processes(temp_dir: str, gcs_port: int | None = None) -> list[int]:
    """Processes whose command line names the Ray's temp dir, and all their descendants.

    Ray's client server names neither the temp dir nor a parent of ours (`ray start` exits and
    leaves it to init): with `gcs_port`, a process given `--address=HOST:<gcs_port>` is ours too.
    """
    ours = re.compile(re.escape(temp_dir) + (rf"|--address=\S+:{gcs_port}\b" if gcs_port else ""))
    parents, cmdlines = {}, {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdlines[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(proc.name)] = int(stat[1])
            if stat[0] == "Z":
                cmdlines.pop(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    found = {pid for pid, cmd in cmdlines.items() if ours.search(cmd) and pid != os.getpid()}
    while True:
        more = {pid for pid, parent in parents.items() if parent in found and pid in cmdlines} - found
        if not more:
            return sorted(found)
        found |= more


def stop(temp_dir: str, gcs_port: int | None = None) -> None:
    """SIGTERM the Ray's processes, SIGKILL what is left after 5 s (its GCS and raylet often are)."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        for pid in processes(temp_dir, gcs_port):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while processes(temp_dir, gcs_port) and time.monotonic() < deadline:
            time.sleep(0.2)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
