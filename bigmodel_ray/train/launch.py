"""From a job to a Ray Train run: the plan (data opened, model checked, decided on the driver
before any worker starts), the TorchTrainer that runs the training loop (train/worker.py), and
a run folder trained to the end with its result written.

Every kind that trains on the DDP/FSDP2 loop (train, transfer, multitask, compress's fine-tunes
and distillation, a sweep's trials) builds its trainer here.
"""

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bigmodel_ray import curves, runs, tracking
from bigmodel_ray.data import DataBundle, load_data
from bigmodel_ray.data.images import bad_record_in
from bigmodel_ray.data.pipeline import start_state
from bigmodel_ray.data.sources import DataError
from bigmodel_ray.data.text import TOKENIZER_FILE
from bigmodel_ray.errors import RunFailed, SpecError, first_line
from bigmodel_ray.models import build_model
from bigmodel_ray.progress import EpochPrinter
from bigmodel_ray.spec import DataSpec, JobSpec, dump
from bigmodel_ray.train.epoch_log import EpochLog
from bigmodel_ray.train.init import init_from
from bigmodel_ray.train.state import MODEL_DIR, save_chosen
from bigmodel_ray.train.tasks import task_objective
from bigmodel_ray.train.worker import train_worker


@dataclass
class Plan:
    """What a run needs besides its spec, decided on the driver before any worker starts."""
    data: DataBundle
    use_gpu: bool
    micro_batches: int  # per worker and epoch
    params: int
    state: Any          # the data pipeline's PipelineState actor, or None
    objective: Any = None                       # train/objectives.py; None: Classify
    extra: dict = field(default_factory=dict)   # more worker config (a model handed over, ...)

    def steps_per_epoch(self, grad_accum: int) -> int:
        return math.ceil(self.micro_batches / grad_accum)


def plan_classifier(spec: JobSpec, source: str) -> Plan:
    """A classifier trained from scratch on the job's data: open the data and check the job
    against the cluster; a bad job fails here (SpecError)."""
    use_gpu = uses_gpu(spec, source)
    state = start_state() if needs_pipeline_state(spec.data) else None
    data = open_data(kept_tokenizer(spec.data, runs.folder_of(spec).local), spec, state, source, "data")
    check_data_cpus(data, spec.resources, source)
    torch.manual_seed(spec.seed)          # as the workers do: the same fresh weights where init_from has none
    try:   # the model's own argument checks, before any worker starts
        model = build_model(spec.model.name, data.input_shape, data.num_classes, **spec.model.args, **data.model_args)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{source}: model.args: {e}") from None
    extra = {"model_args": data.model_args} if data.model_args else {}
    if spec.model.init_from is not None:   # checked here, in one line; the workers start from this model
        try:
            init_from(model, spec.model.init_from, spec.model.init_strict)
        except ValueError as e:
            raise SpecError(f"{source}: model.init_from: {e}") from None
        extra["initial_model"] = model
    objective = task_objective(spec, data)
    return Plan(data, use_gpu, micro_batches(objective, data, spec), sum(p.numel() for p in model.parameters()), state,
                objective, extra=extra)


def needs_pipeline_state(*sections: DataSpec) -> bool:
    """Augmentation draws and skipped-record counts go through the pipeline's state actor."""
    return any(d.augment is not None or d.on_bad_record == "skip" for d in sections)


def kept_tokenizer(data_spec: DataSpec, run_dir: Path) -> DataSpec:
    """Text read with the tokenizer kept in a run folder (a resumed run's own, a source model's),
    unless the job names one: token ids must mean what the model learnt."""
    kept = run_dir / TOKENIZER_FILE
    if data_spec.text is None or data_spec.text.tokenizer_file is not None or not kept.exists():
        return data_spec
    return data_spec.model_copy(update={"text": data_spec.text.model_copy(update={"tokenizer_file": str(kept)})})


