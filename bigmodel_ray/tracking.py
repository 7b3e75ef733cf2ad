"""Where a run's epochs and results also go (the job's `tracking` section): TensorBoard event
files and an MLflow run.

  tensorboard: true   `<run folder>/tensorboard/`: every number of each epoch's row in
                      metrics.jsonl (step = epoch), and the test metrics at the end
  mlflow: {uri, experiment}
                      one MLflow run named after the job: the resolved spec as params (dotted
                      keys: `train.optimizer.lr`), the same metrics as epochs finish, and the run
                      folder's result.json, spec.yaml and plots as artifacts

The run folder stays the record: tracking copies from it, on the driver only (workers never
talk to a tracking server). A destination that fails (a server that does not answer, a full
disk) is said once, on one line, and then left alone; the run goes on. The MLflow run's id is
kept in `<run folder>/tracking.json`, so a resumed run logs into the same MLflow run. Sweeps:
tune/tracking.py (a parent run, and one child run per trial).
"""

import json
import math
import os
import re
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from bigmodel_ray import runs
from bigmodel_ray.errors import SpecError

TENSORBOARD_DIR, STATE_FILE = "tensorboard", "tracking.json"
# Uploaded from a finished run's (or sweep's) folder where present, with every *.png
ARTIFACTS = ("result.json", "spec.yaml", "trials.csv", "best.yaml", "pareto.csv")
INSTALL = "pip install 'bigmodel-ray[tracking]'"
# MLflow retries a request 7 times over about 2 minutes by default: with the server down, every
# call would hold the run (and its epoch lines) that long. The user's own settings win.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's limits: params per call, metrics per call, characters of a param's key and value
MAX_PARAMS_PER_CALL, MAX_METRICS_PER_CALL, MAX_KEY_CHARS, MAX_VALUE_CHARS = 100, 1000, 250, 6000
_TEST_KEY = re.compile(r"(^|_)test_")          # test_accuracy, last_epoch_test_f1, source_test_accuracy


def is_test_metric(key: str) -> bool:
    """Test metrics are logged once, at the end (a run's last epoch row carries them too)."""
    return bool(_TEST_KEY.search(key))


