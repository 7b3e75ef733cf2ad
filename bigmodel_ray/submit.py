"""Run jobs on a Ray cluster through the Ray Jobs API: submit, status, logs, stop, list.

`submit` validates the job here, ships the resolved job file in the runtime environment's
`working_dir` (with `--working-dir`, a copy of that folder too) and runs `bigmodel-ray run` on the
cluster as the job's entrypoint. The token for clusters with token authentication comes from
`RAY_AUTH_TOKEN`, the file `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`, as for Ray's own CLI.

Exit codes of `submit --follow` and `logs --follow`: the driver's own exit code when the job
ran to an end (0 SUCCEEDED, 1 failed run, 2 bad input), 3 when it was STOPPED.
"""

import asyncio
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from bigmodel_ray.spec import JobSpec, SpecError, dump

STOPPED_EXIT = 3
# Never shipped with --working-dir: environments, outputs, data and VCS metadata.
_NOT_SHIPPED = (".venv", "venv", ".git", "runs", "data", "__pycache__", "*.egg-info", ".pytest_cache")


def auth_headers() -> dict[str, str]:
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not token and os.path.isfile(path):
        token = Path(path).read_text().strip()
        if os.stat(path).st_mode & 0o077:      # `ray get-auth-token --generate` writes it 0644
            print(f"warning: {path} is readable by other users of this machine: chmod 600 {path}", file=sys.stderr)
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    # The SDK logs each upload and websocket close at INFO; the commands print what matters.
    for name in ("ray.dashboard", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as e:     # Ray raises ConnectionError/RuntimeError/AuthenticationError variants
        raise SpecError(f"{address}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "uthentication" in text or "401" in text or "403" in text:
        return (f"the cluster refused the request ({text[:160]}); set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                f"to its token")
    return text[:300]


def submit(spec: JobSpec, job_file: str, address: str, *, working_dir: str | None = None, pip: list[str] = (),
           say=print) -> str:
    """Submit the job; returns the submission id."""
    if "://" not in spec.storage and not Path(spec.storage).is_absolute() and not spec.storage.startswith("~"):
        # A relative folder would land in the job's temporary working dir on the cluster.
        spec = spec.model_copy(update={"storage": f"~/{spec.storage}"})
        say(f"{spec.name}: run folder {spec.storage}/{spec.name} on the cluster (on several nodes, storage "
            f"must be a folder that every node sees, e.g. NFS: --set storage=/shared/runs)")
    jobs = client(address)
    submission_id = f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    with tempfile.TemporaryDirectory(prefix="bigmodel-ray-submit-") as stage:
        stage = Path(stage) / "job"
        if working_dir:
            shutil.copytree(working_dir, stage, ignore=shutil.ignore_patterns(*_NOT_SHIPPED))
        stage.mkdir(exist_ok=True)
        job_name = f"{spec.name}.bigmodel-ray.yaml"
        (stage / job_name).write_text(dump(spec))
        runtime_env = {"working_dir": str(stage)}
        if pip:
            runtime_env["pip"] = list(pip)
        entrypoint = shlex.join(["python", "-m", "bigmodel_ray.cli", "run", job_name, "--address", "auto"])
        try:
            jobs.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                            metadata={"bigmodel_ray_job": spec.name, "job_file": str(job_file)})
        except Exception as e:
            raise SpecError(f"{address}: submission refused: {_reason(e)}") from None
    say(f"submitted {submission_id} to {address}")
    return submission_id


def follow(address: str, submission_id: str, out=None) -> int:
    """Stream the job's logs to the end, then print any final lines the stream missed."""
    out = out or sys.stdout
    jobs = client(address)
    printed = []

    async def tail():
        async for chunk in jobs.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()
            printed.append(chunk)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; {submission_id} keeps running (bigmodel-ray logs/stop {submission_id})",
              file=sys.stderr)
        return 130
    except Exception as e:      # a dropped stream: the full log below still has everything
        print(f"(log stream ended early: {_reason(e)}; fetching the full log)", file=sys.stderr)
    status = _wait_terminal(jobs, submission_id)
    full, seen = jobs.get_job_logs(submission_id), "".join(printed)
    if full.startswith(seen):
        out.write(full[len(seen):])
    elif seen not in full:
        out.write(full)
    out.flush()
    code = exit_code(jobs, submission_id, status)
    if code and (missing := missing_project(full)):
        print(f"error: {submission_id}: {missing}", file=sys.stderr)
        return 2
    return code


def missing_project(log: str) -> str | None:
    """The one line to say when the cluster's Python could not import this package: the nodes
    run `ray start` from a Python (or venv) where it is not installed."""
    if not re.search(r"No module named '?bigmodel_ray\b", log):
        return None
    return ("the cluster's Python has no bigmodel_ray: install it where the nodes' `ray start` runs "
            "(e.g. `pip install -e .` in that venv on every node, or in the cluster file's setup_commands), "
            "or ship it with the job: --working-dir . (this checkout) or --pip bigmodel-ray")


def _wait_terminal(jobs, submission_id: str, poll_s: float = 0.5):
    while not (status := jobs.get_job_status(submission_id)).is_terminal():
        time.sleep(poll_s)
    return status


def exit_code(jobs, submission_id: str, status) -> int:
    from ray.job_submission import JobStatus

    if status == JobStatus.STOPPED:
        return STOPPED_EXIT
    code = jobs.get_job_info(submission_id).driver_exit_code
    if code is None:
        return 0 if status == JobStatus.SUCCEEDED else 1
    return code


def status(address: str, submission_id: str, say=print) -> int:
    info = _info(client(address), submission_id, address)
    say(f"{submission_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return 0


def logs(address: str, submission_id: str, follow_: bool) -> int:
    jobs = client(address)
    _info(jobs, submission_id, address)
    if follow_:
        return follow(address, submission_id)
    sys.stdout.write(jobs.get_job_logs(submission_id))
    return 0


def stop(address: str, submission_id: str, say=print, wait_s: float = 60) -> int:
    jobs = client(address)
    _info(jobs, submission_id, address)
    jobs.stop_job(submission_id)
    deadline = time.monotonic() + wait_s
    while not (state := jobs.get_job_status(submission_id)).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    say(f"{submission_id}: {state.value}")
    return 0 if state.is_terminal() else 1


def list_jobs(address: str, say=print) -> int:
    rows = []
    for job in sorted(client(address).list_jobs(), key=lambda j: j.start_time or 0):
        start = datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if job.start_time else "-"
        end = job.end_time or (time.time() * 1000 if job.start_time else None)
        took = f"{(end - job.start_time) / 1000:.0f}s" if job.start_time and end else "-"
        name = (job.metadata or {}).get("bigmodel_ray_job", "")
        rows.append((job.submission_id or job.job_id or "-", job.status.value, start, took, name or job.entrypoint))
    header = ("SUBMISSION ID", "STATUS", "STARTED", "TIME", "JOB")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        say("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + str(row[4]))
    return 0


def _info(jobs, submission_id: str, address: str):
    try:
        return jobs.get_job_info(submission_id)
    except Exception as e:
        raise SpecError(f"{address}: no job {submission_id} ({_reason(e)})") from None
