"""`kind: train` — a data-parallel (DDP or FSDP2) classification run on Ray Train.

Run folder `<storage>/<name>/`: `spec.yaml` (resolved job), `metrics.jsonl` (one line per
epoch), `checkpoint_*/state.pt` (last `checkpoint.keep`), `result.json`. Running the same job
again resumes after the last checkpoint; a finished run resumes into just the test pass.
"""

import json
import re
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigmodel_ray.data import DataBundle, load_data
from bigmodel_ray.data.images import bad_record_in
from bigmodel_ray.data.pipeline import start_state
from bigmodel_ray.data.sources import DataError
from bigmodel_ray.models import build_model
from bigmodel_ray.progress import EpochPrinter
from bigmodel_ray.runtime import RunFailed
from bigmodel_ray.spec import JobSpec, SpecError, dump
from bigmodel_ray.train.objectives import Classify
from bigmodel_ray.train.worker import METRICS_FILE, read_epoch_log, train_worker

RESULT_FILE, SPEC_FILE = "result.json", "spec.yaml"


def run_dir_of(spec: JobSpec, source: str) -> Path:
    if "://" in spec.storage:
        raise SpecError(f"{source}: storage: remote storage ({spec.storage}) is not supported for train jobs yet")
    return Path(spec.storage).expanduser().resolve() / spec.name


@dataclass
class Plan:
    """What a train run needs besides its spec, decided on the driver before any worker starts."""
    data: DataBundle
    use_gpu: bool
    micro_batches: int  # per worker and epoch
    params: int
    state: Any          # the data pipeline's PipelineState actor, or None
    objective: Any = None                       # train/objectives.py; None: Classify
    extra: dict = field(default_factory=dict)   # more worker config (a model handed over, ...)

    def steps_per_epoch(self, grad_accum: int) -> int:
        return math.ceil(self.micro_batches / grad_accum)


def plan(spec: JobSpec, source: str) -> Plan:
    """Open the data and check the job against the cluster; a bad job fails here (SpecError)."""
    res = spec.resources
    use_gpu = uses_gpu(spec, source)
    state = start_state() if spec.data.augment is not None or spec.data.on_bad_record == "skip" else None
    try:
        data = load_data(spec.data, spec.seed, state)
    except DataError as e:
        raise SpecError(f"{source}: data.{e.field}: {e}") from None
    check_data_cpus(data, res, source)
    try:   # the model's own argument checks, before any worker starts
        model = build_model(spec.model.name, data.input_shape, data.num_classes, **spec.model.args)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{source}: model.args: {e}") from None
    return Plan(data, use_gpu, micro_batches(Classify(), data, spec), sum(p.numel() for p in model.parameters()), state)


def uses_gpu(spec: JobSpec, source: str) -> bool:
    """Whether the workers get GPUs. auto: only if every worker gets its own (NCCL cannot put
    two ranks on one GPU)."""
    import ray

    res = spec.resources
    use_gpu = ray.cluster_resources().get("GPU", 0) >= res.workers if res.use_gpu == "auto" else res.use_gpu
    if spec.train.precision == "fp16" and not use_gpu:
        raise SpecError(f"{source}: train.precision: fp16 needs a GPU (none is used here); use bf16 on CPU")
    return use_gpu


