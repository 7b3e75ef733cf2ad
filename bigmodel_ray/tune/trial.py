"""A sweep's trial that trains: the job with the trial's values, trained by Ray Train, reporting
to Tune every epoch (`train_trial`; the Tune trainable that calls it is recipes/tune.py's).

The trial builds the job's TorchTrainer inside Tune's function trainable (Ray 2.60's Tune +
Train V2 integration). Ray's own `TuneReportCallback` forwards metrics but only the *path* of a
checkpoint, so Tune would hold no checkpoints: a restored sweep could not continue its trials and
PBT could not clone one. `ReportToTune` hands Tune each epoch's metrics *and* checkpoint instead;
a trial that Tune restarts (after an interruption, or to exploit another trial under PBT) gets
that checkpoint back from `tune.get_checkpoint()` and its workers start from it.
"""

import fnmatch
import json
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Checkpoint
from ray.train.v2.api.callback import UserCallback

from bigmodel_ray import kinds
from bigmodel_ray.storage import RunFolder
from bigmodel_ray.train.epoch_log import RESUMED_ROW
from bigmodel_ray.train.launch import failure, make_trainer
from bigmodel_ray.train.state import STATE_FILE
from bigmodel_ray.train.worker import REPORT_FILE

TRAIN_RUNS = ".train"     # inside the sweep folder: the trials' own Ray Train runs, removed as they end
HISTORIES = "histories"   # inside the sweep folder: <trial id>.jsonl, every epoch a trial trained


@dataclass(frozen=True)
class Trial:
    """Which trial of which sweep is running, with the values it was given (by dotted path).
    `folder` is the sweep's folder as this node sees it: for a sweep in object storage, this
    node's mirror, whose files the trial sends to the bucket as it writes them."""
    folder: RunFolder
    trial_id: str
    config: dict

    @property
    def sweep_dir(self) -> Path:
        return self.folder.local

    def start_history(self) -> None:
        """The history so far (a trial restarted on another node appends to the stored one)."""
        self.folder.fetch(f"{HISTORIES}/{self.trial_id}.jsonl")

    def record(self, metrics: dict) -> None:
        """Append a report to the trial's own history (with the values it trained with). Tune's
        result.json is no substitute: a restarted trial's copy is replaced by a stale synced one."""
        history = history_file(self.sweep_dir, self.trial_id)
        history.parent.mkdir(parents=True, exist_ok=True)
        with history.open("a") as f:
            f.write(json.dumps({**metrics, "config": self.config}) + "\n")
        self.folder.push(history.relative_to(self.sweep_dir).as_posix())

    def train_storage(self, here: bool) -> tuple[str, object]:
        """(storage_path, storage_filesystem) for the trial's own Ray Train runs: this node's
        disk for a loop that runs in the trial's process, else where every worker reaches it."""
        if here or self.folder.fs is None:
            return str(self.sweep_dir / TRAIN_RUNS), None
        return f"{self.folder.remote}/{TRAIN_RUNS}", self.folder.fs


def history_file(sweep_dir, trial_id: str) -> Path:
    return Path(sweep_dir) / HISTORIES / f"{trial_id}.jsonl"


class ReportToTune(UserCallback):
    """Sends each rank-0 report and its checkpoint's path on to the trial: from the Train
    controller, through a Ray queue; in the trial's own process (train/in_process.py), straight
    to Tune (checkpoints kept: one, Tune copies it before the loop goes on)."""

    def __init__(self, send):
        self.send = send

    def after_report(self, run_context, metrics, checkpoint):
        row = {k: v for k, v in metrics[0].items() if k != RESUMED_ROW}      # the history has that epoch
        self.send(row, checkpoint)


def starting_checkpoint(given: Checkpoint | None, trial: Trial) -> Checkpoint | None:
    """Where a (re)started trial continues from.

    PBT hands over another trial's checkpoint: use it. A restored sweep hands back the trial's
    checkpoint that its last state snapshot knew (or none), which may be older than what the
    trial wrote before the driver died (the snapshot is taken every few seconds): continue from
    the trial's latest complete checkpoint in storage instead, so finished work is not trained again.
    """
    if given is not None and f"_{trial.trial_id}_" not in Path(given.path).parent.name:
        return given
    own = stored_checkpoints(trial.folder, f"*_{trial.trial_id}_*")
    return own[-1] if own else given


