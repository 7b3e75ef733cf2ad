"""The job spec: one YAML format for every job kind, validated before anything runs.

A job file is a mapping with `name`, `kind` and one section per concern. Each section maps to
one module: `data` -> bigmodel_ray.data, `model` -> bigmodel_ray.models, `train` ->
bigmodel_ray.train, `resources`/`checkpoint`/`failure` -> the Ray Train run configuration.

Kinds: `train`; `compress`, `transfer` and `multitask` reuse these sections and add their own
(`multitask` has per-task data instead of `data`). A `search` block turns any job into a Ray Tune sweep over its fields (bigmodel_ray.tune).

Errors are reported as `FILE: key.path: message (got VALUE)`; see `SpecError`.
"""

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from bigmodel_ray.data import SOURCES
from bigmodel_ray.data.builtin import BUILTIN, check_mnist1d_args
from bigmodel_ray.models import MODELS, model_arg_names


class SpecError(Exception):
    """A bad job file or override; the message is one line that names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class AugmentSpec(_Section):
    """Keras ImageDataGenerator-style random augmentation of the train split (see data/augment.py)."""
    rotation_range: float = Field(0.0, ge=0, le=180, description="degrees: uniform in [-r, r]")
    width_shift_range: float = Field(0.0, ge=0, lt=1, description="fraction of the width: uniform in [-s, s]")
    height_shift_range: float = Field(0.0, ge=0, lt=1, description="fraction of the height")
    shear_range: float = Field(0.0, ge=0, lt=90, description="degrees: uniform in [-s, s]")
    zoom_range: tuple[float, float] = Field((1.0, 1.0), description="[lo, hi] scale factors, x and y drawn independently")
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: Literal["nearest", "constant", "reflect", "wrap"] = "nearest"
    cval: float = Field(0.0, ge=0, le=1, description="fill value for fill_mode constant: 0 black .. 1 white")
    brightness_range: tuple[float, float] | None = Field(None, description="[lo, hi]: multiply pixels by U(lo, hi)")
    on: Literal["data", "device"] = Field("data", description="data: OpenCV in Ray Data tasks; device: "
                                                             "grid_sample on the training device (GPU)")

    @field_validator("zoom_range", "brightness_range")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError("must be [lo, hi] with 0 < lo <= hi")
        return v


class NormalizeSpec(_Section):
    mean: list[float] = Field(description="per channel, after scaling pixels to 0..1")
    std: list[float] = Field(description="per channel")

    @field_validator("std")
    @classmethod
    def _positive(cls, v, info):
        if any(s <= 0 for s in v):
            raise ValueError("must be > 0")
        if len(v) != len(info.data.get("mean", v)):
            raise ValueError("must have as many entries as mean")
        return v


class ShiftSpec(_Section):
    """The same data, shifted: a target domain made from a real source (see data/shift.py).
    Every split alike, before the train split's augmentation."""
    rotation: float = Field(0.0, ge=-180, le=180, description="degrees, every image alike (2-D only)")
    scale: float = Field(1.0, gt=0, description="zoom about the centre (images) or stretch (series)")
    invert: bool = Field(False, description="min + max - x (255 - x for image files): dark on light "
                                            "becomes light on dark")
    noise: float = Field(0.0, ge=0, description="Gaussian noise, as a share of the value range")
    blur: float = Field(0.0, ge=0, description="Gaussian blur sigma, in pixels / steps")
    seed: int = Field(0, ge=0, description="seeds the noise (with each row's key: the same noise every epoch)")


FILE_SOURCES = ("parquet", "image_folder")


