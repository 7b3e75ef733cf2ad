"""The per-worker training loop that Ray Train runs on every rank.

setup (model, strategy, optimizer, resume) -> for each epoch: train, validate on all ranks,
log, report (+ checkpoint every N epochs); the last epoch's report carries the test metrics
too. What is optimized and reported comes from the run's objective (train/objectives.py:
classification by default; distillation, fine-tuning, DANN, multi-task). Rank 0 writes the
epoch log and returns the test metrics, which the driver receives as
`Result.return_value`. Each checkpoint holds the epoch's report next to the state, so a run
resumed from its final checkpoint can repeat the report without training.
"""

import json
import math
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch
from torch.nn.parallel import DistributedDataParallel

from bigmodel_ray.models import build_model, shard_units
from bigmodel_ray.spec import DataSpec, JobSpec
from bigmodel_ray.train.calls import RayTrainCalls
from bigmodel_ray.train.compute import prepare_compute
from bigmodel_ray.train.epoch_log import RESUMED_ROW
from bigmodel_ray.train.inputs import ModelInputs
from bigmodel_ray.train.objectives import Classify
from bigmodel_ray.train.optim import apply_hyperparameters, build_optimizer, build_scheduler
from bigmodel_ray.train.selection import Best, Patience
from bigmodel_ray.train.shards import EvalBatches, TrainBatches
from bigmodel_ray.train.state import gather_state, read_state, restore_state, save_state
from bigmodel_ray.train.steps import evaluate, train_epoch

REPORT_FILE = "report.json"      # in each checkpoint: the metrics reported with it


