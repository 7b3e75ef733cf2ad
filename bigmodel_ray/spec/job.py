"""The job: a name, a kind, the common sections every kind uses, the kind's own section, and
an optional `search` block that turns the job into a sweep of itself."""

import os
import re
from typing import Literal, get_args

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticSerializationError

from bigmodel_ray.errors import SpecError
from bigmodel_ray.kinds import KINDS
from bigmodel_ray.models import LANGUAGE_MODELS, takes_interactions, takes_tokens
from bigmodel_ray.spec.buildable import check_buildable
from bigmodel_ray.spec.common import EPOCH_METRICS, MAX_SEED, KindSection, PathStr, Section
from bigmodel_ray.spec.compress import CompressSpec
from bigmodel_ray.spec.data import DataSpec
from bigmodel_ray.spec.messages import cut, shown
from bigmodel_ray.spec.multitask import MultiTaskSpec
from bigmodel_ray.spec.rl import RLSpec
from bigmodel_ray.spec.search import SearchSpec
from bigmodel_ray.spec.tracking import TrackingSpec
from bigmodel_ray.spec.train import CheckpointSpec, FailureSpec, ModelSpec, ResourcesSpec, TrainSpec
from bigmodel_ray.spec.transfer import TransferSpec
from bigmodel_ray.storage import STORAGE_ENV

COMMON = ("data", "model")        # sections a kind may supply itself (KindSection.supplies)
# Folder names take 255 bytes; runs add suffixes (-teacher, -source, a trial's) to the job's name.
MAX_NAME_CHARS = 200


class JobSpec(Section):
    name: str = Field(description="run folder name under `storage` (default: the job file's name; letters, "
                                  "digits, '_', '.', '-', at most 200 characters); rerunning the same name "
                                  "resumes it")
    kind: Literal[tuple(KINDS)] = Field("train", description="what the job does: " + " | ".join(KINDS))
    seed: int = Field(0, ge=0, le=MAX_SEED, description="model init, data order and dropout")
    storage: PathStr = Field(default_factory=lambda: os.environ.get(STORAGE_ENV) or "runs",
                             description=f"folder holding run folders: a local folder, or object storage "
                                         f"(s3://bucket/prefix, gs://bucket/prefix); default ${STORAGE_ENV}, else runs")
    storage_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="s3:// and gs:// storage: options of pyarrow's S3FileSystem / "
                                          "GcsFileSystem (e.g. endpoint_override, region); never credentials")
    data: DataSpec | None = Field(None, description="required, except in a compress job with a teacher run folder; "
                                                    "transfer: the target domain; multitask: none (see tasks)")
    model: ModelSpec | None = Field(None, description="required, except where it comes from a compress job's teacher "
                                                      "or a transfer job's source")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the model is trained")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="the share of the cluster a run takes")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="how often and how many")
    failure: FailureSpec = Field(default_factory=FailureSpec, description="fault tolerance")
    compress: CompressSpec | None = Field(None, description="kind compress: the teacher and the methods")
    transfer: TransferSpec | None = Field(None, description="kind transfer: the source and the strategy")
    multitask: MultiTaskSpec | None = Field(None, description="kind multitask: the tasks and how batches mix")
    rl: RLSpec | None = Field(None, description="kind rl: the environment, the RLlib algorithm and its settings")
    search: SearchSpec | None = Field(None, description="run a Ray Tune sweep of this job instead of one run")
    tracking: TrackingSpec | None = Field(None, description="also send epochs and results to TensorBoard files and/or "
                                                            "MLflow; changing it never stops a run from resuming")

    @property
    def kind_section(self) -> KindSection | None:
        """The section named after the job's kind, if the kind has one."""
        return getattr(self, self.kind) if self.kind in KIND_SECTIONS else None

    @model_validator(mode="after")
    def _kind_sections(self):
        for key in KIND_SECTIONS:
            if self.kind == key and getattr(self, key) is None:
                raise ValueError(f"{key}: required for kind {key}")
            if self.kind != key and getattr(self, key) is not None:
                raise ValueError(f"{key}: only for kind {key} (kind is {self.kind})")
        own = self.kind_section
        if own is not None:
            own.complete(self)
        supplied = own.supplies() if own is not None else frozenset()
        for key in COMMON:
            if getattr(self, key) is None and key not in supplied:
                raise ValueError(f"{key}: required key is missing")
        self._check_inputs()
        self._check_models(own)
        if self.search is not None:
            self._check_objectives(own)
        return self

    def _check_inputs(self):
        """Token models take text, recommenders interactions, the others images or series; the
        task fits the model; a token model's vocabulary is the tokenizer's unless model.args says
        otherwise."""
        task = self.train.task
        if self.train.class_weights != "none" and (task != "classify" or self.kind not in ("train", "transfer")
                                                   or self.kind == "transfer" and self.transfer.strategy == "dann"):
            raise ValueError("train.class_weights: weighs a classifier's cross-entropy: kind train (task classify) "
                             "or a transfer other than dann")
        if task != "classify" and self.kind != "train":
            raise ValueError(f"train.task: {task} trains in a kind train job (kind is {self.kind})"
                             + ("; a language model run can then be a transfer source or a model.init_from"
                                if task == "lm" else ""))
        if self.model is None or self.data is None:
            return
        text, name = self.data.text, self.model.name
        takes = "token ids" if takes_tokens(name) else "user and item ids" if takes_interactions(name) else "images or series"
        gives = "text" if text else "interactions" if self.data.interactions else "images or series"
        if {"token ids": "text", "user and item ids": "interactions"}.get(takes, "images or series") != gives:
            raise ValueError(f"model: {name} takes {takes}, and data.source {self.data.source} gives {gives}")
        if (task in ("rating", "ranking")) != (gives == "interactions"):
            raise ValueError(f"train.task: {task} does not train on {gives}"
                             + (" (recommenders: rating or ranking)" if gives == "interactions" else ""))
        if gives == "interactions":
            return
        if (task == "lm") != (name in LANGUAGE_MODELS):
            raise ValueError(f"train.task: {task} trains "
                             f"{' | '.join(LANGUAGE_MODELS) if task == 'lm' else 'classifiers'}, "
                             f"and model.name is {self.model.name}")
        if text is not None:
            vocab = self.model.args.setdefault("vocab_size", text.vocab_size)
            if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < text.vocab_size:
                raise ValueError(f"model.args.vocab_size: {shown(vocab)} is smaller than data.text.vocab_size "
                                 f"{text.vocab_size}")

    def _check_models(self, own: KindSection | None):
        """Every model is built (on the meta device) for the inputs its data implies."""
        data = self.data
        if data is None and own is not None:        # multitask: the backbone reads every task's data alike
            data = next((section for _, section in own.data_sections()), None)
        found = [("model", self.model, data)] + (own.models(self) if own is not None else [])
        for key, model, data in found:
            if model is not None and data is not None:
                try:
                    check_buildable(model, data)
                except ValueError as e:
                    raise ValueError(f"{key}.args: {e}") from None

    def _check_objectives(self, own: KindSection | None):
        reported = own.trial_metrics(self) if own is not None else EPOCH_METRICS
        if own is not None and own.reports_once and self.search.scheduler.name != "fifo":
            raise ValueError(f"search: a {self.kind} trial reports once, at its end; scheduler must be fifo")
        for name in self.search.metrics:
            if name not in reported:
                raise ValueError(f"search: metric {name} is not reported by {self.kind} trials "
                                 f"(they report {', '.join(sorted(reported))})")

    @model_validator(mode="after")
    def _storage(self):
        from bigmodel_ray import storage

        if storage.is_remote(self.storage):
            storage.filesystem(self.storage, self.storage_options)      # a bad option fails here, not mid-run
        elif self.storage_options:
            raise ValueError("storage_options: only for object storage (storage: s3://... or gs://...)")
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("must be letters, digits, '_', '.', '-' (it names a folder)")
        if len(v) > MAX_NAME_CHARS:
            raise ValueError(f"must be at most {MAX_NAME_CHARS} characters (it names a folder)")
        return v


