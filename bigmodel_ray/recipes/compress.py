"""`kind: compress` — compress a trained teacher with the job's methods, measure every candidate
the same way, pick one by the job's rule, save it and export it to ONNX.

The teacher is a finished train run (`compress.teacher: RUN_FOLDER`) or, without one, this job's
own data/model/train sections trained first as `<name>-teacher` — so one YAML chains
train -> compress -> export. Distillation and fine-tuning run on the DDP training loop.

Run folder `<storage>/<name>/`: `spec.yaml`, `candidates.csv` (every candidate's accuracy, F1,
size, latency; Pareto flag), `pareto.png`, `candidates/<name>.pt2` (each candidate as a
`torch.export` program, `bigmodel-ray export` turns any into ONNX), `selected.onnx`, `result.json`.
"""

import json
import uuid
from pathlib import Path

import pandas as pd
import torch

from bigmodel_ray.compress import export as onnx_export
from bigmodel_ray.compress import batch_dim, measure, quantize
from bigmodel_ray.compress.chain import Candidate, apply_methods
from bigmodel_ray.recipes import train as train_recipe
from bigmodel_ray.spec import JobSpec, SpecError, dump, validate
from bigmodel_ray.train.inputs import ModelInputs
from bigmodel_ray.train.objectives import Distill
from bigmodel_ray.train.shards import EvalBatches
from bigmodel_ray.train.state import load_classifier, read_state
from bigmodel_ray.train.steps import evaluate
from bigmodel_ray.tune.results import pareto_mask

RESULT_FILE, TABLE_FILE, MODEL_INFO = "result.json", "candidates.csv", "model.json"
OBJECTIVES = {"val_accuracy": "max", "latency": "min", "bytes": "min"}


def cpus_needed(spec: JobSpec) -> float:
    return train_recipe.cpus_needed(spec)


def teacher_spec(spec: JobSpec) -> JobSpec:
    """The train job whose result is the teacher when `compress.teacher` is not given."""
    raw = spec.model_dump(mode="json", exclude={"compress", "search"})
    raw.update(kind="train", name=f"{spec.name}-teacher")
    return JobSpec.model_validate(raw)


def resolve_teacher(spec: JobSpec, source: str, say) -> tuple[torch.nn.Module, Path]:
    """The teacher model and the checkpoint it came from (training it first if need be)."""
    if spec.compress.teacher is None:
        job = teacher_spec(spec)
        run_dir = train_recipe.run_dir_of(job, source)
        if not finished(run_dir, job.train.epochs):
            say(f"{spec.name}: training the teacher first ({job.name})")
            train_recipe.run(job, source, say)
    else:
        run_dir = Path(spec.compress.teacher).expanduser().resolve()
        if not finished(run_dir):
            raise SpecError(f"{source}: compress.teacher: {run_dir} is not a finished train run "
                            f"(no result.json with a checkpoint)")
    checkpoint = Path(json.loads((run_dir / train_recipe.RESULT_FILE).read_text())["checkpoint"])
    return load_classifier(checkpoint, f"{source}: compress.teacher", spec.compress.teacher_task), checkpoint


