"""One trial of a sweep: the job with the trial's values, trained by Ray Train, reporting to Tune
(a compress job's trial compresses the sweep's teacher instead: `run_compress_trial`).

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

import torch

from ray.train.v2.api.callback import UserCallback

from bigmodel_ray.spec import validate
from bigmodel_ray.train.state import STATE_FILE
from bigmodel_ray.train.worker import REPORT_FILE
from bigmodel_ray.tune.space import apply, trial_values

TRAIN_RUNS = ".train"     # inside the sweep folder: the trials' own Ray Train runs, removed as they end
HISTORIES = "histories"   # inside the sweep folder: <trial id>.jsonl, every epoch a trial trained


def history_file(sweep_dir, trial_id: str) -> Path:
    return Path(sweep_dir) / HISTORIES / f"{trial_id}.jsonl"


class ReportToTune(UserCallback):
    """Runs in the Train controller: passes each rank-0 report to the trial through a Ray queue.

    The queue holds one item, so the controller waits until the trial has taken the previous
    report; the Train run keeps two checkpoints, so the one Tune is still copying stays on disk.
    """

    def __init__(self, reports):
        self.reports = reports

    def after_report(self, run_context, metrics, checkpoint):
        self.reports.put((metrics[0], checkpoint.path if checkpoint else None))


def starting_checkpoint(given, trial_id: str, sweep_dir: str) -> str | None:
    """Where a (re)started trial continues from.

    PBT hands over another trial's checkpoint: use it. A restored sweep hands back the trial's
    checkpoint that its last state snapshot knew (or none), which may be older than what the
    trial wrote before the driver died (the snapshot is taken every few seconds): continue from
    the trial's latest complete checkpoint on disk instead, so finished work is not trained again.
    """
    if given is not None and f"_{trial_id}_" not in Path(given.path).parent.name:
        return given.path
    own = checkpoints_by_age(Path(sweep_dir).glob(f"*_{trial_id}_*/checkpoint_*"))
    if not own:
        return given.path if given is not None else None
    return str(own[-1])


def checkpoints_by_age(folders) -> list[Path]:
    """Complete checkpoints, oldest first: by epoch, then by time written. (Not by name: after a
    restore, Tune's numbering restarts from its last snapshot and reuses names.)"""
    complete = [c for c in folders if (c / REPORT_FILE).exists() and (c / STATE_FILE).exists()]
    return sorted(complete, key=lambda c: (json.loads((c / REPORT_FILE).read_text())["epoch"],
                                           (c / REPORT_FILE).stat().st_mtime))


def run_trial(config: dict, raw_job: dict, source: str, sweep_dir: str) -> None:
    from ray import tune
    from ray.util.queue import Empty, Queue

    from bigmodel_ray.recipes import plan_for
    from bigmodel_ray.recipes.train import failure, make_trainer

    config = trial_values(config)
    spec = validate(apply(raw_job, config), source)
    trial_id = tune.get_context().get_trial_id()
    if spec.kind == "compress":
        return run_compress_trial(spec, source, sweep_dir, trial_id, config)
    start = starting_checkpoint(tune.get_checkpoint(), trial_id, sweep_dir)
    if start is not None:
        report = json.loads((Path(start) / REPORT_FILE).read_text())
        if report["epoch"] >= spec.train.epochs:
            # Nothing left to train: the trial had finished but the sweep stopped before Tune
            # recorded it, or PBT cloned a finished trial. Repeat the final report.
            tune.report(report)
            return

    run_name = f"{trial_id}-{uuid.uuid4().hex[:6]}"
    train_runs = Path(sweep_dir) / TRAIN_RUNS
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    spec, job = plan_for(spec, source, say=lambda _: None)
    trainer = make_trainer(spec, job, name=run_name, storage_path=str(train_runs), run_dir=None,
                           callbacks=[ReportToTune(reports)], keep=2,
                           init_checkpoint=start)
    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except Exception as e:          # re-raised in the trial's thread below
            outcome["error"] = e

    # The trial's own record of every epoch it trained, with the values it trained with. Tune's
    # result.json is no substitute: a restarted trial's copy is replaced by a stale synced one.
    history = history_file(sweep_dir, trial_id)
    history.parent.mkdir(parents=True, exist_ok=True)
    fitting = threading.Thread(target=fit, daemon=True)
    fitting.start()
    while fitting.is_alive() or not reports.empty():
        try:
            metrics, checkpoint = reports.get(timeout=0.5)
        except (Empty, queue.Empty):
            continue
        with history.open("a") as f:
            f.write(json.dumps({**metrics, "config": config}) + "\n")
        tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint) if checkpoint else None)
    fitting.join()
    if "error" in outcome:
        raise failure(outcome["error"], spec, source, sweep_dir)
    shutil.rmtree(train_runs / run_name, ignore_errors=True)    # Tune holds copies of the checkpoints


def run_compress_trial(spec, source: str, sweep_dir: str, trial_id: str, config: dict) -> None:
    """Compress the teacher with this trial's values; report the final candidate's measurements
    once and keep it as `candidates/<trial id>.pt2` in the sweep folder."""
    from ray import tune

    from bigmodel_ray.compress import measure, quantize
    from bigmodel_ray.recipes import compress as recipe

    say = lambda _: None      # noqa: E731 — the sweep's progress view reports
    spec, teacher, _, job, evaluator = recipe.prepare(spec, source, say)
    work = Path(sweep_dir) / TRAIN_RUNS / f"{trial_id}-{uuid.uuid4().hex[:6]}"
    final = recipe.compress(spec, source, teacher, job, evaluator, work, say)[-1]
    m = spec.compress.measure
    params, nonzeros = measure.parameter_counts(final.model)
    metrics = {"epoch": 1, **evaluator(final.model), "params": params, "nonzeros": nonzeros,
               "bytes": measure.serialized_bytes(final.model)}
    runner = quantize.compiled(final.model) if final.compiled else final.model
    x = torch.cat([x for x, _ in evaluator.splits["test"]])
    for batch in m.batch_sizes:
        metrics[f"latency_ms_bs{batch}"] = measure.latencies({"m": runner}, measure.batch_of(x, batch),
                                                               m.threads, m.rounds)["m"]
    recipe.save_candidates([recipe.Candidate(trial_id, final.model)], Path(sweep_dir), job.data.input_shape,
                           job.data.num_classes, evaluator.example, say)
    shutil.rmtree(work, ignore_errors=True)
    history = history_file(sweep_dir, trial_id)
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a") as f:
        f.write(json.dumps({**metrics, "config": config}) + "\n")
    tune.report(metrics)
