"""The `multitask` section: named tasks, each with its own data and loss weight, sharing one
backbone."""

import re
from typing import Literal

from pydantic import Field, field_validator

from bigmodel_ray.spec.common import KindSection, Section
from bigmodel_ray.spec.data import DataSpec
from bigmodel_ray.spec.messages import shown


class TaskSpec(Section):
    data: DataSpec = Field(description="this task's data (any source)")
    weight: float = Field(1.0, gt=0, le=1e6, description="this task's loss weight")


class MultiTaskSpec(KindSection):
    tasks: dict[str, TaskSpec] = Field(min_length=2, max_length=100, description="task name -> its data and loss weight")
    sampling: Literal["proportional", "round_robin"] = Field(
        "proportional", description="proportional: every task's batches once per epoch, randomly interleaved; "
                                    "round_robin: tasks take turns, each as many steps as the largest")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v):
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"task name {shown(name)} must be lowercase letters, digits, '_', at most 64 "
                                 f"characters (it names metrics)")
        return v

    def supplies(self) -> frozenset[str]:
        return frozenset({"data"})         # per task

    def complete(self, job) -> None:
        if job.data is not None:
            raise ValueError("data: a multitask job's data is per task (multitask.tasks.NAME.data)")

    def data_sections(self) -> list[tuple[str, DataSpec]]:
        return [(f"multitask.tasks.{name}.data", task.data) for name, task in self.tasks.items()]
