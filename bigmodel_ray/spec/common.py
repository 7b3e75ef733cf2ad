"""What every section shares: unknown keys are errors, defaults are validated too; and what a
job kind's own section (`compress:`, `transfer:`, ...) tells the job around it."""

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# What an epoch of a Ray Train run reports that a search may optimize (test metrics are
# reported too but never selected on: choosing by test accuracy leaks the test set).
EPOCH_METRICS = frozenset({"val_accuracy", "val_f1", "val_loss", "train_loss", "params", "epoch_s", "samples_per_s",
                           "val_perplexity", "val_bpc",        # train.task lm
                           "val_rmse", "val_mae", "val_hr10", "val_ndcg10"})    # rating, ranking


@dataclass(frozen=True)
class RunInput:
    """A kind that starts from another run's model: which field of its section names the run
    folder, what errors call that run, and where the run's data goes in the job (spec/runs.py).
    `fine_tunes`: the job trains a classifier from the run's model, so a language model run
    gives its classifier counterpart (the same backbone with a classifier head)."""
    key: str
    what: str
    data_path: tuple[str, ...]
    fine_tunes: bool = False


# Upper bounds of numbers that reach numpy, torch, OpenCV, Ray or the filesystem: far beyond any
# real job, they stop a typo (or 2**64) before it fails deep inside a run.
MAX_SEED = 2**32 - 1          # numpy's seeds are 0 .. 2**32 - 1
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_CPUS = 4096
MAX_PLAIN_VALUES = 1000       # in a free-form mapping (model.args, data.generator, search.space)
MAX_PLAIN_DEPTH = 8


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain a NUL character (it names a file)")
    return v


# A file or folder name: the OS takes paths of up to 4,096 bytes and no NUL.
PathStr = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]


def plain_data(value):
    """Check a free-form value (an `Any` field): numbers, strings, booleans, lists and mappings
    with string keys, at most MAX_PLAIN_DEPTH levels and MAX_PLAIN_VALUES values, finite numbers.
    What YAML may also give (bytes, dates, sets) cannot be dumped back or passed on as an argument."""
    pending, seen = [(value, 1)], 0
    while pending:
        v, depth = pending.pop()
        seen += 1
        if seen > MAX_PLAIN_VALUES or depth > MAX_PLAIN_DEPTH:
            raise ValueError(f"more than {MAX_PLAIN_VALUES} values or {MAX_PLAIN_DEPTH} levels")
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise ValueError("mapping keys must be strings")
            pending += [(item, depth + 1) for item in v.values()]
        elif isinstance(v, list):
            pending += [(item, depth + 1) for item in v]
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"numbers must be finite (got {v})")
        elif v is not None and not isinstance(v, str | int | float):
            raise ValueError("must be numbers, strings, booleans, lists or mappings "
                             f"(got a {type(v).__name__})")
    return value


class Section(BaseModel):
    # inf and nan are never a setting: every float must be finite.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class KindSection(Section):
    """The section named after a job kind. Besides its own fields it says which of the job's
    common sections it supplies itself, and what the kind's trials report to a search."""

    def supplies(self) -> frozenset[str]:
        """Common sections (`data`, `model`) the job may leave out: the kind gets them elsewhere."""
        return frozenset()

    def complete(self, job) -> None:
        """Fill in or check the job's common sections against this one (raise ValueError)."""

    def data_sections(self) -> list[tuple[str, object]]:
        """Data sections of its own, with their key paths (the job's `data` aside)."""
        return []

    def models(self, job) -> list[tuple[str, object, object]]:
        """Models of its own (key path, ModelSpec, the DataSpec it reads), the job's `model` aside."""
        return []

    def trial_metrics(self, job) -> frozenset[str]:
        """What a sweep's trial of this kind reports (and so may optimize)."""
        return EPOCH_METRICS

    # A trial reports once, at its end: early-stopping schedulers cannot judge it.
    reports_once: ClassVar[bool] = False
    # Common sections the kind does not read: the resolved job (validate, spec.yaml) leaves them out.
    unused: ClassVar[tuple[str, ...]] = ()
    # The kind starts from a run folder's model (spec/runs.py).
    run_input: ClassVar[RunInput | None] = None
