"""`bigmodel-ray cluster up|down|status FILE`: thin wrappers over Ray's cluster launcher.

They run the `ray` commands a user of `ray up` would type (shown before running), so the
launcher's own prompts, output and cached state behave exactly as documented by Ray. `--cluster
FILE` on submit/status/logs/stop/list reaches the head's dashboard through `ray dashboard FILE`
(an SSH port-forward): the cluster files keep the dashboard on the head's loopback interface.
"""

import contextlib
import importlib.util
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bigmodel_ray.errors import SpecError
from bigmodel_ray.runtime import free_port
from bigmodel_ray.storage import STORAGE_ENV

# Ray's CLI on the head reads the token the cluster files install (see cluster/*.yaml).
_HEAD_STATUS = "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token ray status"


def ray_cli() -> str:
    """The `ray` next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).with_name("ray")
    found = str(local) if local.exists() else shutil.which("ray")
    if not found:
        raise SpecError("the `ray` command is not installed here (pip install 'ray[default]')")
    return found


# Ray's launcher imports the cloud's SDK on this machine too, not only on the nodes.
PROVIDER_SDKS = {"aws": ("boto3", "aws"), "gcp": ("googleapiclient", "gcp")}     # type -> (module, our extra)


def _checked(cluster_file: str) -> str:
    """The cluster file, once it exists and its provider's SDK is installed here."""
    path = Path(cluster_file)
    if not path.is_file():
        raise SpecError(f"{cluster_file}: no such cluster file")
    try:
        provider = (yaml.safe_load(path.read_text()) or {}).get("provider") or {}
    except (yaml.YAMLError, AttributeError):
        raise SpecError(f"{cluster_file}: not a cluster launcher file (a YAML mapping with a provider)") from None
    module, extra = PROVIDER_SDKS.get(provider.get("type") if isinstance(provider, dict) else None, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise SpecError(f"{cluster_file}: provider.type: {provider['type']} needs its SDK ({module}) on this machine: "
                        f"pip install -e '.[{extra}]'")
    return cluster_file


def default_storage(cluster_file: str) -> str | None:
    """The storage the cluster file gives its nodes for jobs that set none: the variable in its
    docker run_options (`-e BIGMODEL_RAY_STORAGE=s3://BUCKET/runs`), the one place it is named."""
    try:
        config = yaml.safe_load(Path(cluster_file).read_text())
        options = config["docker"]["run_options"]
        tokens = shlex.split(" ".join(str(o) for o in options))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
    for flag, value in zip(tokens, tokens[1:] + [""]):
        given = value if flag in ("-e", "--env") else flag.removeprefix("--env=") if flag.startswith("--env=") else ""
        if given.startswith(f"{STORAGE_ENV}="):
            return given.split("=", 1)[1] or None
    return None


def commands(verb: str, cluster_file: str, yes: bool) -> list[list[str]]:
    ray, f = ray_cli(), _checked(cluster_file)
    confirm = ["-y"] if yes else []
    return {
        "up": [[ray, "up", f, *confirm]],
        "down": [[ray, "down", f, *confirm]],
        "status": [[ray, "get-head-ip", f], [ray, "exec", f, _HEAD_STATUS]],
    }[verb]


def run(verb: str, cluster_file: str, yes: bool = False) -> int:
    for argv in commands(verb, cluster_file, yes):
        print("$ " + " ".join(argv[1:] and ["ray", *argv[1:]]), flush=True)
        if code := subprocess.call(argv):
            return code
    return 0


@contextlib.contextmanager
def dashboard_address(cluster_file: str, timeout_s: float = 60):
    """Forward the head's dashboard to a free local port for the duration of the block."""
    port = free_port()
    tunnel = subprocess.Popen([ray_cli(), "dashboard", _checked(cluster_file), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if tunnel.poll() is not None or time.monotonic() > deadline:
                err = (tunnel.stderr.read() or b"").decode(errors="replace").strip().splitlines()
                raise SpecError(f"{cluster_file}: cannot reach the head's dashboard through `ray dashboard` "
                                f"({err[-1] if err else 'timed out'}); is the cluster up (bigmodel-ray cluster up)?")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        tunnel.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            tunnel.wait(timeout=10)
