"""The job spec: one YAML format for every job kind, validated before anything runs.

A job file is a mapping with `name`, `kind` and one section per concern; each section's
schema sits in the module of its owner here, and maps to one package of the library:
  data.py       `data`        -> bigmodel_ray.data
  train.py      `model`, `train`, `resources`, `checkpoint`, `failure`
                              -> bigmodel_ray.models, bigmodel_ray.train, Ray Train's configs
  compress.py   `compress`    -> bigmodel_ray.compress        (kind compress)
  transfer.py   `transfer`    -> bigmodel_ray.transfer        (kind transfer)
  multitask.py  `multitask`   -> bigmodel_ray.transfer        (kind multitask)
  search.py     `search`      -> bigmodel_ray.tune            (any kind: a sweep of the job)
  tracking.py   `tracking`    -> bigmodel_ray.tracking        (any kind that trains: TensorBoard, MLflow)
  job.py        the job itself: kinds, which sections each needs
Reading a job: load.py (YAML, --set via overrides.py, validation), yaml_input.py (YAML read
within bounds: size, depth, aliases), runs.py (a teacher or source run folder's model and data),
space.py (search spaces), buildable.py (model.args tried on the meta device), messages.py
(one-line errors: `FILE: key.path: message (got VALUE)`, values cut short). `docs/spec.md` is
generated from these models.
"""

from bigmodel_ray.errors import SpecError
from bigmodel_ray.spec.common import EPOCH_METRICS, KindSection, Section
from bigmodel_ray.spec.compress import CompressSpec, Method
from bigmodel_ray.spec.data import FILE_SOURCES, AugmentSpec, DataSpec, NormalizeSpec, ShiftSpec
from bigmodel_ray.spec.job import KIND_SECTIONS, JobSpec, data_sections, dump, without_search
from bigmodel_ray.spec.load import load_job, validate, validate_section
from bigmodel_ray.spec.multitask import MultiTaskSpec, TaskSpec
from bigmodel_ray.spec.overrides import apply, apply_overrides, set_path
from bigmodel_ray.spec.search import OBJECTIVES, SearchSpec, objective_mode
from bigmodel_ray.spec.train import CheckpointSpec, FailureSpec, ModelSpec, OptimizerSpec, ResourcesSpec, ScheduleSpec, TrainSpec
from bigmodel_ray.spec.transfer import STRATEGIES, SourceJob, TransferSpec

__all__ = [
    "SpecError", "EPOCH_METRICS", "KindSection", "Section", "CompressSpec", "Method", "FILE_SOURCES", "AugmentSpec",
    "DataSpec", "NormalizeSpec", "ShiftSpec", "KIND_SECTIONS", "JobSpec", "data_sections", "dump", "without_search",
    "load_job", "validate", "validate_section", "MultiTaskSpec", "TaskSpec", "apply", "apply_overrides", "set_path",
    "OBJECTIVES", "SearchSpec", "objective_mode", "CheckpointSpec", "FailureSpec", "ModelSpec", "OptimizerSpec",
    "ResourcesSpec", "ScheduleSpec", "TrainSpec", "STRATEGIES", "SourceJob", "TransferSpec",
]
