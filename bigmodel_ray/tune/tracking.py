"""A sweep's tracking (bigmodel_ray/tracking.py does a run's): one parent MLflow run for the
sweep, with the sweep's spec as params and its trials.csv, best.yaml and plots as artifacts at
the end, and one child run per trial (tag `mlflow.parentRunId`; params: the spec with the
trial's values) with its metrics per epoch; TensorBoard files per trial in
`<sweep>/tensorboard/<trial id>/`.

It follows the trials' histories (`<sweep>/histories/<trial id>.jsonl`, a line per epoch that
each trial appends) from the driver, as progress.py follows a run's metrics.jsonl, rather than
being a Tune callback: Tune pickles its callbacks into the sweep's saved state and a restored
sweep runs those copies, so a callback would keep the tracking settings of the sweep's first
start (and a live client does not pickle). `<sweep>/tracking.json` keeps the MLflow run ids and
how many lines of each history were sent: a restored sweep logs into the same runs, only what
is new.
"""

import json
import threading
from pathlib import Path

from bigmodel_ray import tracking
from bigmodel_ray.spec.overrides import apply
from bigmodel_ray.tune.trial import HISTORIES

# How a trial's child run ends, by the trial's status in the sweep's results
TRIAL_STATUS = {"finished": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "unfinished": "KILLED"}
FOLLOW_EVERY_S = 1.0


class SweepTracker:
    """Used as a context manager around the trials; `finish(summary, records)` once they ended."""

    def __init__(self, spec, raw_job: dict, sweep_dir: Path, say=print):
        t = spec.tracking
        self.name, self.raw_job, self.sweep_dir = spec.name, raw_job, sweep_dir
        self.state = tracking.read_state(sweep_dir)
        self.state.setdefault("trials", {})
        self.trials: dict[str, tracking.Tracker] = {}
        self.tensorboard = tracking.Destination("TensorBoard") if t.tensorboard else None
        self.server = tracking.MlflowServer(t.mlflow) if t.mlflow is not None else None
        self.parent_id = None
        outputs, shown = [], []
        if self.tensorboard is not None:
            shown.append(f"tensorboard --logdir {sweep_dir / tracking.TENSORBOARD_DIR}")
        if self.server is not None:
            run = self.server.dest.call(self.server.run, spec.name, tracking.flat_params(spec.model_dump(mode="json")),
                                        {"bigmodel_ray.kind": spec.kind, "bigmodel_ray.sweep_dir": str(sweep_dir)},
                                        self.state.get("mlflow_run_id"))
            if run is not None:
                self.parent_id = self.state["mlflow_run_id"] = run.run_id
                tracking.write_state(sweep_dir, self.state)
                shown.append(f"MLflow run {run.run_id} at {self.server.shown_uri} (experiment "
                             f"{self.server.experiment}), a child run per trial")
            outputs.append((self.server.dest, run))
        self.parent = tracking.Tracker(outputs)
        if shown:
            say(f"{spec.name}: tracking: {'; '.join(shown)}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, kind, error, tb):
        self._stop.set()
        self._thread.join()
        self._poll()          # the last epochs may land after the last poll
        if kind is not None:
            status = "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
            for trial in self.trials.values():
                trial.end(status)
            self.parent.end(status)

    def finish(self, summary: dict, records) -> None:
        """End every trial's run as its trial ended, then the sweep's, with the best trial's
        metrics (`best_*`) and the sweep folder's result files."""
        for r in records:
            known = self.state["trials"].setdefault(r.trial_id, {"rows": 0})
            if not known.get("ended"):
                self._trial(r.trial_id, r.config).finish(r.last, status=TRIAL_STATUS[r.status])
                known["ended"] = r.status != "unfinished"      # an unfinished one goes on when the sweep resumes
        self._save()
        statuses = {r.status for r in records}
        best = summary.get("best") or {}
        self.parent.log({f"best_{k}": v for k, v in best.items()}, best.get("epoch", 0))
        self.parent.finish({}, self.sweep_dir, "KILLED" if "unfinished" in statuses
                           else "FAILED" if "failed" in statuses else "FINISHED")

    def _follow(self):
        while not self._stop.wait(FOLLOW_EVERY_S):
            self._poll()

    def _poll(self):
        for path in sorted((self.sweep_dir / HISTORIES).glob("*.jsonl")):
            known = self.state["trials"].setdefault(path.stem, {"rows": 0})
            try:
                lines = path.read_text().splitlines()[known.get("rows", 0):]
            except OSError:
                continue
            sent = 0
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:     # a line being written right now
                    break
                trial = self._trial(path.stem, row.get("config") or {})
                trial.epoch(row)
                if any(tracking.is_test_metric(k) for k in row):    # the trial's last epoch
                    trial.finish(row)
                    known["ended"] = True
                sent += 1
            if sent:
                known["rows"] = known.get("rows", 0) + sent
                self._save()

    def _trial(self, trial_id: str, values: dict) -> tracking.Tracker:
        """The trial's tracker, its MLflow child run made (or found again) on first use."""
        if trial_id in self.trials:
            return self.trials[trial_id]
        known = self.state["trials"].setdefault(trial_id, {"rows": 0})
        outputs = []
        if self.tensorboard is not None:
            folder = self.sweep_dir / tracking.TENSORBOARD_DIR / trial_id
            outputs.append((self.tensorboard, self.tensorboard.call(tracking.TensorBoardRun, folder)))
        if self.server is not None and self.parent_id is not None:
            tags = {"mlflow.parentRunId": self.parent_id, "bigmodel_ray.trial": trial_id}
            run = self.server.dest.call(lambda: self.server.run(
                f"{self.name}-{trial_id}", tracking.flat_params(apply(self.raw_job, values)), tags,
                known.get("mlflow_run_id")))
            if run is not None:
                known["mlflow_run_id"] = run.run_id
            outputs.append((self.server.dest, run))
        self.trials[trial_id] = tracking.Tracker(outputs)
        return self.trials[trial_id]

    def _save(self):
        tracking.write_state(self.sweep_dir, self.state)


class NoSweepTracking:
    """A sweep without a `tracking` section."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def finish(self, summary: dict, records) -> None:
        pass


def open_sweep(spec, raw_job: dict, sweep_dir: Path, say=print):
    if spec.tracking is None:
        return NoSweepTracking()
    tracking.check_ready(spec, spec.name)
    return SweepTracker(spec, raw_job, sweep_dir, say)