class DataSpec(_Section):
    source: str = Field(description="built-in set or a source kind: " + " | ".join(SOURCES))
    path: str | None = Field(None, description="parquet: file, folder, glob or URI (s3://, gs://); "
                                                "image_folder: a folder of class subfolders")
    image_column: str = Field("image", description="parquet: column of encoded (PNG/JPEG) bytes or raw pixels")
    label_column: str = Field("label", description="parquet: integer class column")
    image_format: Literal["encoded", "raw"] = Field("encoded", description="parquet: how images are stored")
    image_shape: tuple[int, int, int] | None = Field(None, description="parquet raw: [height, width, channels] (uint8)")
    target_size: tuple[int, int] | None = Field(None, description="resize every image to [height, width]")
    color_mode: Literal["rgb", "grayscale"] = Field("rgb", description="decoded channels")
    count: int = Field(10_000, gt=0, description="synthetic: number of images")
    image_size: int = Field(64, ge=8, description="synthetic: height and width")
    num_classes: int = Field(10, ge=2, description="synthetic: classes")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training rows held out for validation")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="share held out for test where the set has no test split")
    split_seed: int = Field(0, description="fixes the train/val/test split, independent of the job seed")
    in_memory: bool | Literal["auto"] = Field("auto", description="workers keep val/test (and un-augmented train) in "
                                                                  "memory after the first pass; auto: built-in sets only")
    normalize: NormalizeSpec | None = Field(None, description="per-channel mean/std after scaling to 0..1")
    augment: AugmentSpec | None = Field(None, description="random augmentation of the train split")
    on_bad_record: Literal["fail", "skip"] = Field("fail", description="an undecodable image: stop naming it, "
                                                                       "or drop it and report the count at the end")
    shift: ShiftSpec | None = Field(None, description="a shifted copy of the data (a target domain), any source")
    generator: dict[str, Any] | None = Field(
        None, description="mnist1d: arguments of the mnist1d generator that change the data, e.g. {scale_coeff: 0.6, "
                          "iid_noise_scale: 0.1, corr_noise_scale: 0.5, shear_scale: 1.2, max_translation: 60, seed: 7}")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v):
        if v not in SOURCES:
            raise ValueError(f"must be one of {' | '.join(SOURCES)}")
        return v

    @model_validator(mode="after")
    def _fits_source(self):
        if self.source in FILE_SOURCES and not self.path:
            raise ValueError(f"path: required for source {self.source}")
        if self.source not in FILE_SOURCES and self.path:
            raise ValueError(f"path: only for sources {' | '.join(FILE_SOURCES)} (source is {self.source})")
        if self.image_format == "raw" and self.image_shape is None:
            raise ValueError("image_shape: required when image_format is raw ([height, width, channels])")
        if self.source == "mnist1d" and self.augment is not None:
            raise ValueError("augment: needs 2-D images; mnist1d is 1-D")
        if self.shift is not None and self.source == "mnist1d" and self.shift.rotation:
            raise ValueError("shift: rotation needs 2-D images; mnist1d is 1-D")
        if self.generator is not None:
            if self.source != "mnist1d":
                raise ValueError(f"generator: only for source mnist1d (source is {self.source})")
            try:
                check_mnist1d_args(self.generator)
            except ValueError as e:
                raise ValueError(f"generator: {e}") from None
        return self

    @property
    def keep_in_memory(self) -> bool:
        return self.source in BUILTIN if self.in_memory == "auto" else self.in_memory


class ModelSpec(_Section):
    name: str = Field(description="one of " + " | ".join(MODELS))
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v):
        if v not in MODELS:
            raise ValueError(f"must be one of {' | '.join(MODELS)}")
        return v

    @field_validator("args")
    @classmethod
    def _known_args(cls, v, info):
        name = info.data.get("name")
        unknown = sorted(set(v) - model_arg_names(name)) if name else []
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r} for model {name!r} "
                             f"(accepts {', '.join(sorted(model_arg_names(name)))})")
        return v


