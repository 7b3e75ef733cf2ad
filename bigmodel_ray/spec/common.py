"""What every section shares: unknown keys are errors, defaults are validated too; and what a
job kind's own section (`compress:`, `transfer:`, ...) tells the job around it."""

from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

# What an epoch of a Ray Train run reports that a search may optimize (test metrics are
# reported too but never selected on: choosing by test accuracy leaks the test set).
EPOCH_METRICS = frozenset({"val_accuracy", "val_f1", "val_loss", "train_loss", "params", "epoch_s", "samples_per_s",
                           "val_perplexity", "val_bpc"})       # the last two: train.task lm


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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


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

    def trial_metrics(self, job) -> frozenset[str]:
        """What a sweep's trial of this kind reports (and so may optimize)."""
        return EPOCH_METRICS

    # A trial reports once, at its end: early-stopping schedulers cannot judge it.
    reports_once: ClassVar[bool] = False
    # The kind starts from a run folder's model (spec/runs.py).
    run_input: ClassVar[RunInput | None] = None