def micro_batches(objective, data: DataBundle, spec: JobSpec) -> int:
    # Ray splits the training streams evenly across workers.
    rows = {name: n // spec.resources.workers for name, n in data.rows.items()}
    return objective.micro_batches(rows, spec.train.batch_size)


def make_trainer(spec: JobSpec, plan: Plan, *, name: str, storage_path: str, run_dir: str | None,
                 callbacks=(), init_checkpoint: str | None = None, keep: int | None = None, extra: dict | None = None,
                 objective=None):
    """The Ray Train run of `spec`: `run_dir` gets the epoch log (None: no log); a run without
    checkpoints of its own starts from `init_checkpoint` when given. `extra` goes to the
    workers' config as is (a model to fine-tune instead of a fresh one); `objective`
    replaces the plan's (e.g. distillation from a teacher)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = spec.resources
    objective = objective or plan.objective or Classify(spec.train.label_smoothing)
    return TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "run_dir": run_dir,
                           "input_shape": list(plan.data.input_shape), "num_classes": plan.data.num_classes,
                           "steps_per_epoch": plan.steps_per_epoch(spec.train.grad_accum),
                           "micro_batches": plan.micro_batches, "dataset_names": list(plan.data.datasets),
                           "objective": objective, "pipeline_state": plan.state,
                           "device_augment": plan.data.device_augment, "params": plan.params,
                           "init_checkpoint": init_checkpoint, **plan.extra, **(extra or {})},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=plan.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker}),
        datasets=plan.data.datasets,
        dataset_config=DataConfig(datasets_to_split=list(objective.train_sets), execution_options=_ingest_options(res)),
        run_config=RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(num_to_keep=keep or spec.checkpoint.keep),
            failure_config=FailureConfig(max_failures=spec.failure.max_failures),
        ),
    )


def fit(trainer):
    """trainer.fit(), then the SIGINT handler as it was before.

    In the main thread, Ray Train installs a SIGINT handler whose closure holds the run's
    controller actor, and leaves it installed: the finished run's controller then lives on and
    keeps its placement group's CPUs reserved, so the next run in this process (a sweep's trial,
    a compress fine-tune, a test) waits for CPUs that never come back.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def describe(spec: JobSpec, plan: Plan) -> str:
    t, res, rows = spec.train, spec.resources, plan.data.rows
    return (f"{spec.model.name} ({plan.params:,} params) on {spec.data.source} "
            f"({rows['train']:,} train / {rows['val']:,} val / {rows['test']:,} test), "
            f"{res.workers} workers, {t.strategy} on {'GPU' if plan.use_gpu else 'CPU'}, {t.precision}; "
            f"effective global batch {t.batch_size} x {t.grad_accum} accum x {res.workers} workers "
            f"= {t.batch_size * t.grad_accum * res.workers}")


def run(spec: JobSpec, source: str, say=print) -> dict:
    run_dir = run_dir_of(spec, source)
    check_same_job(run_dir, spec, source)
    return execute(spec, source, plan(spec, source), run_dir, say)


def execute(spec: JobSpec, source: str, job: Plan, run_dir: Path, say=print, what: str | None = None) -> dict:
    """Train `job` into `run_dir` (resuming what is there); returns the summary in result.json."""
    import ray
    import ray.train

    say(f"{spec.name}: {what or describe(spec, job)}")
    run_dir.mkdir(parents=True, exist_ok=True)       # only now: a rejected job writes nothing
    _write_atomic(run_dir / SPEC_FILE, dump(spec))
    done_before = _epochs_logged(run_dir)
    if done_before:
        say(f"{spec.name}: resuming from the last checkpoint in {run_dir} ({done_before} epochs logged)")

    trainer = make_trainer(spec, job, name=spec.name, storage_path=str(run_dir.parent), run_dir=str(run_dir))
    t = spec.train
    start = time.perf_counter()
    with EpochPrinter(run_dir / METRICS_FILE, t.epochs, done_before):
        try:
            result = fit(trainer)
        # RayError: e.g. the run's controller died before it started (not a TrainingFailedError)
        except (ray.train.TrainingFailedError, ray.exceptions.RayError) as e:
            raise failure(e, spec, source, run_dir) from e
    wall_s = time.perf_counter() - start

    history = read_epoch_log(run_dir)
    summary = {
        "name": spec.name, **result.return_value,
        "wall_s": round(wall_s, 2),
        "epochs_this_run": result.return_value["epochs"] - result.return_value["resumed_from_epoch"],
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "samples_per_s_median": _median([r["samples_per_s"] for r in history[1:] or history]),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "run_dir": str(run_dir), "workers": spec.resources.workers, "use_gpu": job.use_gpu, "params": job.params,
    }
    if job.state is not None:
        summary["skipped_records"], examples = ray.get(job.state.skipped_report.remote())
        if summary["skipped_records"]:
            say(f"{spec.name}: skipped {summary['skipped_records']} bad records (data.on_bad_record: skip), "
                f"e.g. {'; '.join(examples)}")
    write_result(run_dir, summary)
    say(f"{spec.name}: test_accuracy {summary['test_accuracy']:.4f}  test_f1 {summary['test_f1']:.4f}  "
        f"({summary['epochs']} epochs, {summary['epochs_this_run']} this run, {wall_s:.1f}s) -> {run_dir}")
    return summary