class OptimizerSpec(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")


class ScheduleSpec(_Section):
    name: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup from 0, in epochs (fractions allowed)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine ends at lr * min_lr_ratio")


class TrainSpec(_Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0, description="per worker and micro-step")
    grad_accum: int = Field(1, gt=0, description="micro-steps per optimizer step")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class ResourcesSpec(_Section):
    workers: int = Field(2, gt=0, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0)
    data_cpus: float = Field(1.0, gt=0, description="CPUs kept free for Ray Data's read/decode/augment tasks; "
                                                     "the embedded Ray counts them on top of the trainers'")
    data_memory_mb: int = Field(256, ge=64, description="object-store memory the data pipeline may fill ahead of "
                                                          "training; the embedded Ray's object store is 4x this")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: one GPU per worker when the cluster has GPUs")

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _gpu_choice(cls, v):
        if v not in (True, False, "auto") or isinstance(v, int) and not isinstance(v, bool):
            raise ValueError("must be true, false or auto")
        return v


class CheckpointSpec(_Section):
    every: int = Field(1, gt=0, description="checkpoint every N epochs (and always after the last)")
    keep: int = Field(2, gt=0, description="keep the K most recent checkpoints")


class FailureSpec(_Section):
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint; -1 = forever")


# ---------------------------------------------------------------------------- compress

class _Method(_Section):
    finetune_epochs: int = Field(0, ge=0, description="DDP fine-tuning epochs after this method")
    finetune_lr: float | None = Field(None, gt=0, description="default: train.optimizer.lr / 10")


class DistillMethod(_Method):
    method: Literal["distill"]
    student: ModelSpec = Field(description="the smaller model trained from the teacher")
    temperature: float = Field(4.0, gt=0, description="softens both distributions (Hinton's T)")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term; 1 - alpha: labels")
    epochs: int = Field(10, gt=0, description="student training epochs (on the DDP loop)")


class PruneMethod(_Method):
    method: Literal["prune"]
    amount: float = Field(gt=0, lt=1, description="share of weights (unstructured) or channels (structured)")
    structured: bool = Field(False, description="remove whole channels/neurons (shrinks layers) instead of zeroing")
    norm: Literal[1, 2] = Field(1, description="structured: rank channels by their L1 or L2 norm")
    steps: int = Field(1, ge=1, description="gradual: reach `amount` in this many steps, each fine-tuned")


class LowRankMethod(_Method):
    method: Literal["lowrank"]
    ratio: float | None = Field(None, gt=0, le=1, description="keep this share of each layer's full rank")
    energy: float | None = Field(None, gt=0, le=1, description="or: the rank keeping this share of the "
                                                                 "squared singular values")
    convs: bool = Field(True, description="factorize convolutions too (Linear layers always)")

    @model_validator(mode="after")
    def _one_rule(self):
        if (self.ratio is None) == (self.energy is None):
            raise ValueError("ratio: give exactly one of ratio or energy")
        return self


class QuantizeMethod(_Section):
    method: Literal["quantize"]
    mode: Literal["dynamic", "static"] = Field("dynamic", description="int8: dynamic (Linear layers, eager) or "
                                                                        "static (calibrated, compiled)")
    calibration_batches: int = Field(8, gt=0, description="static: training batches that set activation ranges")


Method = Annotated[DistillMethod | PruneMethod | LowRankMethod | QuantizeMethod, Field(discriminator="method")]
CANDIDATE_METRICS = ("bytes", "params", "nonzeros")


class MeasureSpec(_Section):
    batch_sizes: list[int] = Field([1, 256], min_length=1, description="CPU latency at each batch size")
    threads: int = Field(1, gt=0, description="torch threads while timing")
    rounds: int = Field(3, gt=0, description="interleaved timing rounds; each model keeps its best")


class SelectSpec(_Section):
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="vs the teacher's validation accuracy")
    minimize: str = Field("latency_ms_bs1", description="latency_ms_bs<N> (a measured batch size), bytes, "
                                                        "params or nonzeros")


class CompressSpec(_Section):
    teacher: str | None = Field(None, description="a finished train run folder; none: train this job's own "
                                                  "data/model/train sections first (<name>-teacher)")
    teacher_task: str | None = Field(None, description="a multitask teacher run: the task whose classifier "
                                                       "(the backbone and that task's head) is compressed")
    methods: list[Method] = Field(min_length=1, description="applied in order; each result is a candidate")
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    select: SelectSpec = Field(default_factory=SelectSpec)
    export: Literal["onnx"] | None = Field("onnx", description="export the selected candidate")

    @model_validator(mode="after")
    def _consistent(self):
        if self.teacher_task is not None and self.teacher is None:
            raise ValueError("teacher_task: picks a task of a multitask teacher run; give compress.teacher")
        for i, m in enumerate(self.methods):
            if m.method == "quantize" and i != len(self.methods) - 1:
                raise ValueError(f"methods: quantize must come last (int8 models are not fine-tuned); it is "
                                 f"method {i + 1} of {len(self.methods)}")
        allowed = [f"latency_ms_bs{b}" for b in self.measure.batch_sizes] + list(CANDIDATE_METRICS)
        if self.select.minimize not in allowed:
            raise ValueError(f"select: minimize must be one of {' | '.join(allowed)} (got {self.select.minimize!r})")
        return self


