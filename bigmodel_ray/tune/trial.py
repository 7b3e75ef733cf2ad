"""One trial of a sweep: the job with the trial's values, trained by Ray Train, reporting to Tune.

The trial is a Tune function trainable that builds the job's TorchTrainer (Ray 2.60's Tune +
Train V2 integration). Ray's own `TuneReportCallback` forwards metrics but only the *path* of a
checkpoint, so Tune would hold no checkpoints: a restored sweep could not continue its trials and
PBT could not clone one. `ReportToTune` hands Tune each epoch's metrics *and* checkpoint instead;
a trial that Tune restarts (after an interruption, or to exploit another trial under PBT) gets
that checkpoint back from `tune.get_checkpoint()` and its workers start from it.
"""

import json
import queue
import shutil
import threading
import uuid
from pathlib import Path

from ray.train.v2.api.callback import UserCallback

from bigmodel_ray.spec import validate
from bigmodel_ray.train.worker import REPORT_FILE
from bigmodel_ray.tune.space import apply

TRAIN_RUNS = ".train"     # inside the sweep folder: the trials' own Ray Train runs, removed as they end


class ReportToTune(UserCallback):
    """Runs in the Train controller: passes each rank-0 report to the trial through a Ray queue.

    The queue holds one item, so the controller waits until the trial has taken the previous
    report; the Train run keeps two checkpoints, so the one Tune is still copying stays on disk.
    """

    def __init__(self, reports):
        self.reports = reports

    def after_report(self, run_context, metrics, checkpoint):
        self.reports.put((metrics[0], checkpoint.path if checkpoint else None))


def run_trial(config: dict, raw_job: dict, source: str, sweep_dir: str) -> None:
    from ray import tune
    from ray.util.queue import Empty, Queue

    from bigmodel_ray.recipes.train import failure, make_trainer, plan

    spec = validate(apply(raw_job, config), source)
    start = tune.get_checkpoint()
    if start is not None:
        report = json.loads((Path(start.path) / REPORT_FILE).read_text())
        if report["epoch"] >= spec.train.epochs:
            # The trial had finished, but the sweep was stopped before Tune recorded it: repeat
            # its final report instead of training again.
            tune.report(report)
            return

    run_name = f"{tune.get_context().get_trial_id()}-{uuid.uuid4().hex[:6]}"
    train_runs = Path(sweep_dir) / TRAIN_RUNS
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = make_trainer(spec, plan(spec, source), name=run_name, storage_path=str(train_runs), run_dir=None,
                           callbacks=[ReportToTune(reports)], keep=2,
                           init_checkpoint=start.path if start is not None else None)
    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except Exception as e:          # re-raised in the trial's thread below
            outcome["error"] = e

    fitting = threading.Thread(target=fit, daemon=True)
    fitting.start()
    try:
        while fitting.is_alive() or not reports.empty():
            try:
                metrics, checkpoint = reports.get(timeout=0.5)
            except (Empty, queue.Empty):
                continue
            tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint) if checkpoint else None)
    finally:
        fitting.join(timeout=0 if fitting.is_alive() else None)
    if "error" in outcome:
        raise failure(outcome["error"], spec, source, sweep_dir)
    shutil.rmtree(train_runs / run_name, ignore_errors=True)    # Tune holds copies of the checkpoints