def write_result(run_dir: Path, summary: dict) -> None:
    _write_atomic(run_dir / RESULT_FILE, json.dumps(summary, indent=2) + "\n")


def failure(e: Exception, spec: JobSpec, source: str, run_dir) -> Exception:
    """The error to raise for a failed Ray Train run: bad input exits 2 like any spec error."""
    if bad := bad_record_in(e):
        return SpecError(f"{source}: data: {bad} (data.on_bad_record: skip drops such records)")
    return RunFailed(f"{spec.name}: training failed: {_first_line(e)} (run folder {run_dir}; "
                     f"rerun with -v for worker logs)")


def cpus_needed(spec: JobSpec) -> float:
    """Logical CPUs the embedded Ray offers this job: its trainers plus the data pipeline's."""
    res = spec.resources
    return res.workers * res.cpus_per_worker + res.data_cpus


def _ingest_options(res):
    """Ray Data's options for Train ingest, with the object store it may fill capped.

    Uncapped, the pipeline runs ahead of a slower trainer into up to half the object store (30 %
    of RAM by default): peak memory then grows with the data set (measured: 1.44x for 10x data).
    """
    from ray.data import DataContext, ExecutionOptions, ExecutionResources

    ctx = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=ExecutionResources(object_store_memory=res.data_memory_mb * 2**20),
                            preserve_order=ctx.preserve_order, verbose_progress=ctx.verbose_progress)


def check_data_cpus(data, res, source: str) -> None:
    """Ray Data's tasks need whole CPUs that the trainers do not hold, or the run hangs."""
    import ray

    if not data.has_tasks:
        return
    total = ray.cluster_resources().get("CPU", 0)
    free = total - res.workers * res.cpus_per_worker
    if free < 1:
        raise SpecError(f"{source}: resources: {res.workers} workers x {res.cpus_per_worker:g} CPUs leave {free:g} of "
                        f"the cluster's {total:g} CPUs for the data pipeline's tasks (needs >= 1); "
                        f"lower resources.cpus_per_worker or add CPUs")


def check_same_job(run_dir: Path, spec: JobSpec, source: str, keys=("model", "data", "seed"), what="run") -> None:
    """Resuming is only sound for the same job (the `keys` sections); refuse rather than mix runs."""
    old_file = run_dir / SPEC_FILE
    if not old_file.exists():
        return
    old = yaml.safe_load(old_file.read_text()) or {}
    new = spec.model_dump(mode="json")
    for key in keys:
        if old.get(key) != new[key]:
            raise SpecError(f"{source}: {key}: differs from the {what} in {run_dir} that this job would resume; "
                            f"use another name (--set name=...)")
    done = _epochs_logged(run_dir)
    if spec.train is not None and spec.train.epochs < done:      # it would train nothing, yet relabel the run
        raise SpecError(f"{source}: train.epochs: {spec.train.epochs} is fewer than the {done} epochs the {what} in "
                        f"{run_dir} has trained; use another name (--set name=...) or train.epochs >= {done}")


def _epochs_logged(run_dir: Path) -> int:
    return max((r["epoch"] for r in read_epoch_log(run_dir)), default=0)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # Worker errors carry the remote traceback; its last "SomeError: ..." line is the actual
    # exception (the message itself may span lines).
    raised = [line for line in text if re.match(r"[\w.]*(Error|Exception|Interrupt)\b", line)]
    if raised:
        return raised[-1][:300]
    tail = [line for line in text if line and not line.startswith(" ")]
    return (tail[-1] if tail else type(e).__name__)[:300]