def check_ready(spec, source: str) -> None:
    """What tracking needs, checked before anything starts (exit 2): its packages, an MLflow URI."""
    t = spec.tracking
    if t is None:
        return
    missing = [name for name, wanted in (("tensorboardX", t.tensorboard), ("mlflow", t.mlflow)) if wanted
               and not _installed(name)]
    if missing:
        raise SpecError(f"{source}: tracking: needs the {' and '.join(missing)} package: {INSTALL}")
    if t.mlflow is not None and not (t.mlflow.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise SpecError(f"{source}: tracking.mlflow.uri: not given, and MLFLOW_TRACKING_URI is not set")


class Destination:
    """One place results go (TensorBoard files, an MLflow server): used until it first fails,
    which is said once, on one line; then left alone."""

    def __init__(self, name: str):
        self.name, self.down = name, False

    def call(self, fn, *args, **kwargs):
        if self.down:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:          # whatever a client raises: tracking never stops a run
            self.down = True
            print(f"warning: tracking: {self.name} failed ({_first_line(e)}); going on without it "
                  f"(the run folder has every metric)", file=sys.stderr, flush=True)
            return None


class Tracker:
    """One run's destinations. `epoch(row)` as epochs finish, `finish(summary, folder)` at the
    end. Used as a context manager, a run that raises ends as failed (killed on Ctrl-C).
    Without destinations (no `tracking` section) it does nothing."""

    def __init__(self, outputs=()):
        self.outputs = [(dest, out) for dest, out in outputs if out is not None]
        self.ended = False

    def epoch(self, row: dict) -> None:
        # first_step_at: a time of day, not a quantity to plot
        self.log({k: v for k, v in row.items() if k not in ("epoch", "first_step_at") and not is_test_metric(k)},
                 row["epoch"])

    def log(self, values: dict, step: int) -> None:
        numbers = {k: float(v) for k, v in values.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        if numbers:
            for dest, out in self.outputs:
                dest.call(out.scalars, numbers, step)

    def finish(self, summary: dict, folder: Path | None = None, status: str = "FINISHED") -> None:
        """The test metrics in `summary` (a result.json, or a trial's last row) at its last
        epoch, the folder's result files, and the end of the run."""
        self.log({k: v for k, v in summary.items() if is_test_metric(k)}, summary.get("epochs", summary.get("epoch", 0)))
        if folder is not None:
            files = [folder / name for name in ARTIFACTS if (folder / name).is_file()] + sorted(folder.glob("*.png"))
            for dest, out in self.outputs:
                dest.call(out.files, files)
        self.end(status)

    def end(self, status: str) -> None:
        if not self.ended:
            self.ended = True
            for dest, out in self.outputs:
                dest.call(out.end, status)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is not None:
            self.end("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def open_run(spec, run_dir: Path, say=print) -> Tracker:
    """The tracker of a run of `spec` into `run_dir` (created): MLflow run found again or made."""
    t = spec.tracking
    if t is None:
        return Tracker()
    check_ready(spec, spec.name)
    outputs, shown = [], []
    if t.tensorboard:
        tensorboard = Destination("TensorBoard")
        outputs.append((tensorboard, tensorboard.call(TensorBoardRun, run_dir / TENSORBOARD_DIR)))
        shown.append(f"tensorboard --logdir {run_dir / TENSORBOARD_DIR}")
    if t.mlflow is not None:
        server = MlflowServer(t.mlflow)
        run = server.dest.call(server.run, spec.name, flat_params(spec.model_dump(mode="json")),
                               {"bigmodel_ray.kind": spec.kind, "bigmodel_ray.run_dir": str(run_dir)},
                               read_state(run_dir).get("mlflow_run_id"))
        if run is not None:
            write_state(run_dir, {"mlflow_run_id": run.run_id})
            shown.append(f"MLflow run {run.run_id} at {server.shown_uri} (experiment {server.experiment})")
        outputs.append((server.dest, run))
    if shown:
        say(f"{spec.name}: tracking: {'; '.join(shown)}")
    return Tracker(outputs)


class TensorBoardRun:
    def __init__(self, folder: Path):
        # tensorboardX (a Ray Train dependency): torch's own writer needs the tensorboard package
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def files(self, paths) -> None:
        pass

    def end(self, status: str) -> None:
        self.writer.close()


class MlflowServer:
    """An MLflow tracking server (or store) and the experiment runs go into; reached on first use."""

    def __init__(self, settings):
        for name, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.uri = settings.uri or os.environ["MLFLOW_TRACKING_URI"]
        self.experiment, self.shown_uri = settings.experiment, without_credentials(self.uri)
        self.dest = Destination(f"MLflow at {self.shown_uri}")
        self._client = self._experiment_id = None

    def run(self, name: str, params: dict, tags: dict, previous: str | None = None) -> "MlflowRun":
        """A new run, or `previous` again when it is a live run of this experiment here. Params
        a previous run holds already stay as they are (MLflow never changes a param)."""
        from mlflow.entities import Param

        client, experiment_id = self._connect()
        run = _live_run(client, previous, experiment_id) if previous else None
        if run is None:
            run = client.create_run(experiment_id, run_name=name, tags=tags)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        new = [Param(k, v) for k, v in params.items() if k not in run.data.params]
        for i in range(0, len(new), MAX_PARAMS_PER_CALL):
            client.log_batch(run.info.run_id, params=new[i:i + MAX_PARAMS_PER_CALL])
        return MlflowRun(client, run.info.run_id)

    def _connect(self):
        if self._client is None:
            # Imported only here: it takes seconds, and only tracking.mlflow needs it.
            import mlflow

            client = mlflow.MlflowClient(self.uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = client.create_experiment(self.experiment)
                except mlflow.MlflowException:       # made meanwhile by another run
                    self._experiment_id = client.get_experiment_by_name(self.experiment).experiment_id
            else:
                self._experiment_id = found.experiment_id
            self._client = client
        return self._client, self._experiment_id


def _live_run(client, run_id: str, experiment_id: str):
    from mlflow import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):    # another server or store
            return None
        raise
    return run if run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active" else None


class MlflowRun:
    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def scalars(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS_PER_CALL])

    def files(self, paths) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def flat_params(raw: dict, prefix: str = "") -> dict[str, str]:
    """A resolved spec as MLflow params: dotted keys, values as text (JSON for all but strings),
    without the `tracking` section and without credentials or query strings in URLs."""
    params = {}
    for key, value in raw.items():
        if not prefix and key == "tracking":
            continue
        path = prefix + re.sub(r"[^\w.\- ]", "_", str(key))     # model.args keys are free-form
        if isinstance(value, dict) and value:
            params.update(flat_params(value, path + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[path[:MAX_KEY_CHARS]] = without_credentials(text)[:MAX_VALUE_CHARS]
    return params


def without_credentials(text: str) -> str:
    """`scheme://user:secret@host/path?token=...` -> `scheme://***@host/path?***`."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    return re.sub(r"(://[^\s?#]*)\?[^\s#]*", r"\1?***", text)


def read_state(folder: Path) -> dict:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(folder: Path, state: dict) -> None:
    runs.write_atomic(folder / STATE_FILE, json.dumps(state, indent=1) + "\n")


def _installed(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):        # ValueError: sys.modules holds None for it
        return False


def _first_line(e: BaseException) -> str:
    lines = [without_credentials(line.strip()) for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")
