"""The `transfer` section: the source model, the source domain's data and the strategy that
moves the model to the job's data (bigmodel_ray.transfer)."""

from typing import Annotated, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from bigmodel_ray.spec.common import MAX_EPOCHS, KindSection, PathStr, RunInput, Section
from bigmodel_ray.spec.data import DataSpec
from bigmodel_ray.spec.train import ModelSpec, TrainSpec, classifier_counterpart

STRATEGIES = ("linear_probe", "freeze", "full", "discriminative", "gradual", "dann")


class SourceJob(Section):
    """The train step of a transfer job: the source model, trained first as `<name>-source`."""
    data: DataSpec = Field(description="the source domain")
    model: ModelSpec = Field(description="the source model")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the source model is trained")


class DANNSpec(Section):
    lambda_max: float = Field(1.0, gt=0, le=1000, description="the adversarial weight's final value")
    gamma: float = Field(10.0, gt=0, le=1000, description="how fast lambda rises: 2 / (1 + exp(-gamma * progress)) - 1")
    hidden: int = Field(64, gt=0, le=1 << 16, description="the domain classifier's hidden units")


class TransferSpec(KindSection):
    source: Annotated[Annotated[PathStr, Tag("run")] | Annotated[SourceJob, Tag("job")],
                      Discriminator(lambda v: "run" if isinstance(v, str) else "job")] = Field(
        description="a finished train run folder, or a train step {data, model, train} run first as <name>-source")
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
    freeze_stages: int = Field(1, ge=0, le=1000, description="freeze: stages frozen from the input side")
    backbone_lr_factor: float = Field(0.1, gt=0, le=1, description="discriminative: the backbone's lr share")
    unfreeze_every: int = Field(1, gt=0, le=MAX_EPOCHS, description="gradual: epochs between unfreezing steps")
    target_labels: int | None = Field(None, gt=0, le=10**9, description="labelled target training rows to use (few-shot "
                                                                "fine-tuning); default: all. dann uses none")
    dann: DANNSpec = Field(default_factory=DANNSpec,
                           description="dann: the adversarial weight's schedule and the domain classifier")

    @model_validator(mode="after")
    def _task_of_a_run(self):
        if self.source_task is not None and not isinstance(self.source, str):
            raise ValueError("source_task: picks a task of a multitask source run; transfer.source is a train step")
        return self

    run_input: ClassVar[RunInput] = RunInput("source", "source run", ("transfer", "source_data"), fine_tunes=True)

    def supplies(self) -> frozenset[str]:
        return frozenset({"model"})        # the source's

    def complete(self, job) -> None:
        if isinstance(self.source, SourceJob):      # an inline source: its model, its data as the source domain
            job.model = job.model or classifier_counterpart(self.source.model)
            self.source_data = self.source_data or self.source.data

    def models(self, job) -> list[tuple[str, ModelSpec, DataSpec]]:
        if isinstance(self.source, SourceJob):
            return [("transfer.source.model", self.source.model, self.source.data)]
        return []

    def data_sections(self) -> list[tuple[str, DataSpec]]:
        found = [("transfer.source_data", self.source_data)]
        if isinstance(self.source, SourceJob):
            found.append(("transfer.source.data", self.source.data))
        return found
