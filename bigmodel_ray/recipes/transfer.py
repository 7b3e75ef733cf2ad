"""`kind: transfer` — move a source model to a target domain on the DDP training loop.

The source is a finished train run (`transfer.source: RUN_FOLDER`) or a train step given inline
(`transfer.source: {data, model, train}`), trained first as `<name>-source`. The job's `data` is
the target domain. Strategies (transfer/strategies.py): linear probe, freeze the first N stages,
full fine-tuning, discriminative learning rates, gradual unfreezing — all on labelled target
data (`target_labels` caps how many rows) — or DANN on labelled source + unlabelled target data.
The classifier is replaced when the target has another class count.

Every run also evaluates the source model as it is on both domains: the source-only baseline
that the strategy is judged against. Run folder: as a train run, plus `model/state.pt` (the
adapted classifier alone, loadable by `train.state.load_model`: compress and export take it).
"""

import warnings
from pathlib import Path

import torch

from bigmodel_ray import kinds, runs
from bigmodel_ray.data import DataBundle
from bigmodel_ray.data.pipeline import start_state
from bigmodel_ray.errors import SpecError
from bigmodel_ray.models import build_model, is_language_model
from bigmodel_ray.spec import DataSpec, JobSpec, validate
from bigmodel_ray.storage import open_uri
from bigmodel_ray.train import launch
from bigmodel_ray.train.init import load_fitting
from bigmodel_ray.train.inputs import ModelInputs
from bigmodel_ray.train.shards import EvalBatches
from bigmodel_ray.train.state import MODEL_DIR, load_classifier, read_state, save_state
from bigmodel_ray.train.steps import evaluate
from bigmodel_ray.transfer import report, strategies
from bigmodel_ray.transfer.objectives import DANN, SOURCE_TEST, FineTune
from bigmodel_ray.tune.trial import train_trial


def source_spec(spec: JobSpec) -> JobSpec:
    """The train job of an inline source (`transfer.source: {data, model, train}`)."""
    s = spec.transfer.source
    return JobSpec(name=f"{spec.name}-source", kind="train", seed=spec.seed, storage=spec.storage,
                   data=s.data, model=s.model, train=s.train, resources=spec.resources, checkpoint=spec.checkpoint)


def source_run(spec: JobSpec) -> Path:
    """The source's run folder (an inline source's `<name>-source` run)."""
    if isinstance(spec.transfer.source, str):
        return open_uri(spec.transfer.source, spec.storage_options)
    return runs.run_dir_of(source_spec(spec), "")


def resolve_source(spec: JobSpec, source: str, say) -> tuple[JobSpec, Path]:
    """The source run's checkpoint (training an inline source first), and the spec completed
    with the source's model and data once the run folder exists."""
    run_dir = source_run(spec)
    if isinstance(spec.transfer.source, str):
        if not runs.finished(run_dir):
            raise SpecError(f"{source}: transfer.source: {run_dir} is not a finished train run "
                            f"(no result.json with a checkpoint)")
        if spec.model is None or spec.transfer.source_data is None:   # the run was made after validation
            spec = validate(spec.model_dump(mode="json"), source)
    else:
        job = source_spec(spec)
        if not runs.finished(run_dir, job.train.epochs):
            say(f"{spec.name}: training the source model first ({job.name})")
            kinds.get("train").run(job, source, say)
    return spec, runs.result_checkpoint(run_dir)


