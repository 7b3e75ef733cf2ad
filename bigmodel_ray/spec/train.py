"""The `model`, `train`, `resources`, `checkpoint` and `failure` sections: what is trained, how,
and on what share of the cluster (bigmodel_ray.models, bigmodel_ray.train, Ray Train's configs)."""

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from bigmodel_ray.models import CLASSIFIER_OF, MODELS, model_arg_names
from bigmodel_ray.spec.common import MAX_BATCH, MAX_CPUS, MAX_EPOCHS, PathStr, Section, plain_data
from bigmodel_ray.spec.messages import shown


class ModelSpec(Section):
    name: str = Field(description="one of " + " | ".join(MODELS))
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model")
    init_from: PathStr | None = Field(None, description="start from weights you have: a local .safetensors file, or a "
                                                    "state dict / checkpoint saved by torch (loaded with "
                                                    "weights_only); a finished run folder (its final checkpoint, "
                                                    "e.g. a language model to fine-tune a classifier from)")
    init_strict: bool = Field(True, description="init_from: every key must match the model, same shapes; false: "
                                                "load the keys that match, keep the rest freshly initialized")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v):
        if v not in MODELS:
            raise ValueError(f"must be one of {' | '.join(MODELS)}")
        return v

    @field_validator("args")
    @classmethod
    def _known_args(cls, v, info):
        plain_data(v)
        name = info.data.get("name")
        unknown = sorted(set(v) - model_arg_names(name)) if name else []
        if unknown:
            raise ValueError(f"unknown argument {shown(unknown[0])} for model {name!r} "
                             f"(accepts {', '.join(sorted(model_arg_names(name)))})")
        return v


def classifier_counterpart(model: ModelSpec) -> ModelSpec:
    """The classifier a model is fine-tuned into: itself, or a language model's counterpart."""
    if model.name not in CLASSIFIER_OF:
        return model
    return ModelSpec(name=CLASSIFIER_OF[model.name], args=model.args)


class OptimizerSpec(Section):
    name: Literal["adam", "adamw", "sgd"] = Field("adamw", description="the torch.optim optimizer")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (after warmup)")
    weight_decay: float = Field(0.0, ge=0, description="decoupled for adamw, L2 for adam and sgd")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")


class ScheduleSpec(Section):
    name: Literal["constant", "cosine"] = Field("constant", description="learning rate per optimizer step")
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS, description="linear warmup from 0, in epochs (fractions allowed)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine ends at lr * min_lr_ratio")


MetricName = Annotated[str, Field(pattern=r"^val_\w{1,60}$")]


class BestSpec(Section):
    metric: MetricName | None = Field(None, description="a validation metric the run reports, e.g. val_f1, val_loss; "
                                                        "default: val_accuracy if reported, else val_loss")
    mode: Literal["max", "min"] | None = Field(None, description="default: min for losses, perplexity, bpc; else max")


class EarlyStoppingSpec(Section):
    metric: MetricName | None = Field(None, description="default: checkpoint.best's default (val_accuracy, else val_loss)")
    mode: Literal["max", "min"] | None = Field(None, description="default: min for losses, perplexity, bpc; else max")
    patience: int = Field(3, gt=0, le=MAX_EPOCHS, description="stop after this many epochs without an improvement")
    min_delta: float = Field(0.0, ge=0, le=1e6, description="smaller changes do not count as improvements")


class FailureSpec(Section):
    max_failures: int = Field(0, ge=-1, le=MAX_EPOCHS, description="worker-group restarts from the last checkpoint; -1 = forever")


class TrainSpec(Section):
    task: Literal["classify", "lm", "rating", "ranking"] = Field(
        "classify", description="classify: the label column's classes; lm: a causal language model of the text "
                                "(next-token loss; reports perplexity and bits per character; model text_lm); "
                                "rating: predict interactions' ratings (RMSE, MAE); ranking: rank each held-out "
                                "interaction's item among sampled negatives (HR@10, NDCG@10); both: recommenders")
    epochs: int = Field(10, gt=0, le=MAX_EPOCHS, description="passes over the training data")
    batch_size: int = Field(64, gt=0, le=MAX_BATCH, description="per worker and micro-step")
    grad_accum: int = Field(1, gt=0, le=MAX_BATCH, description="micro-steps per optimizer step")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy's label smoothing")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: each class's cross-entropy weighted by rows / (classes x its train rows), "
                            "as scikit-learn's class_weight='balanced' (rare classes count more); counted over the "
                            "whole train split before the first step")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16: autocast (CPU or GPU); fp16: autocast + GradScaler (GPU only)")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp; fsdp: FSDP2 fully_shard (parameters, gradients and optimizer state sharded "
                           "across workers; CPU/gloo and GPU/nccl)")
    activation_checkpointing: bool = Field(
        False, description="keep only each block's input for the backward pass and recompute the block's activations "
                           "there: less activation memory for about one more forward per step (the model's FSDP "
                           "units; names in the state dict unchanged)")
    compile: bool = Field(
        False, description="torch.compile the model in place (state dict keys unchanged): faster steps on models "
                           "big enough to be compute-bound, after a compile of seconds to minutes that shows in "
                           "epoch 1's time (and again for each new batch shape); needs a C++ compiler on CPU")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="see below")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="see below")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="end the run when a validation metric stops improving (a rerun remembers the count)")


class ResourcesSpec(Section):
    workers: int = Field(2, gt=0, le=MAX_CPUS, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0, le=MAX_CPUS, description="also the worker's torch thread count")
    data_cpus: float = Field(1.0, gt=0, le=MAX_CPUS, description="CPUs kept free for Ray Data's read/decode/augment tasks; "
                                                     "the embedded Ray counts them on top of the trainers'")
    data_memory_mb: int = Field(256, ge=64, le=1 << 20, description="object-store memory the data pipeline may fill ahead of "
                                                          "training; the embedded Ray's object store is 4x this")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: one GPU per worker when the cluster has GPUs")

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _gpu_choice(cls, v):
        if v not in (True, False, "auto") or isinstance(v, int) and not isinstance(v, bool):
            raise ValueError("must be true, false or auto")
        return v


class CheckpointSpec(Section):
    every: int = Field(1, gt=0, le=MAX_EPOCHS, description="checkpoint every N epochs (and always after the last)")
    keep: int = Field(2, gt=0, le=MAX_EPOCHS, description="keep the K most recent checkpoints")
    best: BestSpec = Field(default_factory=BestSpec, description="which epoch is best (its weights are kept in every "
                                                                 "checkpoint beside the last ones)")
    evaluate: Literal["best", "last"] = Field(
        "best", description="whose test metrics result.json reports and whose model the run leaves (run folder's "
                            "model/): the best epoch's, or the last one's")