def eval_batch_size(train_batch: int, input_shape) -> int:
    """Large batches for small inputs (fast), but never more than ~16 MB of float inputs or twice
    the train batch: a 512-image batch of 224x224 would need ~1 GB of activations."""
    sample_bytes = 4 * math.prod(input_shape)
    return int(min(512, max(2 * train_batch, (16 << 20) // sample_bytes)))


def wrap_model(model: torch.nn.Module, strategy: str, device: torch.device, calls, ddp_kwargs=None) -> torch.nn.Module:
    if strategy == "fsdp":
        # FSDP2: each unit's parameters are sharded across ranks and gathered per forward.
        from torch.distributed.fsdp import fully_shard
        if device.type == "cuda":
            torch.cuda.set_device(device)      # fully_shard's default mesh uses the current device
        model.to(device)
        for unit in shard_units(model):
            fully_shard(unit)
        return fully_shard(model)
    # DDP when world size > 1 (gloo on CPU, nccl on GPU)
    return calls.prepare_model(model, ddp_kwargs)


def open_batches(config: dict, spec: JobSpec, objective, rank: int, world: int, device, calls):
    """This worker's training streams (the objective's train sets: Ray splits them across
    workers) and evaluation sets (every other dataset), each read with its own data section
    (a transfer job's source and target differ; default: the job's)."""
    t, data, input_shape = spec.train, spec.data, tuple(config["input_shape"])
    data_of = {name: DataSpec.model_validate(d) for name, d in (config.get("data_sections") or {}).items()}
    streams, eval_sets = {}, {}
    arrays = config.get("arrays") or {}
    for name in config["dataset_names"]:
        d = data_of.get(name, data)
        shard = ray.get(arrays[name]) if name in arrays else calls.dataset_shard(name)
        if name in arrays and name in objective.train_sets:
            # An equal share per worker, as Ray Data's split gives: the ranks take as many steps.
            x, y = shard
            n = len(y) // world * world
            shard = x[rank:n:world], y[rank:n:world]
        if name in objective.train_sets:
            augment_on_data = d.augment is not None and d.augment.on == "data"   # fresh draws every epoch
            in_memory = d.keep_in_memory and not augment_on_data or name in objective.cycled_sets
            streams[name] = TrainBatches(shard, batch_size=t.batch_size, in_memory=in_memory,
                                         seed=spec.seed, rank=rank, device=device,
                                         inputs=ModelInputs(d, spec.seed, config.get("device_augment") if d is data else None),
                                         row_bytes=math.prod(input_shape))     # stored as uint8 images (float: 4x)
        else:
            eval_sets[name] = EvalBatches(shard,
                                          batch_size=eval_batch_size(t.batch_size, input_shape),
                                          in_memory=d.keep_in_memory, rank=rank, world_size=world, device=device,
                                          inputs=ModelInputs(d, spec.seed))
    return streams, eval_sets


def train_worker(config: dict) -> dict:
    spec = JobSpec.model_validate(config["spec"])
    t = spec.train
    calls = config.get("train_calls") or RayTrainCalls()     # train/in_process.py hands its own
    rank, world = calls.rank_and_world()
    device = calls.device()
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    input_shape, num_classes = tuple(config["input_shape"]), config["num_classes"]

    objective = config.get("objective") or Classify(t.label_smoothing)
    torch.manual_seed(spec.seed)                      # identical initial weights on every rank
    # A model handed over (a compressed one being fine-tuned, a source model to transfer)
    # instead of the spec's fresh one.
    base = config.get("initial_model")
    if base is None:
        base = build_model(spec.model.name, input_shape, num_classes, **spec.model.args, **config.get("model_args", {}))
    base = prepare_compute(objective.prepare(base), t, device)
    model = wrap_model(base, t.strategy, device, calls, objective.ddp_kwargs)
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    optimizer = build_optimizer(objective.param_groups(inner), t)
    scheduler = build_scheduler(optimizer, t, config["steps_per_epoch"])
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None

    chosen = getattr(spec.checkpoint, "best", None)
    best = Best(chosen and chosen.metric, chosen and chosen.mode,
                keep_weights=getattr(spec.checkpoint, "evaluate", "best") == "best")
    stopping = getattr(t, "early_stopping", None)
    patience = stopping and Patience(stopping.metric, stopping.mode, stopping.patience, stopping.min_delta)

    epochs_done, resumed_row = 0, None
    # The run's own checkpoint (resume, restart after a failure), else one handed over: a sweep's
    # trial continuing after an interruption, or a PBT trial cloning a better one.
    checkpoint = calls.checkpoint()
    if checkpoint is None and (given := config.get("init_checkpoint")):
        checkpoint = given if isinstance(given, ray.train.Checkpoint) else ray.train.Checkpoint(given)
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = read_state(d)
            report = Path(d) / REPORT_FILE
            resumed_row = json.loads(report.read_text()) if report.exists() else None
        epochs_done = restore_state(state, model, optimizer, scheduler, scaler, rank)
        best.restore(state.get("best"))
        if patience:
            patience.restore(state.get("patience"))
        del state
        apply_hyperparameters(optimizer, scheduler, t)
    else:
        torch.manual_seed(spec.seed * 1_000_003 + rank)  # per-rank dropout streams

    pipeline_state = config.get("pipeline_state")
    streams, eval_sets = open_batches(config, spec, objective, rank, world, device, calls)
    micro_batches = config["micro_batches"]
    if t.class_weights == "balanced":
        objective.class_weight = balanced_weights(streams["train"], num_classes, world)

    takes_ids = getattr(spec.data, "text", None) is not None or getattr(spec.data, "interactions", None) is not None

    def run_eval(name, eval_model):
        # DDP's forward broadcasts buffers (a collective): the objective hands the inner module,
        # so ranks with one batch fewer never wait on each other. FSDP2 evens out forwards
        # inside `evaluate`.
        return evaluate(eval_model, eval_sets[name], num_classes=num_classes_of(name), device=device,
                        precision=t.precision, input_shape=input_shape,
                        scores=objective.scores(num_classes_of(name), device),
                        tokens=takes_ids)

    def num_classes_of(name):
        return config.get("num_classes_of", {}).get(name, num_classes)

    meta = {"model": spec.model.model_dump(), "input_shape": list(input_shape), "num_classes": num_classes,
            "kind": spec.kind, "class_names": config.get("class_names"), "data_args": config.get("model_args", {})}
    def evaluate_test(current_epoch: int) -> dict:
        """The test metrics of the chosen epoch's weights (best unless checkpoint.evaluate: last);
        when that is not the last epoch, the last one's too (`last_epoch_test_*`), to compare."""
        if best.chosen_epoch(current_epoch) == current_epoch:
            return {**objective.evaluate(run_eval, inner, "test"), "test_epoch": current_epoch}
        last = _without_counts(objective.evaluate(run_eval, inner, "test"))
        tested = best.load_into(model, current_epoch)
        return {**objective.evaluate(run_eval, inner, "test"), "test_epoch": tested,
                **{f"last_epoch_{k}": v for k, v in last.items()}}

    test, trained = None, epochs_done
    # A run that stopped early and is run again has nothing left to train.
    stopped = bool(patience and patience.exhausted(epochs_done))
    for epoch in range(epochs_done, epochs_done if stopped else t.epochs):
        trained = epoch + 1
        if pipeline_state is not None:     # before asking for the epoch's data: its tasks read it
            ray.get(pipeline_state.set_epoch.remote(epoch))
        start = time.perf_counter()
        train = train_epoch(model, objective.batches(streams, epoch, micro_batches), optimizer, scheduler,
                            device=device, precision=t.precision, grad_accum=t.grad_accum, grad_clip=t.grad_clip,
                            scaler=scaler, loss=objective.loss, frozen=objective.frozen(inner, epoch))
        train_s = time.perf_counter() - start
        share_buffers(inner, world)
        val = objective.evaluate(run_eval, inner, "val")
        row = {
            "epoch": epoch + 1, "train_loss": train["loss"], **_without_counts(val),
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": train["samples"] * world / train_s, "train_s": train_s,
            "epoch_s": time.perf_counter() - start, "params": config.get("params"),
            **({"first_step_at": train["first_step_at"]} if epoch == epochs_done else {}),   # this run's
        }
        best.update(model, row)
        stopped = bool(patience and patience.update(row))
        last = epoch + 1 == t.epochs or stopped
        save = (epoch + 1) % spec.checkpoint.every == 0 or last
        # The last epoch's state is taken before the best weights are swapped in to test them:
        # a resumed run continues from where training was, not from the best epoch.
        state = gather_state(model, optimizer, scheduler, scaler, epoch + 1, meta,
                             best=best.state(), patience=patience and patience.state()) if save else None
        if last:
            test = evaluate_test(epoch + 1)
            row.update(_without_counts(test))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if state is not None:
                save_state(state, tmp)
                (Path(tmp) / REPORT_FILE).write_text(json.dumps(row))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            # The first report after a resume carries the resumed epoch's row too: a run killed
            # after its checkpoint was stored but before its row was logged gets it logged now.
            calls.report({**row, RESUMED_ROW: resumed_row} if resumed_row else row, checkpoint)
            resumed_row = None
        if stopped:
            break

    test = test or evaluate_test(trained)
    return {**test, "epochs": trained, "resumed_from_epoch": epochs_done, "stopped_early": stopped,
            "best": {k: v for k, v in (best.state() or {}).items() if k != "model"} or None,
            "rank_param_checksums": _rank_checksums(model, t.strategy, world),
            "rank_nodes": _gather(ray.get_runtime_context().get_node_id(), world)}


def balanced_weights(train, num_classes: int, world: int) -> torch.Tensor:
    """rows / (classes x rows of the class) over the whole train split (summed across workers);
    0 for a class with no train rows."""
    counts = train.label_counts(num_classes)
    if world > 1:
        torch.distributed.all_reduce(counts)
    counts = counts.double()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), 0.0)
    return weights.float()


def share_buffers(model, world: int) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, before evaluating.

    Under DDP each rank's statistics follow its own batches after the per-forward broadcast (FSDP
    never syncs them), and the checkpoint holds rank 0's: with them on every rank, the metrics a
    run reports are the saved model's (measured: 0.8926 reported vs 0.8852 for the checkpoint,
    2 workers). Training is unchanged: DDP broadcasts rank 0's buffers at every forward anyway.
    """
    if world > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


def _without_counts(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_count")}


def _gather(value, world: int) -> list:
    """Every rank's value, in rank order (a collective: all ranks call it)."""
    if world == 1:
        return [value]
    values = [None] * world
    torch.distributed.all_gather_object(values, value)
    return values


def _rank_checksums(model, strategy: str, world: int) -> list[float] | None:
    """Every rank's sum over its parameters: equal numbers show DDP ranks stayed in sync."""
    if strategy == "fsdp":       # parameters are sharded: ranks hold different pieces by design
        return None
    local = sum(p.detach().double().sum().item() + p.detach().double().square().sum().item()
                for p in model.parameters())
    return _gather(local, world)
