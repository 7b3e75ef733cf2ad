"""The registry of job kinds: `kind: NAME` in a job file -> the recipe that runs it.

A kind is one object (`KIND` in its recipe module) that implements `JobKind`. The command
line, the sweep recipe and its trials look kinds up here and never branch on a kind's name;
adding a kind is one line below, its recipe module, and (if it has options) its spec section
named after it (spec/common.py: KindSection).

Recipes are loaded by module name, on first use: nothing outside `recipes/` imports a recipe,
so each can change on its own (tests/test_architecture.py checks it).
"""

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

KINDS = {
    "train": "bigmodel_ray.recipes.train",
    "compress": "bigmodel_ray.recipes.compress",
    "transfer": "bigmodel_ray.recipes.transfer",
    "multitask": "bigmodel_ray.recipes.multitask",
    "rl": "bigmodel_ray.recipes.rl",
}
SWEEP = "bigmodel_ray.recipes.tune"      # any kind, when the job has a `search` block


@dataclass
class Prepared:
    """What a sweep's driver resolves once, before any trial: the job completed (a teacher or
    source model trained or found), one line that describes it, and what `finish_sweep` needs."""
    spec: Any
    description: str
    carry: Any = None


class JobKind(Protocol):
    """One job kind. `spec` is a validated JobSpec, `source` the job file (it prefixes errors),
    `say` prints a progress line."""

    def cpus_needed(self, spec) -> float:
        """Logical CPUs an embedded Ray offers a run of this job."""

    def run(self, spec, source: str, say) -> dict:
        """Run the job into its run folder (resuming what is there); the summary in result.json."""

    # ---- what a sweep of the kind needs
    def prepare_sweep(self, spec, source: str, say) -> Prepared:
        """On the sweep's driver, once: whatever every trial shares (opens the data: fails early)."""

    def trial_epochs(self, spec) -> int:
        """Reports a finished trial has made (the length of its history)."""

    def run_trial(self, spec, source: str, trial) -> None:
        """In the trial's process: run the trial's job, reporting to Ray Tune (tune/trial.py: Trial)."""

    def finish_sweep(self, prepared: Prepared, sweep_dir, records, say) -> dict:
        """On the sweep's driver after the trials: more of the sweep's result.json."""


def trial_cpus(spec) -> tuple[float, float]:
    """(CPUs a sweep's trial holds besides its driver, CPUs the data pipeline takes beside all
    trials): the Ray Train workers and Ray Data by default; a kind whose trials hold other
    actors says so with a `trial_cpus(spec)` method of its own (rl: its env runners)."""
    kind = get(spec.kind)
    if hasattr(kind, "trial_cpus"):
        return kind.trial_cpus(spec)
    return spec.resources.workers * spec.resources.cpus_per_worker, spec.resources.data_cpus


def trains_in_trial(spec) -> bool:
    """Whether a sweep's trial runs its training loop in its own process (train/in_process.py)
    instead of starting a Ray Train run: one CPU worker (no process group to form, no GPU the
    trial would have to hold) — what most small sweeps are."""
    import ray

    res = spec.resources
    no_gpu = res.use_gpu is False or (res.use_gpu == "auto" and not ray.cluster_resources().get("GPU", 0))
    return res.workers == 1 and spec.train.strategy == "ddp" and no_gpu


def trial_process_cpus(spec) -> float:
    """CPUs a sweep's trial uses in its own process, besides its driver's share: its worker's when
    the training loop runs there (`trains_in_trial`); a kind whose trials work otherwise says so
    with a `trial_process_cpus(spec)` method of its own (rl)."""
    kind = get(spec.kind)
    if hasattr(kind, "trial_process_cpus"):
        return kind.trial_process_cpus(spec)
    return spec.resources.cpus_per_worker if trains_in_trial(spec) else 0


def get(kind: str) -> JobKind:
    return importlib.import_module(KINDS[kind]).KIND


def runner(spec):
    """What runs this job: its kind, or a sweep of it (the sweep recipe has `run` and `cpus_needed` too)."""
    return importlib.import_module(SWEEP) if spec.search is not None else get(spec.kind)


def run(spec, source: str, say=print) -> dict:
    """Run a validated job here (Ray must be up): one run of its kind, or a sweep of it. A run in
    object storage then has all its files sent there, finished or not (runs.py, storage.py)."""
    from bigmodel_ray import runs

    try:
        return runner(spec).run(spec, source, say)
    finally:
        runs.folder_of(spec).push()