def open_data(data_spec: DataSpec, spec: JobSpec, state, source: str, field: str) -> DataBundle:
    try:
        return load_data(data_spec, spec.seed, state, spec.train.task)
    except DataError as e:
        raise SpecError(f"{source}: {field}.{e.field}: {e}") from None


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


def cpus_needed(spec: JobSpec) -> float:
    """Logical CPUs the embedded Ray offers a run: its trainers plus the data pipeline's."""
    res = spec.resources
    return res.workers * res.cpus_per_worker + res.data_cpus


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


def make_trainer(spec: JobSpec, plan: Plan, *, name: str, storage_path: str, storage_filesystem=None,
                 callbacks=(), init_checkpoint=None, keep: int | None = None, extra: dict | None = None,
                 objective=None, here: bool = False):
    """The Ray Train run of `spec` in `storage_path` (inside `storage_filesystem`, for object
    storage); `callbacks` see each epoch (e.g. train/epoch_log.py); a run without checkpoints of
    its own starts from `init_checkpoint` (a path or a Checkpoint) when given. `extra` goes to the workers' config as is
    (a model to fine-tune instead of a fresh one); `objective` replaces the plan's (e.g.
    distillation from a teacher). `here`: the loop runs in this process (train/in_process.py;
    a local `storage_path`; only where kinds.trains_in_trial says so)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    from bigmodel_ray import runtime
    from bigmodel_ray.train.trainer import LeanTorchTrainer

    res = spec.resources
    objective = objective or plan.objective or task_objective(spec, plan.data)
    datasets, arrays = plan.data.handed_over()
    config = {"spec": spec.model_dump(mode="json"),
              "input_shape": list(plan.data.input_shape), "num_classes": plan.data.num_classes,
              "steps_per_epoch": plan.steps_per_epoch(spec.train.grad_accum),
              "micro_batches": plan.micro_batches, "dataset_names": list(plan.data.datasets),
              "objective": objective, "pipeline_state": plan.state,
              "device_augment": plan.data.device_augment, "params": plan.params,
              "class_names": plan.data.class_names, "arrays": arrays,
              "init_checkpoint": init_checkpoint, **plan.extra, **(extra or {})}
    if here:
        from bigmodel_ray.train.in_process import InProcessTrainer

        ingest = _ingest_options(res)
        for dataset in datasets.values():
            dataset.context.execution_options = ingest
        return InProcessTrainer(train_worker, config, datasets=datasets, run_dir=Path(storage_path) / name,
                                keep=keep or spec.checkpoint.keep, callbacks=callbacks,
                                max_failures=spec.failure.max_failures)
    return LeanTorchTrainer(
        train_worker, local_ray=runtime.on_this_machine(),
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=plan.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker}),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[n for n in objective.train_sets if n in datasets],
                                  execution_options=_ingest_options(res)),
        run_config=RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_filesystem, callbacks=list(callbacks),
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
    except SystemExit as e:       # Ctrl-C: Ray Train's handler aborted the run, Ray ended the wait
        raise KeyboardInterrupt from e
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def failure(e: Exception, spec: JobSpec, source: str, run_dir) -> Exception:
    """The error to raise for a failed Ray Train run: bad input exits 2 like any spec error."""
    if bad := bad_record_in(e):
        return SpecError(f"{source}: data: {bad} (data.on_bad_record: skip drops such records)")
    return RunFailed(f"{spec.name}: training failed: {first_line(e)} (run folder {run_dir}; "
                     f"rerun with -v for worker logs)")


def execute(spec: JobSpec, source: str, job: Plan, run_dir: Path, say, what: str) -> dict:
    """Train `job` into `run_dir` (resuming what is there); returns the summary in result.json.
    `what` describes the run in the first line printed."""
    import ray
    import ray.train

    folder = runs.folder_of(spec)      # run_dir is its local folder (a mirror, for object storage)
    say(f"{spec.name}: {what}")
    run_dir.mkdir(parents=True, exist_ok=True)       # only now: a rejected job writes nothing
    runs.write_spec(run_dir, dump(spec))
    for name, text in job.data.artifacts.items():      # e.g. the tokenizer the data was tokenized with
        runs.write_atomic(run_dir / name, text)
    done_before = runs.epochs_logged(run_dir)
    if done_before:
        say(f"{spec.name}: resuming from the last checkpoint in {folder.uri} ({done_before} epochs logged)")

    tracker = tracking.open_run(spec, run_dir, say)      # does nothing without a `tracking` section
    trainer = make_trainer(spec, job, name=spec.name, **folder.ray_storage(), callbacks=[EpochLog(folder)])
    start = time.perf_counter()
    with tracker, EpochPrinter(run_dir / runs.METRICS_FILE, spec.train.epochs, done_before, on_epoch=tracker.epoch):
        try:
            result = fit(trainer)
        # RayError: e.g. the run's controller died before it started (not a TrainingFailedError)
        except (ray.train.TrainingFailedError, ray.exceptions.RayError) as e:
            raise failure(e, spec, source, folder.uri) from e
    wall_s = time.perf_counter() - start

    history = runs.read_epoch_log(run_dir)
    summary = {
        "name": spec.name, **result.return_value,
        "wall_s": round(wall_s, 2),
        "epochs_this_run": result.return_value["epochs"] - result.return_value["resumed_from_epoch"],
        "final_val_accuracy": history[-1].get("val_accuracy") if history else None,
        "samples_per_s_median": _median([r["samples_per_s"] for r in history[1:] or history]),
        # The model the run leaves (export, predict, transfer, compress read it): the chosen epoch's.
        "checkpoint": str(_save_chosen(result.checkpoint, run_dir / MODEL_DIR)) if result.checkpoint else None,
        "last_checkpoint": folder.uri_of(result.checkpoint.path) if result.checkpoint else None,
        "run_dir": folder.uri, "workers": spec.resources.workers, "use_gpu": job.use_gpu, "params": job.params,
    }
    if job.state is not None:
        summary["skipped_records"], examples = ray.get(job.state.skipped_report.remote())
        if summary["skipped_records"]:
            say(f"{spec.name}: skipped {summary['skipped_records']} bad records (data.on_bad_record: skip), "
                f"e.g. {'; '.join(examples)}")
    summary |= job.data.reference          # e.g. gzip's bits per character on the same test text
    if summary["stopped_early"]:
        say(f"{spec.name}: stopped early after epoch {summary['epochs']} (train.early_stopping)")
    curves.plot(history, summary.get("best"), run_dir / curves.FILE)
    runs.write_result(run_dir, summary)
    folder.push()
    tracker.finish(summary, run_dir)
    shown = "  ".join(f"{k} {summary[k]:.4f}" for k in HEADLINE if k in summary)
    say(f"{spec.name}: {shown}  ({summary['epochs']} epochs, {summary['epochs_this_run']} this run, "
        f"{wall_s:.1f}s) -> {folder.uri}")
    return summary


def _save_chosen(checkpoint, folder: Path) -> Path:
    """The chosen model into the run folder, from Ray's last checkpoint (wherever Ray stored it)."""
    with checkpoint.as_directory() as directory:
        return save_chosen(directory, folder)


# The test metrics a finished run prints (those its task reports)
HEADLINE = ("test_accuracy", "test_f1", "test_perplexity", "test_bpc", "test_gzip_bpc", "test_rmse", "test_mae",
            "test_hr10", "test_ndcg10")


def _ingest_options(res):
    """Ray Data's options for Train ingest, with the object store it may fill capped.

    Uncapped, the pipeline runs ahead of a slower trainer into up to half the object store (30 %
    of RAM by default): peak memory then grows with the data set (measured: 1.44x for 10x data).
    """
    from ray.data import DataContext, ExecutionOptions, ExecutionResources

    ctx = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=ExecutionResources(object_store_memory=res.data_memory_mb * 2**20),
                            preserve_order=ctx.preserve_order, verbose_progress=ctx.verbose_progress)


def _median(values):
    return sorted(values)[len(values) // 2] if values else None