# ---------------------------------------------------------------------------- transfer, multitask

STRATEGIES = ("linear_probe", "freeze", "full", "discriminative", "gradual", "dann")


class SourceJob(_Section):
    """The train step of a transfer job: the source model, trained first as `<name>-source`."""
    data: DataSpec = Field(description="the source domain")
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)


class DANNSpec(_Section):
    lambda_max: float = Field(1.0, gt=0, description="the adversarial weight's final value")
    gamma: float = Field(10.0, gt=0, description="how fast lambda rises: 2 / (1 + exp(-gamma * progress)) - 1")
    hidden: int = Field(64, gt=0, description="the domain classifier's hidden units")


class TransferSpec(_Section):
    source: Annotated[Annotated[str, Tag("run")] | Annotated[SourceJob, Tag("job")],
                      Discriminator(lambda v: "run" if isinstance(v, str) else "job")] = Field(description="a finished train run folder, or a train step "
                                                "{data, model, train} run first as <name>-source")
    source_task: str | None = Field(None, description="a multitask source run: the task whose classifier (the "
                                                      "backbone and that task's head) is the source model")
    source_data: DataSpec | None = Field(None, description="the source domain's data; default: the source run's "
                                                           "(a multitask run's: its source_task's)")
    strategy: Literal[STRATEGIES] = Field("full", description="linear_probe: only a new classifier trains; freeze: "
                                                              "the first freeze_stages stages stay fixed; full; "
                                                              "discriminative: backbone lr x backbone_lr_factor; "
                                                              "gradual: one more stage from the top every "
                                                              "unfreeze_every epochs; dann: labelled source + "
                                                              "unlabelled target, domain-adversarial")
    freeze_stages: int = Field(1, ge=0, description="freeze: stages frozen from the input side")
    backbone_lr_factor: float = Field(0.1, gt=0, le=1, description="discriminative: the backbone's lr share")
    unfreeze_every: int = Field(1, gt=0, description="gradual: epochs between unfreezing steps")
    target_labels: int | None = Field(None, gt=0, description="labelled target training rows to use (few-shot "
                                                                "fine-tuning); default: all. dann uses none")
    dann: DANNSpec = Field(default_factory=DANNSpec)

    @model_validator(mode="after")
    def _task_of_a_run(self):
        if self.source_task is not None and not isinstance(self.source, str):
            raise ValueError("source_task: picks a task of a multitask source run; transfer.source is a train step")
        return self


class TaskSpec(_Section):
    data: DataSpec
    weight: float = Field(1.0, gt=0, description="this task's loss weight")


class MultiTaskSpec(_Section):
    tasks: dict[str, TaskSpec] = Field(min_length=2, description="task name -> its data and loss weight")
    sampling: Literal["proportional", "round_robin"] = Field(
        "proportional", description="proportional: every task's batches once per epoch, randomly interleaved; "
                                    "round_robin: tasks take turns, each as many steps as the largest")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v):
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"task name {name!r} must be lowercase letters, digits, '_' (it names metrics)")
        return v


# Metrics a trial reports every epoch that a search may optimize, with their natural direction.
# Test metrics are reported too but never selected on: choosing by test accuracy leaks the test set.
OBJECTIVES = {"val_accuracy": "max", "val_f1": "max", "val_loss": "min", "train_loss": "min",
              "params": "min", "epoch_s": "min", "samples_per_s": "max",
              # what a compress trial reports (once, for its final candidate)
              "bytes": "min", "nonzeros": "min", "latency_ms_bs1": "min"}
COMPRESS_OBJECTIVES = {"val_accuracy", "val_f1", "params", "bytes", "nonzeros"}   # + latency_ms_bs<N>


def objective_mode(name: str) -> str | None:
    if re.fullmatch(r"latency_ms_bs\d+", name):
        return "min"
    return OBJECTIVES.get(name)


