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
import time
from pathlib import Path

from bigmodel_ray.local_ray import STATE_FILE
from bigmodel_ray.warm import SOCKET, code_stamp, peer_pid, peer_uid, receive, send, start, why_not

PRELOAD = ("torch", "ray.data", "ray.train.torch", "ray.tune", "bigmodel_ray.cli", "bigmodel_ray.runtime")


def serve(state_dir: Path, temp_dir: str, after_pid: int) -> None:
    """Once `after_pid` has ended: import, listen, take the first command that matches, run it, exit."""
    _wait_for(after_pid)
    if not _still_up(state_dir, temp_dir):
        return
    # Imports change the environment (OpenCV extends LD_LIBRARY_PATH, Ray sets RAY_CLIENT_MODE):
    # the successor gets it as it was.
    own_env, own_code = dict(os.environ), code_stamp()
    _preload()
    path = state_dir / SOCKET
    listener, inode = _listen(path)
    try:
        conn, header, fds = _next_command(listener, own_code, own_env)
    except Declined as declined:       # most often this package changed: a fresh process, once that command is done
        start(state_dir, temp_dir, after_pid=declined.pid, env=own_env)
        return
    finally:
        _stop_listening(listener, inode, path)
    start(state_dir, temp_dir, after_pid=os.getpid(), env=own_env)
    send(conn, {"pid": os.getpid()})
    conn.settimeout(None)
    code = _run(header, fds, conn)
    try:
        send(conn, {"exit": code})
    except OSError:         # the command was killed: nobody is waiting for the code
        pass
    sys.exit(code)          # exit handlers run before the command sees end of file


def _preload() -> None:
    import importlib

    from bigmodel_ray import kinds

    for name in (*PRELOAD, *kinds.KINDS.values(), kinds.SWEEP):
        importlib.import_module(name)


class Declined(Exception):
    def __init__(self, pid: int):
        self.pid = pid


def _next_command(listener: socket.socket, code: str, env: dict) -> tuple[socket.socket, dict, list[int]]:
    """(connection, header, its stdin/stdout/stderr) of the first command this process can run;
    Declined(its pid) for a command of other code or settings."""
    while True:
        conn, _ = listener.accept()
        fds, declined = [], 0
        try:
            conn.settimeout(10)
            if peer_uid(conn) == os.getuid():
                header, fds = receive(conn, with_fds=True)
                reason = why_not(header, code, env) or (None if len(fds) == 3 else "no stdin, stdout, stderr")
                if reason is None:
                    return conn, header, fds
                print(f"declined a command: {reason}", file=sys.stderr, flush=True)
                send(conn, {"declined": reason})
                declined = peer_pid(conn)
        except (OSError, ValueError):
            pass
        for fd in fds:          # the command's terminal (or pipes): holding them would keep its readers waiting
            os.close(fd)
        conn.close()
        if declined:
            raise Declined(declined)


def _wait_for(pid: int) -> None:
    """Until process `pid` (not a child of ours) has ended."""
    if pid <= 0:
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:                     # a kernel before 5.3: ask every 0.2 s
        while _alive(pid):
            time.sleep(0.2)
        return
    select.select([fd], [], [])         # readable once the process has ended
    os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):      # gone (its pid since taken by another user's)
        return False


def _still_up(state_dir: Path, temp_dir: str) -> bool:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())["temp_dir"] == temp_dir
    except (OSError, ValueError, KeyError):
        return False


def _listen(path: Path) -> tuple[socket.socket, int]:
    """Listen at `path`, which appears only once it accepts (bound under another name, renamed);
    the listener and the inode of its file (a socket's own fstat says nothing of the file)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging.unlink(missing_ok=True)
    listener.bind(str(staging))
    listener.listen(4)
    inode = staging.stat().st_ino
    os.replace(staging, path)
    return listener, inode


def _stop_listening(listener: socket.socket, inode: int, path: Path) -> None:
    """Close, and remove the socket file unless it is already another process's."""
    try:
        if path.stat().st_ino == inode:
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
