"""A warm process for the next run: while `bigmodel-ray up` runs, one Python process
(cli/warm_process.py) waits with PyTorch, Ray and the recipes already imported, and
`bigmodel-ray run` hands its command to it instead of paying those imports again (~2 s of every
start on two cores). Here: starting one, the hand-over on the command's side, and the protocol.

One process serves one run and then is gone. It has run nothing before the run it takes, so
nothing carries over from one run to the next, and nothing is forked from a process that has
threads. When it takes a run it starts its successor, which waits for it to end before importing
(so the two never compete for the CPUs the run starts on) and then listens in its place; a run
that comes before the successor is ready simply runs in its own command, as without `up`.

The hand-over: over a Unix socket in the local Ray's state folder (mode 0700; each side checks
that the other is the same user), the command sends its arguments, working directory,
environment and umask as JSON, and its stdin, stdout and stderr as file descriptors. The warm
process answers with its pid, runs the command line exactly as the command would have (same
output on the same terminal), and the command exits with its exit code. The command forwards
Ctrl-C (and SIGTERM, SIGHUP) to it; if the command dies, the run is stopped as by Ctrl-C. A warm
process started from other code or settings (a file of this package changed since, another
Python, other RAY_/TORCH_/... variables, which modules read when they are imported) declines
(the reason goes to `warm.log` in the Ray's temp dir), the command runs itself, and a fresh warm
process takes the declining one's place once that command has ended.
"""

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

SOCKET = "warm.sock"
# Variables that imported modules may have read already: a client whose values differ is declined.
IMPORT_TIME_ENV = ("RAY_", "TORCH", "PYTORCH", "OMP_", "MKL_", "CUDA", "NCCL", "PYTHON", "LD_", "HF_", "TRANSFORMERS",
                   "TOKENIZERS", "ARROW", "OPENCV")


def code_stamp() -> str:
    """The Python and this package's files as they are on disk: what a warm process and the
    command must share besides the variables read at import time."""
    package = Path(__file__).parent
    h = hashlib.sha256(f"{sys.executable}\0{sys.version}\0".encode())
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(package)}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    return h.hexdigest()


def import_time_env(env) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def why_not(header: dict, code: str, env: dict) -> str | None:
    """Why a warm process of `code` and `env` cannot run the command of `header` (None: it can)."""
    if header.get("code") != code:
        return "this package's files (or the Python) differ from the warm process's"
    theirs, ours = import_time_env(header.get("env", {})), import_time_env(env)
    if theirs != ours:
        differ = sorted({key for key, _ in set(theirs.items()) ^ set(ours.items())})
        return f"variables differ from the warm process's: {', '.join(differ)}"
    return None


def start(state_dir: Path, temp_dir: str, after_pid: int = 0, env: dict | None = None) -> None:
    """Start a warm process for the local Ray of `temp_dir` (its command line names the temp dir,
    so `down` stops it with that Ray's processes); it waits for `after_pid` to end first."""
    log = open(Path(temp_dir) / "warm.log", "ab")       # what it says before it takes a run
    subprocess.Popen([sys.executable, "-m", "bigmodel_ray.cli.warm_process", str(state_dir), temp_dir, str(after_pid)],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env)
    log.close()


# ---- the hand-over, on the command's side

def hand_over(argv: list[str], state_dir: Path) -> int | None:
    """Have the warm process run `argv`; its exit code, or None when there is none ready (or it declined)."""
    path = state_dir / SOCKET
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.settimeout(5)
            conn.connect(str(path))
            if peer_uid(conn) != os.getuid():
                return None
            header = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask(),
                      "path0": sys.path[0], "code": code_stamp()}
            send(conn, header, fds=[fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)])
            reply = receive(conn)
        except (OSError, ValueError):
            return None
        if "pid" not in reply:
            return None
        pid = reply["pid"]
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: _forward(pid, signum))
        conn.settimeout(None)
        code = None
        while True:         # the exit code, then end of file when the process is gone (its output all written)
            try:
                message = receive(conn)
            except (OSError, ValueError):
                break
            code = message.get("exit", code)
    if code is None:
        print(f"error: the warm process {pid} of `bigmodel-ray up` ended without an exit code", file=sys.stderr)
        return 1
    return code


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:         # closed (`<&-`, some service managers): the warm process gets /dev/null there
        return False


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def peer_uid(conn: socket.socket) -> int:
    return _peer(conn)[1]


def peer_pid(conn: socket.socket) -> int:
    return _peer(conn)[0]


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def send(conn: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(conn, [frame], list(fds))
    else:
        conn.sendall(frame)


def receive(conn: socket.socket, with_fds: bool = False):
    """One length-prefixed JSON message (and the descriptors sent with it), read to its last byte only."""
    first, fds, _, _ = socket.recv_fds(conn, 4, 3) if with_fds else (conn.recv(4), [], 0, None)
    head = first
    while 0 < len(head) < 4:
        head += conn.recv(4 - len(head))
    if len(head) < 4:
        raise ValueError("end of file")
    size, data = struct.unpack("!I", head)[0], b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ValueError("end of file")
        data += more
    message = json.loads(data)
    return (message, fds) if with_fds else message
