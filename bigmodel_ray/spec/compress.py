"""The `compress` section: the teacher, the methods applied in order, how candidates are
measured and which one is selected (bigmodel_ray.compress)."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from bigmodel_ray.spec.common import MAX_BATCH, MAX_CPUS, MAX_EPOCHS, KindSection, PathStr, RunInput, Section
from bigmodel_ray.spec.messages import shown
from bigmodel_ray.spec.train import ModelSpec


class _Method(Section):
    finetune_epochs: int = Field(0, ge=0, le=MAX_EPOCHS, description="DDP fine-tuning epochs after this method")
    finetune_lr: float | None = Field(None, gt=0, description="default: train.optimizer.lr / 10")


class DistillMethod(_Method):
    method: Literal["distill"] = Field(description="picks the method")
    student: ModelSpec = Field(description="the smaller model trained from the teacher")
    temperature: float = Field(4.0, gt=0, le=1000, description="softens both distributions (Hinton's T)")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term; 1 - alpha: labels")
    epochs: int = Field(10, gt=0, le=MAX_EPOCHS, description="student training epochs (on the DDP loop)")


class PruneMethod(_Method):
    method: Literal["prune"] = Field(description="picks the method")
    amount: float = Field(gt=0, lt=1, description="share of weights (unstructured) or channels (structured)")
    structured: bool = Field(False, description="remove whole channels/neurons (shrinks layers) instead of zeroing")
    norm: Literal[1, 2] = Field(1, description="structured: rank channels by their L1 or L2 norm")
    steps: int = Field(1, ge=1, le=1000, description="gradual: reach `amount` in this many steps, each fine-tuned")


class LowRankMethod(_Method):
    method: Literal["lowrank"] = Field(description="picks the method")
    ratio: float | None = Field(None, gt=0, le=1, description="keep this share of each layer's full rank")
    energy: float | None = Field(None, gt=0, le=1, description="or: the rank keeping this share of the "
                                                                 "squared singular values")
    convs: bool = Field(True, description="factorize convolutions too (Linear layers always)")

    @model_validator(mode="after")
    def _one_rule(self):
        if (self.ratio is None) == (self.energy is None):
            raise ValueError("ratio: give exactly one of ratio or energy")
        return self


class QuantizeMethod(Section):
    method: Literal["quantize"] = Field(description="picks the method")
    mode: Literal["dynamic", "static"] = Field("dynamic", description="int8: dynamic (Linear layers, eager) or "
                                                                        "static (calibrated, compiled)")
    calibration_batches: int = Field(8, gt=0, le=MAX_EPOCHS, description="static: training batches that set activation ranges")


Method = Annotated[DistillMethod | PruneMethod | LowRankMethod | QuantizeMethod, Field(discriminator="method")]
CANDIDATE_METRICS = ("bytes", "params", "nonzeros")
# What a compress trial reports (once, for its final candidate), besides latency_ms_bs<N>.
TRIAL_METRICS = frozenset({"val_accuracy", "val_f1", "params", "bytes", "nonzeros"})


class MeasureSpec(Section):
    batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_BATCH)]] = Field([1, 256], min_length=1, max_length=16,
                                                                       description="CPU latency at each batch size")
    threads: int = Field(1, gt=0, le=MAX_CPUS, description="torch threads while timing")
    rounds: int = Field(3, gt=0, le=1000, description="interleaved timing rounds; each model keeps its best")


class SelectSpec(Section):
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="vs the teacher's validation accuracy")
    minimize: str = Field("latency_ms_bs1", description="latency_ms_bs<N> (a measured batch size), bytes, "
                                                        "params or nonzeros")


class CompressSpec(KindSection):
    teacher: PathStr | None = Field(None, description="a finished train or transfer run folder (multitask: with "
                                                  "teacher_task); none: train this job's own "
                                                  "data/model/train sections first (<name>-teacher)")
    teacher_task: str | None = Field(None, description="a multitask teacher run: the task whose classifier "
                                                       "(the backbone and that task's head) is compressed")
    methods: list[Method] = Field(min_length=1, description="applied in order; each result is a candidate")
    measure: MeasureSpec = Field(default_factory=MeasureSpec, description="how every candidate's latency is timed")
    select: SelectSpec = Field(default_factory=SelectSpec, description="which candidate is selected and exported")
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
            raise ValueError(f"select: minimize must be one of {' | '.join(allowed)} (got {shown(self.select.minimize)})")
        return self

    def supplies(self) -> frozenset[str]:
        # A teacher run folder brings its model, and its data unless the job names other data.
        return frozenset({"data", "model"}) if self.teacher is not None else frozenset()

    def models(self, job) -> list[tuple[str, ModelSpec, object]]:
        return [(f"compress.methods.{i}.student", m.student, job.data)
                for i, m in enumerate(self.methods) if m.method == "distill"]

    def trial_metrics(self, job) -> frozenset[str]:
        return TRIAL_METRICS | {f"latency_ms_bs{b}" for b in self.measure.batch_sizes}

    reports_once: ClassVar[bool] = True
    run_input: ClassVar[RunInput] = RunInput("teacher", "teacher", ("data",))
