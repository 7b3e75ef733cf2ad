"""The warm process of `bigmodel-ray up` (warm.py says what it is for and how a command hands
over to it): imports what runs need, listens, takes one command, runs it, and exits.

    python -m bigmodel_ray.cli.warm_process STATE_DIR TEMP_DIR AFTER_PID
"""

import json
import os
import select
import signal
import socket
import sys
import threading
from pathlib import Path

from bigmodel_ray.local_ray import STATE_FILE
from bigmodel_ray.warm import SOCKET, peer_pid, peer_uid, receive, send, stamp, start

PRELOAD = ("torch", "ray.data", "ray.train.torch", "ray.tune", "bigmodel_ray.cli", "bigmodel_ray.runtime")


def serve(state_dir: Path, temp_dir: str, after_pid: int) -> None:
    """Once `after_pid` has ended: import, listen, take the first command that matches, run it, exit."""
    _wait_for(after_pid)
    if not _still_up(state_dir, temp_dir):
        return
    # Imports change the environment (OpenCV extends LD_LIBRARY_PATH, Ray sets RAY_CLIENT_MODE):
    # the successor gets it as it was.
    own_env = dict(os.environ)
    own_stamp = stamp(own_env)
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from bigmodel_ray import kinds

    for name in (*kinds.KINDS.values(), kinds.SWEEP):
        importlib.import_module(name)
    listener = _listen(state_dir / SOCKET)
    while True:
        conn, _ = listener.accept()
        fds = []
        try:
            conn.settimeout(10)
            if peer_uid(conn) != os.getuid():
                raise ValueError("another user")
            header, fds = receive(conn, with_fds=True)
            if header.get("stamp") == own_stamp and len(fds) == 3:
                break
            send(conn, {"declined": "other code or settings than this warm process started with"})
            declined = peer_pid(conn)
        except (OSError, ValueError):
            declined = 0
        for fd in fds:          # the command's terminal (or pipes): holding them would keep its readers waiting
            os.close(fd)
        conn.close()
        if declined:            # most often this package changed: a fresh process, once that command is done
            _stop_listening(listener, state_dir / SOCKET)
            start(state_dir, temp_dir, after_pid=declined, env=own_env)
            return
    _stop_listening(listener, state_dir / SOCKET)
    start(state_dir, temp_dir, after_pid=os.getpid(), env=own_env)
    send(conn, {"pid": os.getpid()})
    conn.settimeout(None)
    code = _run(header, fds, conn)
    send(conn, {"exit": code})
    sys.exit(code)          # exit handlers run before the command sees end of file


def _wait_for(pid: int) -> None:
    if pid <= 0:
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    select.select([fd], [], [])         # readable once the process has ended
    os.close(fd)


def _still_up(state_dir: Path, temp_dir: str) -> bool:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())["temp_dir"] == temp_dir
    except (OSError, ValueError, KeyError):
        return False


def _listen(path: Path) -> socket.socket:
    """Listen at `path`, which appears only once it accepts (bound under another name, renamed)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging.unlink(missing_ok=True)
    listener.bind(str(staging))
    listener.listen(4)
    os.replace(staging, path)
    return listener


def _stop_listening(listener: socket.socket, path: Path) -> None:
    try:
        if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
            path.unlink()
    except OSError:
        pass
    listener.close()


def _interrupt_when_closed(conn: socket.socket) -> None:
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGINT)


def _run(header: dict, fds: list[int], conn: socket.socket) -> int:
    """The command line's main() as the command would have run it, on the command's terminal."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    # The same stream objects (modules imported here may hold them), buffered as the command's own:
    # line by line on a terminal.
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.chdir(header["cwd"])
    os.environ.clear()
    os.environ.update(header["env"])
    os.umask(header["umask"])
    sys.path[0] = header["path0"]
    sys.argv = ["bigmodel-ray", *header["argv"]]
    # The command gone (killed) stops the run as Ctrl-C would: its checkpoint is kept.
    threading.Thread(target=_interrupt_when_closed, args=(conn,), daemon=True).start()
    from bigmodel_ray import runtime
    from bigmodel_ray.cli import main

    runtime.WARM_PROCESS = True
    try:
        code = main(header["argv"], here=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