def finished(run_dir: Path, epochs: int | None = None) -> bool:
    try:
        result = json.loads((run_dir / train_recipe.RESULT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(result.get("checkpoint")) and (epochs is None or result.get("epochs") == epochs)


class Evaluator:
    """The job's val and test splits, read once, for in-process evaluation of any model."""

    def __init__(self, spec: JobSpec, data):
        inputs = ModelInputs(spec.data, spec.seed)
        self.num_classes = data.num_classes
        self.splits = {name: EvalBatches(data.datasets[name].iterator(), batch_size=512, in_memory=True, rank=0,
                                         world_size=1, device=torch.device("cpu"), inputs=inputs)
                       for name in ("val", "test")}
        self.train = EvalBatches(data.datasets["train"].iterator(), batch_size=spec.train.batch_size, in_memory=False,
                                 rank=0, world_size=1, device=torch.device("cpu"), inputs=inputs)
        self.example = next(iter(self.splits["test"]))[0][:2]      # what export and pruning trace with

    @torch.inference_mode()
    def __call__(self, model) -> dict:
        out = {}
        for name, batches in self.splits.items():
            result = evaluate(model, batches, num_classes=self.num_classes, device=torch.device("cpu"))
            out.update({f"{name}_accuracy": result["accuracy"], f"{name}_f1": result["f1"]})
        return out

    def calibration(self, batches: int) -> list[torch.Tensor]:
        out = []
        for x, _ in self.train:
            out.append(x)
            if len(out) == batches:
                break
        return out


def prepare(spec: JobSpec, source: str, say):
    """The teacher (trained first if need be), the spec with the teacher's sections, the data."""
    teacher, teacher_checkpoint = resolve_teacher(spec, source, say)
    if spec.model is None or spec.data is None:       # the teacher run folder was made after validation
        spec = validate(spec.model_dump(mode="json"), source)
    job = train_recipe.plan(spec, source)
    return spec, teacher, teacher_checkpoint, job, Evaluator(spec, job.data)


def compress(spec: JobSpec, source: str, teacher, job, evaluator, work_dir: Path, say) -> list[Candidate]:
    """The job's methods applied to the teacher: one candidate per method, in order."""
    def finetune(model, epochs, lr, teacher=None, distill=None):
        if epochs == 0:
            return model
        ft = spec.model_copy(deep=True)
        ft.train.epochs, ft.train.strategy = epochs, "ddp"
        ft.train.optimizer.lr = lr or (spec.train.optimizer.lr if distill else spec.train.optimizer.lr / 10)
        objective = Distill(teacher, distill.temperature, distill.alpha) if distill is not None else None
        what = "distilling" if distill else "fine-tuning"
        say(f"{spec.name}: {what} for {epochs} epochs on {spec.resources.workers} workers")
        trainer = train_recipe.make_trainer(ft, job, name=f"ft-{uuid.uuid4().hex[:8]}",
                                            storage_path=str(work_dir / "finetune"), run_dir=None, keep=1,
                                            extra={"initial_model": model}, objective=objective)
        try:
            result = train_recipe.fit(trainer)
        except Exception as e:
            raise train_recipe.failure(e, spec, source, work_dir) from e
        model.load_state_dict(read_state(result.checkpoint.path)["model"])
        return model.eval()

    return apply_methods(teacher, spec.compress.methods, input_shape=job.data.input_shape,
                         num_classes=job.data.num_classes, example=evaluator.example, finetune=finetune,
                         calibration=evaluator.calibration, seed=spec.seed)


def run(spec: JobSpec, source: str, say=print) -> dict:
    run_dir = train_recipe.run_dir_of(spec, source)
    spec, teacher, teacher_checkpoint, job, evaluator = prepare(spec, source, say)
    c = spec.compress
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.yaml").write_text(dump(spec))
    example = evaluator.example
    # counted as the table counts them: the floating-point state (BatchNorm statistics included)
    say(f"{spec.name}: teacher {teacher_checkpoint} ({measure.parameter_counts(teacher)[0]:,} params); "
        f"methods: {' -> '.join(m.method for m in c.methods)}")
    candidates = [Candidate("teacher", teacher.eval())] + compress(spec, source, teacher, job, evaluator, run_dir, say)
    table = measure_candidates(candidates, evaluator, c.measure, example, say)
    table["pareto"] = pareto_mask(table[["val_accuracy", _latency(c.measure), "bytes"]].values.tolist(),
                                  ["max", "min", "min"])
    selected = select(table, c.select)
    table["selected"] = table["candidate"] == selected
    table.to_csv(run_dir / TABLE_FILE, index=False)
    _plot(table, run_dir / "pareto.png", _latency(c.measure))
    saved = save_candidates(candidates, run_dir, job.data.input_shape, job.data.num_classes, example, say)

    summary = {"name": spec.name, "teacher_checkpoint": str(teacher_checkpoint), "selected": selected,
               "candidates": table.to_dict(orient="records"), "saved": saved}
    if c.export == "onnx" and selected is not None:
        model = next(cand.model for cand in candidates if cand.name == selected)
        summary["export"] = export_checked(model, run_dir / "selected.onnx", evaluator, c.measure.threads, say)
    (run_dir / RESULT_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        say(table.drop(columns=["settings"]).to_string(index=False))
    say(f"{spec.name}: selected {selected} -> {run_dir}")
    return summary


def _latency(m) -> str:
    return f"latency_ms_bs{m.batch_sizes[0]}"


def measure_candidates(candidates: list[Candidate], evaluator, m, example, say) -> pd.DataFrame:
    rows = []
    for cand in candidates:
        params, nonzeros = measure.parameter_counts(cand.model)
        rows.append({"candidate": cand.name, **evaluator(cand.model), "params": params, "nonzeros": nonzeros,
                     "bytes": measure.serialized_bytes(cand.model), "bytes_gzip": measure.gzip_bytes(cand.model),
                     "settings": json.dumps(cand.settings, default=str)})
    x_full = torch.cat([x for x, _ in evaluator.splits["test"]])
    for batch in m.batch_sizes:
        x = measure.batch_of(x_full, batch)
        runners = {c.name: (quantize.compiled(c.model) if c.compiled else c.model) for c in candidates}
        timed = measure.latencies(runners, x, threads=m.threads, rounds=m.rounds)
        for row, cand in zip(rows, candidates):
            row[f"latency_ms_bs{batch}"] = timed[row["candidate"]]
            if torch.cuda.is_available():          # GPU latency where there is a GPU (CPU int8 kernels: none)
                row[f"gpu_latency_ms_bs{batch}"] = measure.gpu_latency_ms(cand.model, x)
    table = pd.DataFrame(rows)
    teacher = table.iloc[0]
    table["size_ratio"] = teacher["bytes"] / table["bytes"]
    for batch in m.batch_sizes:
        table[f"speedup_bs{batch}"] = teacher[f"latency_ms_bs{batch}"] / table[f"latency_ms_bs{batch}"]
    table["accuracy_drop"] = teacher["val_accuracy"] - table["val_accuracy"]
    return table


def select(table: pd.DataFrame, rule) -> str | None:
    """The candidate within `max_accuracy_drop` of the teacher's validation accuracy that has
    the smallest `minimize` (the teacher itself qualifies: nothing may be better)."""
    ok = table[table["accuracy_drop"] <= rule.max_accuracy_drop + 1e-12]
    return None if ok.empty else str(ok.loc[ok[rule.minimize].idxmin(), "candidate"])


def save_candidates(candidates, run_dir: Path, input_shape, num_classes: int, example, say) -> dict:
    """Each candidate as a `torch.export` program (loadable without unpickling code) + its shapes."""
    folder = run_dir / "candidates"
    folder.mkdir(exist_ok=True)
    saved = {}
    batch = batch_dim()
    for cand in candidates:
        path = folder / f"{cand.name}.pt2"
        try:
            program = torch.export.export(cand.model, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
        except Exception as e:
            say(f"  {cand.name}: not saved as a torch.export program ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:120]})")
            continue
        (folder / f"{cand.name}.json").write_text(json.dumps({"input_shape": list(input_shape),
                                                              "num_classes": num_classes}))
        saved[cand.name] = str(path)
    return saved


def export_checked(model, path: Path, evaluator, threads: int, say) -> dict:
    x = torch.cat([x for x, _ in evaluator.splits["test"]])
    try:
        onnx_export.to_onnx(model, x[:2], path)
    except onnx_export.ExportError as e:
        say(f"ONNX export of the selected candidate failed: {e}")
        return {"error": str(e)}
    result = {"path": str(path), **onnx_export.parity(model, path, x[:256], threads)}
    say(f"ONNX: {path} max |diff| {result['max_abs_diff']:.2e}, argmax agreement {result['argmax_agreement']:.4f}, "
        f"onnxruntime {result['ort_latency_ms_bs1']:.3f} ms at batch 1")
    return result


def _plot(table: pd.DataFrame, path: Path, latency: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = 40 + 400 * table["bytes"] / table["bytes"].max()
    colors = ["C3" if p else "0.6" for p in table["pareto"]]
    ax.scatter(table[latency], table["val_accuracy"], s=sizes, c=colors, alpha=0.7)
    for _, row in table.iterrows():
        ax.annotate(row["candidate"] + (" *" if row["selected"] else ""), (row[latency], row["val_accuracy"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel=f"{latency} (CPU)", ylabel="val accuracy",
           title="candidates (red: Pareto front, size: bytes, *: selected)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish_sweep(spec: JobSpec, source: str, sweep_dir: Path, records, say) -> dict:
    """After a compress sweep: the teacher measured beside the trials' candidates (latency again,
    interleaved, so all numbers compare), the job's rule applied across trials, the chosen
    candidate exported to ONNX."""
    spec, teacher, _, job, evaluator = prepare(spec, source, say)
    candidates = [Candidate("teacher", teacher)]
    for r in records:
        path = sweep_dir / "candidates" / f"{r.trial_id}.pt2"
        if r.status == "finished" and path.exists():
            candidates.append(Candidate(r.trial_id, onnx_export.load_program(path)))
    table = measure_candidates(candidates, evaluator, spec.compress.measure, evaluator.example, say)
    latency = _latency(spec.compress.measure)
    table["pareto"] = pareto_mask(table[["val_accuracy", latency, "bytes"]].values.tolist(), ["max", "min", "min"])
    selected = select(table, spec.compress.select)
    table["selected"] = table["candidate"] == selected
    table.to_csv(sweep_dir / TABLE_FILE, index=False)
    _plot(table, sweep_dir / "pareto.png", latency)
    out = {"selected": selected, "candidates": table.drop(columns=["settings"]).to_dict(orient="records")}
    if spec.compress.export == "onnx" and selected not in (None, "teacher"):
        model = next(c.model for c in candidates if c.name == selected)
        out["export"] = export_checked(model, sweep_dir / "selected.onnx", evaluator, spec.compress.measure.threads, say)
    say(f"{spec.name}: selected {selected} by {spec.compress.select.minimize} within "
        f"{spec.compress.select.max_accuracy_drop:g} of the teacher's val accuracy")
    return out