def plan(spec: JobSpec, source: str, say=print) -> tuple[JobSpec, launch.Plan, dict]:
    """Both domains' data, the source model with the strategy applied, the objective; and the
    source-only baseline."""
    spec, checkpoint = resolve_source(spec, source, say)
    tr, res = spec.transfer, spec.resources
    use_gpu = launch.uses_gpu(spec, source)
    model = load_classifier(checkpoint, f"{source}: transfer.source", tr.source_task)
    language = is_language_model(model)
    if language and tr.strategy == "dann":
        raise SpecError(f"{source}: transfer.strategy: dann needs a labelled source domain; the source is a "
                        f"language model")
    state = start_state() if launch.needs_pipeline_state(spec.data, tr.source_data) else None
    target = launch.open_data(launch.kept_tokenizer(spec.data, source_run(spec)), spec, state, source, "data")
    if language:      # its classifier counterpart, every weight but the head from the LM; no source-only baseline
        if target.input_shape != (model.max_length,):
            raise SpecError(f"{source}: data.text.max_length: the language model has {model.max_length} positions "
                            f"(got {target.input_shape[0]})")
        model, src, same_classes = _from_language_model(model, spec, target), None, False
    else:
        src = launch.open_data(launch.kept_tokenizer(tr.source_data, source_run(spec)), spec, state, source,
                               "transfer.source_data")
        if target.input_shape != src.input_shape:
            raise SpecError(f"{source}: data: target inputs are {list(target.input_shape)}, the source model's "
                            f"{list(src.input_shape)}; give data.target_size or the source's shape")
        same_classes = target.num_classes == src.num_classes
    if tr.strategy == "dann" and not same_classes:
        raise SpecError(f"{source}: transfer.strategy: dann needs the same classes in both domains "
                        f"(source {src.num_classes}, target {target.num_classes})")
    n_stages = len(strategies.stages(model))
    if tr.strategy == "freeze" and tr.freeze_stages > n_stages:
        raise SpecError(f"{source}: transfer.freeze_stages: {spec.model.name} has {n_stages} stages "
                        f"(got {tr.freeze_stages})")
    source_only = baseline(model, spec, target, src, same_classes) if src is not None else {}
    strategies.replace_head(model, target.num_classes)

    sections = {"target_train": spec.data, "val": spec.data, "test": spec.data, SOURCE_TEST: tr.source_data,
                "source_train": tr.source_data, "train": spec.data}
    if tr.strategy == "dann":
        objective = DANN(spec.train.epochs, tr.dann.lambda_max, tr.dann.gamma, tr.dann.hidden)
        datasets = {"source_train": src.datasets["train"], "target_train": target.datasets["train"]}
        rows = {"source_train": src.rows["train"], "target_train": target.rows["train"]}
    else:
        objective = FineTune(tr.strategy, tr.freeze_stages, tr.backbone_lr_factor, tr.unfreeze_every,
                             source_test=same_classes)
        train_rows = min(tr.target_labels or target.rows["train"], target.rows["train"])
        datasets = {"train": target.datasets["train"].limit(train_rows)}
        rows = {"train": train_rows}
    datasets |= {"val": target.datasets["val"], "test": target.datasets["test"]}
    rows |= {"val": target.rows["val"], "test": target.rows["test"]}
    if same_classes:
        datasets[SOURCE_TEST], rows[SOURCE_TEST] = src.datasets["test"], src.rows["test"]
    data = DataBundle(datasets=datasets, rows=rows, input_shape=target.input_shape, num_classes=target.num_classes,
                      class_names=target.class_names, has_tasks=target.has_tasks or src is not None and src.has_tasks,
                      device_augment=target.device_augment, artifacts=target.artifacts)
    launch.check_data_cpus(data, res, source)
    job = launch.Plan(data, use_gpu, launch.micro_batches(objective, data, spec),
                            sum(p.numel() for p in model.parameters()), state, objective,
                            extra={"initial_model": model,
                                   "data_sections": {name: sections[name].model_dump(mode="json") for name in datasets}})
    return spec, job, source_only