class SchedulerSpec(_Section):
    name: Literal["fifo", "asha", "pbt"] = Field("fifo", description="fifo: run every trial to the end; asha: stop "
                                                                      "bad trials early; pbt: exploit/explore checkpoints")
    grace_period: int = Field(1, gt=0, description="asha: epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3, gt=1, description="asha: 1 in this many trials goes on at each rung")
    perturbation_interval: int = Field(2, gt=0, description="pbt: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="pbt: bottom share that clones the top share")
    resample_probability: float = Field(0.25, ge=0, le=1, description="pbt: chance a value is redrawn, else scaled")


class SearchSpec(_Section):
    space: dict[str, Any] = Field(description="dotted spec path -> loguniform|uniform|randint(lo, hi), choice|grid([...])")
    num_samples: int = Field(1, gt=0, description="trials drawn; with grid(...) values, drawn per grid point")
    metric: str | list[str] = Field("val_accuracy", description="one metric, or a list for multi-objective: "
                                                                + " | ".join(OBJECTIVES))
    mode: Literal["min", "max"] | list[Literal["min", "max"]] | None = Field(
        None, description="per metric; default: max for accuracy/F1/throughput, min otherwise")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    search_alg: Literal["random", "grid", "optuna"] = Field("random", description="optuna: TPE, NSGA-II when "
                                                                                    "multi-objective")
    max_concurrent_trials: int | None = Field(None, gt=0, description="default: as many as the cluster's CPUs hold")
    trial_cpus: float = Field(0.25, gt=0, description="CPU held by each trial's driver, besides its workers")

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_name(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @field_validator("metric")
    @classmethod
    def _known_metrics(cls, v):
        names = [v] if isinstance(v, str) else v
        if not names or len(set(names)) != len(names):
            raise ValueError("must be one metric or a list of distinct metrics")
        for name in names:
            if objective_mode(name) is None:
                raise ValueError(f"unknown metric {name!r}: one of {' | '.join(OBJECTIVES)}, latency_ms_bs<N>")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.mode is None:
            self.mode = [objective_mode(m) for m in self.metrics] if self.multi_objective else objective_mode(self.metric)
        if isinstance(self.mode, list) != self.multi_objective or self.multi_objective and len(self.mode) != len(self.metric):
            raise ValueError("mode: must match metric: one mode per metric")
        if self.multi_objective and self.scheduler.name != "fifo":
            raise ValueError(f"scheduler: {self.scheduler.name} stops trials on one metric; multi-objective "
                             "searches need fifo")
        if self.scheduler.name == "pbt" and self.search_alg != "random":
            raise ValueError("search_alg: pbt draws and perturbs its own configurations; use random")
        if self.search_alg == "grid" and self.num_samples != 1:
            raise ValueError("num_samples: a grid search runs each grid point once; must be 1")
        return self

    @property
    def multi_objective(self) -> bool:
        return isinstance(self.metric, list)

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return self.mode if isinstance(self.mode, list) else [self.mode]


class JobSpec(_Section):
    name: str = Field(description="run folder name under `storage`; rerunning the same name resumes it")
    kind: Literal["train", "compress", "transfer", "multitask"] = "train"
    seed: int = 0
    storage: str = Field("runs", description="folder (or URI) holding run folders")
    data: DataSpec | None = Field(None, description="required, except in a compress job with a teacher run folder; "
                                                    "transfer: the target domain; multitask: none (see tasks)")
    model: ModelSpec | None = Field(None, description="required, except where it comes from a compress job's teacher "
                                                      "or a transfer job's source")
    train: TrainSpec = Field(default_factory=TrainSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    compress: CompressSpec | None = Field(None, description="kind compress: the teacher and the methods")
    transfer: TransferSpec | None = Field(None, description="kind transfer: the source and the strategy")
    multitask: MultiTaskSpec | None = Field(None, description="kind multitask: the tasks and how batches mix")
    search: SearchSpec | None = Field(None, description="run a Ray Tune sweep of this job instead of one run")

    @model_validator(mode="after")
    def _kind_sections(self):
        from_teacher = self.kind == "compress" and self.compress is not None and self.compress.teacher is not None
        for section in ("compress", "transfer", "multitask"):
            if self.kind == section and getattr(self, section) is None:
                raise ValueError(f"{section}: required for kind {section}")
            if self.kind != section and getattr(self, section) is not None:
                raise ValueError(f"{section}: only for kind {section} (kind is {self.kind})")
        if self.kind == "multitask" and self.data is not None:
            raise ValueError("data: a multitask job's data is per task (multitask.tasks.NAME.data)")
        if self.data is None and not from_teacher and self.kind != "multitask":
            raise ValueError("data: required key is missing")
        if self.model is None and not from_teacher and self.kind != "transfer":
            raise ValueError("model: required key is missing")
        if self.kind == "transfer" and self.model is None and isinstance(self.transfer.source, SourceJob):
            self.model = self.transfer.source.model
        if self.kind == "transfer" and self.transfer.source_data is None and isinstance(self.transfer.source, SourceJob):
            self.transfer.source_data = self.transfer.source.data
        if self.search is not None:
            self._check_objectives()
        return self

    def _check_objectives(self):
        if self.kind == "compress":
            reported = COMPRESS_OBJECTIVES | {f"latency_ms_bs{b}" for b in self.compress.measure.batch_sizes}
            if self.search.scheduler.name != "fifo":
                raise ValueError("search: a compress trial reports once, at its end; scheduler must be fifo")
        else:
            reported = set(OBJECTIVES) - {"bytes", "nonzeros", "latency_ms_bs1"}
        for name in self.search.metrics:
            if name not in reported:
                raise ValueError(f"search: metric {name} is not reported by {self.kind} trials "
                                 f"(they report {', '.join(sorted(reported))})")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("must be letters, digits, '_', '.', '-' (it names a folder)")
        return v


# ---------------------------------------------------------------------------- loading

def load_job(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read, override (`key.path=value`, value parsed as YAML) and validate a job file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: must be a YAML mapping of sections (got {type(raw).__name__})")
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides, path)
    return validate(raw, str(path))


def set_path(raw: dict, dotted: str, value) -> None:
    """Set `value` at a dotted path in place; sections are created as needed, and a number
    indexes a list (`compress.methods.1.amount`). Raises KeyError naming the bad prefix."""
    node, parts = raw, dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(f"{'.'.join(parts[:i])}: has {len(node)} entries; {part!r} is not one of them")
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise KeyError(f"{'.'.join(parts[:i])}: is not a section")


def apply_overrides(raw: dict, overrides, source) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item}: expected KEY.PATH=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SpecError(f"--set {item}: value is not valid YAML") from None
        try:
            set_path(raw, key, parsed)
        except KeyError as e:
            raise SpecError(f"{source}: {e.args[0]} (--set {item})") from None
    return raw


def validate_section(model: type[BaseModel], raw: dict, source: str, prefix: str):
    """Validate one section on its own (e.g. the data CLI's `data` fields)."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(f"{source}: {_describe({**err, 'loc': (prefix, *err['loc'])})}") from None


def validate(raw: dict, source: str) -> JobSpec:
    raw = _with_source_sections(_with_teacher_sections(raw, source), source)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecError(f"{source}: {_describe(errors[0])}{more}") from None
    if spec.search is not None:      # every searched path and value must make a valid job
        from bigmodel_ray.tune.space import check_space

        check_space(spec.search, without_search(raw), source)
    return spec


def _with_teacher_sections(raw: dict, source: str) -> dict:
    """A compress job with a teacher run folder takes the teacher's model, and its data unless
    the job names other data (the run folder's spec.yaml holds both)."""
    teacher = (raw.get("compress") or {}).get("teacher") if isinstance(raw.get("compress"), dict) else None
    if raw.get("kind") != "compress" or not isinstance(teacher, str):
        return raw
    spec_file = Path(teacher).expanduser() / "spec.yaml"
    try:
        teacher_raw = yaml.safe_load(spec_file.read_text())
    except (OSError, yaml.YAMLError):
        return raw        # not trained yet: the job validates, running it says what is missing
    if "model" in raw and raw["model"] != teacher_raw.get("model"):
        raise SpecError(f"{source}: model: a compress job takes its teacher's model; remove this section")
    data = _run_data(teacher_raw, raw["compress"].get("teacher_task"), source, "compress.teacher")
    return {**raw, "model": teacher_raw.get("model"), "data": raw.get("data", data)}


def _with_source_sections(raw: dict, source: str) -> dict:
    """A transfer job from a source run folder takes the run's model, and its data as the
    source domain (unless `transfer.source_data` names other data)."""
    transfer = raw.get("transfer") if isinstance(raw.get("transfer"), dict) else {}
    run = transfer.get("source")
    if raw.get("kind") != "transfer" or not isinstance(run, str):
        return raw
    try:
        source_raw = yaml.safe_load((Path(run).expanduser() / "spec.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return raw        # not trained yet: the job validates, running it says what is missing
    if "model" in raw and raw["model"] != source_raw.get("model"):
        raise SpecError(f"{source}: model: a transfer job takes its source run's model; remove this section")
    data = _run_data(source_raw, transfer.get("source_task"), source, "transfer.source")
    transfer = {**transfer, "source_data": transfer.get("source_data", data)}
    return {**raw, "model": source_raw.get("model"), "transfer": transfer}


def _run_data(run_raw: dict, task, source: str, field: str):
    """The data section of a run's spec.yaml; a multitask run's is its task's (`<field>_task`),
    whose classifier (the backbone and that task's head) the job then takes."""
    if run_raw.get("kind") != "multitask":
        if task is not None:
            raise SpecError(f"{source}: {field}_task: {task!r}: the run is a single classifier, not multitask")
        return run_raw.get("data")
    tasks = ((run_raw.get("multitask") or {}).get("tasks") or {})
    if task not in tasks:
        which = "required" if task is None else f"{task!r} is not one"
        raise SpecError(f"{source}: {field}_task: {which}: the run is multitask, with tasks {', '.join(tasks)}")
    return tasks[task].get("data")


def data_sections(spec: JobSpec) -> list[tuple[str, DataSpec]]:
    """Every data section of a job, with its key path: data, a transfer's source data, each task's."""
    found = [("data", spec.data)]
    if spec.transfer is not None:
        found.append(("transfer.source_data", spec.transfer.source_data))
        if isinstance(spec.transfer.source, SourceJob):
            found.append(("transfer.source.data", spec.transfer.source.data))
    if spec.multitask is not None:
        found += [(f"multitask.tasks.{name}.data", task.data) for name, task in spec.multitask.tasks.items()]
    return [(key, section) for key, section in found if section is not None]


def without_search(raw: dict) -> dict:
    """The job a trial runs: everything but the `search` block."""
    return {k: v for k, v in raw.items() if k != "search"}


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_MESSAGES = {
    "greater_than": lambda c: f"must be > {_num(c['gt'])}",
    "greater_than_equal": lambda c: f"must be >= {_num(c['ge'])}",
    "less_than": lambda c: f"must be < {_num(c['lt'])}",
    "less_than_equal": lambda c: f"must be <= {_num(c['le'])}",
    "extra_forbidden": lambda c: "unknown key",
    "missing": lambda c: "required key is missing",
    "literal_error": lambda c: f"must be {c['expected']}",
    "model_type": lambda c: "must be a mapping of keys",
    "dict_type": lambda c: "must be a mapping of keys",
    "union_tag_invalid": lambda c: f"{c['discriminator'].strip(chr(39))} must be one of {c['expected_tags']}",
}
METHOD_TAGS = ("distill", "prune", "lowrank", "quantize", "run", "job")     # union tags pydantic puts in error paths


def _describe(err: dict) -> str:
    # Drop pydantic's union-branch tags (e.g. "bool", "literal['auto']") from the key path.
    loc = ".".join(str(p) for p in err["loc"]
                   if not (isinstance(p, str) and ("[" in p or p in ("bool", "float", "int", *METHOD_TAGS))))
    make = _MESSAGES.get(err["type"])
    msg = make(err.get("ctx", {})) if make else err["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    value = err.get("input")
    # A section-level check names its own field ("path: required ..."): fold it into the key path.
    if err["type"] == "value_error" and isinstance(value, dict) and (m := re.match(r"(\w+): (.*)", msg)):
        loc, msg = f"{loc}.{m[1]}" if loc else m[1], m[2]
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, dict):
        msg += f" (got {value!r})"
    return f"{loc}: {msg}" if loc else msg


def dump(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
