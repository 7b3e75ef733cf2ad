"""A compact live view of a sweep, in place of Ray Tune's wide status tables.

One line when a trial ends (finished, stopped early, or failed) and a status line every
`every_s` seconds: how many trials run, wait, finished, stopped, failed, and the best so far.
"""

import sys
import time

from ray.tune import Callback

from bigmodel_ray.tune.space import trial_values


def short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def describe_config(config: dict) -> str:
    return " ".join(f"{path.rsplit('.', 1)[-1]}={short(v)}" for path, v in trial_values(config).items())


class SweepProgress(Callback):
    def __init__(self, metric: str, mode: str, epochs: int, every_s: float = 15.0):
        self.metric, self.mode, self.epochs, self.every_s = metric, mode, epochs, every_s
        self.best = None        # (value, trial id, epoch)
        self.setup()

    def setup(self, **info):       # also when a restored sweep starts again
        self.start = self.last_status = time.monotonic()

    def _say(self, text: str) -> None:
        print(f"[{_clock(time.monotonic() - self.start)}] {text}", file=sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None:
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (value, trial.trial_id, result.get("epoch"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch, epochs = last.get("epoch", 0), trial_values(trial.config).get("train.epochs", self.epochs)
        how = "finished" if epoch >= epochs else f"stopped at epoch {epoch}/{epochs}"
        value = last.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, float) else ""
        self._say(f"trial {trial.trial_id} {how}  {shown}  {describe_config(trial.config)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} FAILED  {describe_config(trial.config)}  (error in {trial.path})")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last_status < self.every_s:
            return
        self.last_status = now
        self._say(status_line(trials, self.epochs, self.metric, self.best))

    def on_experiment_end(self, trials, **info):
        self._say(status_line(trials, self.epochs, self.metric, self.best))


def status_line(trials, epochs: int, metric: str, best) -> str:
    counts = {"running": 0, "pending": 0, "finished": 0, "stopped": 0, "failed": 0}
    for t in trials:
        if t.status == "TERMINATED":
            done = (t.last_result or {}).get("epoch", 0) >= trial_values(t.config).get("train.epochs", epochs)
            counts["finished" if done else "stopped"] += 1
        elif t.status == "ERROR":
            counts["failed"] += 1
        elif t.status == "RUNNING":
            counts["running"] += 1
        else:
            counts["pending"] += 1
    text = " · ".join(f"{n} {name}" for name, n in counts.items() if n or name in ("running", "finished"))
    if best:
        text += f" | best {metric} {best[0]:.4f} (trial {best[1]}, epoch {best[2]})"
    return text


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


class SendSweep(Callback):
    """What the driver of a sweep in object storage writes while the trials run (`names`: its
    tracking state and TensorBoard files) is sent there every `every_s` seconds, so a driver
    killed on one machine resumes on another; Tune and the trials send the rest themselves."""

    def __init__(self, folder, names, every_s: float = 30.0):
        self.folder, self.names, self.every_s = folder, tuple(names), every_s
        self.last = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        if self.folder.fs is not None and time.monotonic() - self.last > self.every_s:
            self.folder.push(*self.names)
            self.last = time.monotonic()