def _from_language_model(lm, spec: JobSpec, target: DataBundle):
    """The job's classifier (the LM's classifier counterpart) with every LM weight that fits."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.model.name, target.input_shape, target.num_classes, **spec.model.args)
    load_fitting(model, lm.state_dict(), strict=False, path="transfer.source")
    return model


def baseline(model, spec: JobSpec, target: DataBundle, src: DataBundle, same_classes: bool) -> dict:
    """The source model as it is, on the source's and (same classes only) the target's test split."""
    out = {"source_test_accuracy": _accuracy(model, src, spec.transfer.source_data, spec.seed)}
    if same_classes:
        out.update({"test_" + k: v for k, v in _accuracy(model, target, spec.data, spec.seed, both=True).items()})
    return out


@torch.inference_mode()
def _accuracy(model, data: DataBundle, data_spec: DataSpec, seed: int, both: bool = False):
    batches = EvalBatches(data.datasets["test"].iterator(), batch_size=512, in_memory=False, rank=0, world_size=1,
                          device=torch.device("cpu"), inputs=ModelInputs(data_spec, seed))
    with warnings.catch_warnings():     # Ray hands read-only numpy blocks to torch; we never write to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        result = evaluate(model.eval(), batches, num_classes=data.num_classes, device=torch.device("cpu"))
    return {"accuracy": result["accuracy"], "f1": result["f1"]} if both else result["accuracy"]


def _variant(data: DataSpec) -> str:
    return " (shifted)" if data.shift else " (generator variant)" if data.generator else ""


def save_classifier(checkpoint: str, folder: Path, strategy: str) -> Path:
    """The adapted classifier alone (DANN's domain classifier dropped) as a loadable state."""
    state = read_state(checkpoint)
    weights = state["model"]
    if strategy == "dann":
        weights = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    folder.mkdir(parents=True, exist_ok=True)
    save_state({"model": weights, "meta": state["meta"]}, folder)
    return folder


class Transfer:
    resume_keys = ("model", "data", "seed", "transfer")

    def cpus_needed(self, spec: JobSpec) -> float:
        return launch.cpus_needed(spec)

    def describe(self, spec: JobSpec, job: launch.Plan) -> str:
        tr, rows = spec.transfer, job.data.rows
        if tr.strategy == "dann":
            how = (f"DANN (lambda_max {tr.dann.lambda_max:g}, gamma {tr.dann.gamma:g}) on {rows['source_train']:,} "
                   f"labelled source + {rows['target_train']:,} unlabelled target rows")
        else:
            how = {"freeze": f"freeze the first {tr.freeze_stages} stages",
                   "discriminative": f"discriminative (backbone lr x {tr.backbone_lr_factor:g})",
                   "gradual": f"gradual unfreezing (a stage every {tr.unfreeze_every} epochs)"}.get(tr.strategy, tr.strategy)
        labelled = "" if tr.strategy == "dann" else f" on {rows['train']:,} labelled target rows"
        return (f"transfer {spec.model.name} ({job.params:,} params) from {tr.source_data.source} to "
                f"{spec.data.source}{_variant(spec.data)}: {how}{labelled}, "
                f"{spec.resources.workers} workers, {spec.train.epochs} epochs")

    def run(self, spec: JobSpec, source: str, say=print) -> dict:
        run_dir = runs.run_dir_of(spec, source)
        runs.check_same_job(run_dir, spec, source, keys=self.resume_keys)
        spec, job, source_only = plan(spec, source, say)
        summary = launch.execute(spec, source, job, run_dir, say, self.describe(spec, job))
        summary["source_only"] = source_only
        summary["checkpoint"] = str(save_classifier(summary["checkpoint"], run_dir / MODEL_DIR, spec.transfer.strategy))
        if "test_accuracy" in source_only:
            gain = summary["test_accuracy"] - source_only["test_accuracy"]
            say(f"{spec.name}: target test accuracy {summary['test_accuracy']:.4f} vs source-only "
                f"{source_only['test_accuracy']:.4f} ({gain * 100:+.1f} pp); source test "
                f"{summary.get('source_test_accuracy', float('nan')):.4f} (was {source_only['source_test_accuracy']:.4f})")
        runs.write_result(run_dir, summary)
        return summary

    # ---- a sweep: one source model for every trial, trained (or found) first
    def prepare_sweep(self, spec: JobSpec, source: str, say) -> kinds.Prepared:
        spec, job, source_only = plan(spec, source, say)
        spec.transfer.source = str(source_run(spec))
        return kinds.Prepared(spec, self.describe(spec, job), carry=source_only)

    def trial_epochs(self, spec: JobSpec) -> int:
        return spec.train.epochs

    def run_trial(self, spec: JobSpec, source: str, trial) -> None:
        train_trial(trial, spec, source, lambda: plan(spec, source, say=lambda _: None)[:2])

    def finish_sweep(self, prepared: kinds.Prepared, sweep_dir: Path, records, say) -> dict:
        spec = prepared.spec
        return {"matrix": report.write_matrix(sweep_dir, records, prepared.carry, spec.search, spec.transfer.strategy,
                                              say)}


KIND = Transfer()