# The sections named after a kind (compress:, transfer:, ...), by kind; a kind without options has none.
SECTION_OF_KIND = {kind: t for kind in KINDS if kind in JobSpec.model_fields
                   for t in get_args(JobSpec.model_fields[kind].annotation)
                   if isinstance(t, type) and issubclass(t, KindSection)}
KIND_SECTIONS = tuple(SECTION_OF_KIND)


def data_sections(spec: JobSpec) -> list[tuple[str, DataSpec]]:
    """Every data section of a job, with its key path: data, and the kind's own (a transfer's
    source data, each task's)."""
    own = spec.kind_section
    found = [("data", spec.data)] + (own.data_sections() if own is not None else [])
    return [(key, section) for key, section in found if section is not None]


def without_search(raw: dict) -> dict:
    """The job a trial runs: everything but the `search` block."""
    return {k: v for k, v in raw.items() if k != "search"}


def _empty_subsections(section: Section) -> list[str]:
    """A section's optional sub-sections left out (an rl job's other algorithm)."""
    fields = type(section).model_fields
    return [key for key, value in section if value is None and fields[key].default is None
            and any(isinstance(t, type) and issubclass(t, Section) for t in get_args(fields[key].annotation))]


def dump(spec: JobSpec) -> str:
    """The resolved job as YAML, without the sections it leaves empty or its kind does not read."""
    left_out: dict = {key: True for key in JobSpec.model_fields if getattr(spec, key) is None}
    own = spec.kind_section
    if own is not None:
        for path in own.unused:                           # "train", "checkpoint.best"
            section, _, field = path.partition(".")
            if field:
                left_out.setdefault(section, {})[field] = True
            else:
                left_out[section] = True
        if empty := _empty_subsections(own):
            left_out[spec.kind] = dict.fromkeys(empty, True)
    try:
        return yaml.safe_dump(spec.model_dump(mode="json", exclude=left_out), sort_keys=False)
    except (PydanticSerializationError, ValueError, RecursionError) as e:     # a value validation let through
        raise SpecError(f"{spec.name}: the resolved spec cannot be written as YAML ({type(e).__name__}: "
                        f"{cut(str(e))})") from None
