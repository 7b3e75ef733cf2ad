"""The `search` block: a Ray Tune sweep of the job — what is optimized, how trials are drawn
and stopped (bigmodel_ray.tune maps it to Ray Tune; spec/space.py parses the space)."""

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bigmodel_ray.spec.common import MAX_CPUS, MAX_EPOCHS, Section, plain_data
from bigmodel_ray.spec.messages import shown

# Metrics a search may optimize, with their natural direction (what each kind's trials report:
# spec/common.py EPOCH_METRICS, a compress trial's in spec/compress.py).
OBJECTIVES = {"val_accuracy": "max", "val_f1": "max", "val_loss": "min", "train_loss": "min",
              "params": "min", "epoch_s": "min", "samples_per_s": "max",
              # a language model's (train.task: lm)
              "val_perplexity": "min", "val_bpc": "min",
              # a recommender's (train.task: rating, ranking)
              "val_rmse": "min", "val_mae": "min", "val_hr10": "max", "val_ndcg10": "max",
              # an rl run's (kind rl)
              "eval_return_mean": "max", "episode_return_mean": "max", "env_steps": "min", "iteration_s": "min",
              # what a compressed candidate reports
              "bytes": "min", "nonzeros": "min", "latency_ms_bs1": "min"}


def objective_mode(name: str) -> str | None:
    if re.fullmatch(r"latency_ms_bs\d+", name):
        return "min"
    return OBJECTIVES.get(name)


class SchedulerSpec(Section):
    name: Literal["fifo", "asha", "pbt"] = Field("fifo", description="fifo: run every trial to the end; asha: stop "
                                                                      "bad trials early; pbt: exploit/explore checkpoints")
    grace_period: int = Field(1, gt=0, le=MAX_EPOCHS, description="asha: epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3, gt=1, le=1000, description="asha: 1 in this many trials goes on at each rung")
    perturbation_interval: int = Field(2, gt=0, le=MAX_EPOCHS, description="pbt: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="pbt: bottom share that clones the top share")
    resample_probability: float = Field(0.25, ge=0, le=1, description="pbt: chance a value is redrawn, else scaled")


class SearchSpec(Section):
    space: dict[str, Any] = Field(description="dotted spec path -> loguniform|uniform|randint(lo, hi), choice|grid([...])")
    num_samples: int = Field(1, gt=0, le=100_000, description="trials drawn; with grid(...) values, drawn per grid point")
    metric: str | list[str] = Field("val_accuracy", description="one metric, or a list for multi-objective: "
                                                                + " | ".join(OBJECTIVES))
    mode: Literal["min", "max"] | list[Literal["min", "max"]] | None = Field(
        None, description="per metric; default: max for accuracy/F1/throughput, min otherwise")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="a name, or a mapping with its settings")
    search_alg: Literal["random", "grid", "optuna"] = Field("random", description="optuna: TPE, NSGA-II when "
                                                                                    "multi-objective")
    max_concurrent_trials: int | None = Field(None, gt=0, le=MAX_CPUS, description="default: as many as the cluster's CPUs hold")
    trial_cpus: float = Field(0.25, gt=0, le=MAX_CPUS, description="CPU held by each trial's driver, besides its workers")

    @field_validator("space")
    @classmethod
    def _plain_space(cls, v):
        return plain_data(v)

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
                raise ValueError(f"unknown metric {shown(name)}: one of {' | '.join(OBJECTIVES)}, latency_ms_bs<N>")
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