def stored_checkpoints(folder: RunFolder, trial_dirs: str) -> list[Checkpoint]:
    """The complete checkpoints in the sweep's trial folders named like `trial_dirs`, oldest
    first: by epoch, then by time written. (Not by name: after a restore, Tune's numbering
    restarts from its last snapshot and reuses names.)"""
    fs, root = (folder.fs, folder.remote) if folder.fs is not None else (pafs.LocalFileSystem(), str(folder.local))
    listing = lambda path: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))   # noqa: E731
    dirs = [i.path for i in listing(root) if i.type == pafs.FileType.Directory and fnmatch.fnmatch(i.base_name, trial_dirs)]
    found = []
    for checkpoint in (i for d in dirs for i in listing(d) if i.base_name.startswith("checkpoint_")):
        report, state = fs.get_file_info([f"{checkpoint.path}/{REPORT_FILE}", f"{checkpoint.path}/{STATE_FILE}"])
        if report.type == state.type == pafs.FileType.File:
            with fs.open_input_stream(report.path) as f:
                epoch = json.loads(f.read())["epoch"]
            found.append(((epoch, report.mtime_ns), Checkpoint(checkpoint.path, filesystem=fs)))
    return [c for _, c in sorted(found, key=lambda pair: pair[0])]


def read_report(checkpoint: Checkpoint) -> dict:
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{REPORT_FILE}") as f:
        return json.loads(f.read())


def train_trial(trial: Trial, spec, source: str, plan) -> None:
    """Train the trial's job on Ray Train, handing Tune each epoch's report and checkpoint.
    `plan()` returns the job (completed) and its launch.Plan; it opens the data, so it is only
    called when there is something left to train."""
    from ray import tune
    from ray.util.queue import Queue

    start = starting_checkpoint(tune.get_checkpoint(), trial)
    if start is not None:
        report = read_report(start)
        if report["epoch"] >= spec.train.epochs:
            # Nothing left to train: the trial had finished but the sweep stopped before Tune
            # recorded it, or PBT cloned a finished trial. Repeat the final report.
            tune.report(report)
            return

    run_name = f"{trial.trial_id}-{uuid.uuid4().hex[:6]}"
    spec, job = plan()
    here = kinds.trains_in_trial(spec)        # one CPU worker: the loop runs here (train/in_process.py)
    storage_path, storage_filesystem = trial.train_storage(here)

    def tell_tune(metrics: dict, checkpoint: Checkpoint | None) -> None:
        trial.record(metrics)
        tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem) if checkpoint else None)

    if here:
        trainer = make_trainer(spec, job, name=run_name, storage_path=storage_path, keep=1,
                               callbacks=[ReportToTune(tell_tune)], init_checkpoint=start, here=True)
        fit = trainer.fit
    else:
        reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
        trainer = make_trainer(spec, job, name=run_name, storage_path=storage_path,
                               storage_filesystem=storage_filesystem, keep=2, init_checkpoint=start,
                               callbacks=[ReportToTune(lambda *report: reports.put(report))])
        fit = lambda: _fit_beside(trainer, reports, tell_tune)      # noqa: E731
    try:
        fit()
    except Exception as e:
        raise failure(e, spec, source, trial.folder.uri) from e
    trial.folder.remove(f"{TRAIN_RUNS}/{run_name}")     # Tune holds copies of the checkpoints


def _fit_beside(trainer, reports, tell_tune) -> None:
    """trainer.fit() in a thread while this one (the trial's) tells Tune each report that the
    Train controller sends through the `reports` queue (a Ray actor).

    The queue holds one item, so the controller waits until the trial has taken the previous
    report; the Train run keeps two checkpoints, so the one Tune is still copying stays on disk.
    """
    from ray.util.queue import Empty

    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except Exception as e:          # re-raised in the trial's thread below
            outcome["error"] = e

    fitting = threading.Thread(target=fit, daemon=True)
    fitting.start()
    while fitting.is_alive() or not reports.empty():
        try:
            tell_tune(*reports.get(timeout=0.5))
        except (Empty, queue.Empty):
            continue
    fitting.join()
    if "error" in outcome:
        raise outcome["error"]
