"""`kind: compress` — compress a trained teacher with the job's methods, measure every candidate
the same way, pick one by the job's rule, save it and export it to ONNX.

The teacher is a finished train run (`compress.teacher: RUN_FOLDER`) or, without one, this job's
own data/model/train sections trained first as `<name>-teacher` — so one YAML chains
train -> compress -> export. Distillation and fine-tuning run on the DDP training loop.

Run folder `<storage>/<name>/`: `spec.yaml`, `candidates.csv` (every candidate's accuracy, F1,
size, latency; Pareto flag), `pareto.png`, `candidates/<name>.pt2` (each candidate as a
`torch.export` program, `bigmodel-ray export` turns any into ONNX), `selected.onnx`, `result.json`.

In a sweep every trial compresses the one teacher with its own values and reports once; the
sweep then measures the teacher beside every trial's candidate and applies the job's rule.
"""

import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bigmodel_ray import kinds, runs
from bigmodel_ray.compress import candidates as cands
from bigmodel_ray.compress import export as onnx_export
from bigmodel_ray.compress import measure, quantize
from bigmodel_ray.compress.chain import Candidate, apply_methods
from bigmodel_ray.compress.distill import Distill
from bigmodel_ray.errors import SpecError
from bigmodel_ray.spec import JobSpec, dump, validate
from bigmodel_ray.storage import open_uri
from bigmodel_ray.train import launch
from bigmodel_ray.train.state import load_classifier, read_state


@dataclass
class Teacher:
    """A compress job resolved: the spec with the teacher's sections, the teacher and where it
    came from, the data plan, and the val/test splits read once."""
    spec: JobSpec
    model: torch.nn.Module
    checkpoint: Path
    plan: launch.Plan
    evaluator: cands.Evaluator


def teacher_spec(spec: JobSpec) -> JobSpec:
    """The train job whose result is the teacher when `compress.teacher` is not given."""
    raw = spec.model_dump(mode="json", exclude={"compress", "search"})
    raw.update(kind="train", name=f"{spec.name}-teacher")
    return JobSpec.model_validate(raw)


def resolve_teacher(spec: JobSpec, source: str, say) -> Teacher:
    """The teacher (trained first if need be), the spec with its sections, and the data."""
    if spec.compress.teacher is None:
        job = teacher_spec(spec)
        run_dir = runs.run_dir_of(job, source)
        if not runs.finished(run_dir, job.train.epochs):
            say(f"{spec.name}: training the teacher first ({job.name})")
            kinds.get("train").run(job, source, say)
    else:
        run_dir = open_uri(spec.compress.teacher, spec.storage_options)
        if not runs.finished(run_dir):
            raise SpecError(f"{source}: compress.teacher: {run_dir} is not a finished train run "
                            f"(no result.json with a checkpoint)")
    checkpoint = runs.result_checkpoint(run_dir)
    model = load_classifier(checkpoint, f"{source}: compress.teacher", spec.compress.teacher_task)
    if spec.model is None or spec.data is None:       # the teacher run folder was made after validation
        spec = validate(spec.model_dump(mode="json"), source)
    plan = launch.plan_classifier(spec, source)
    return Teacher(spec, model, checkpoint, plan, cands.Evaluator(spec, plan.data))


def compress(t: Teacher, source: str, train_runs: tuple[str, object], say, here: bool = False) -> list[Candidate]:
    """The job's methods applied to the teacher: one candidate per method, in order. Fine-tunes
    are Ray Train runs in `train_runs` (storage_path, storage_filesystem); `here`: they run in
    this process (a sweep's trial: kinds.trains_in_trial)."""
    spec = t.spec

    def finetune(model, epochs, lr, teacher=None, distill=None):
        if epochs == 0:
            return model
        ft = spec.model_copy(deep=True)
        ft.train.epochs, ft.train.strategy = epochs, "ddp"
        ft.train.optimizer.lr = lr or (spec.train.optimizer.lr if distill else spec.train.optimizer.lr / 10)
        objective = Distill(teacher, distill.temperature, distill.alpha) if distill is not None else None
        what = "distilling" if distill else "fine-tuning"
        say(f"{spec.name}: {what} for {epochs} epochs on {spec.resources.workers} workers")
        storage_path, storage_filesystem = train_runs
        trainer = launch.make_trainer(ft, t.plan, name=f"ft-{uuid.uuid4().hex[:8]}", storage_path=storage_path,
                                      storage_filesystem=storage_filesystem, keep=1,
                                      extra={"initial_model": model}, objective=objective, here=here)
        try:
            result = launch.fit(trainer)
        except Exception as e:
            raise launch.failure(e, spec, source, storage_path) from e
        with result.checkpoint.as_directory() as d:        # wherever its workers ran: fetched when in a bucket
            model.load_state_dict(read_state(d)["model"])
        return model.eval()

    return apply_methods(t.model, spec.compress.methods, input_shape=t.plan.data.input_shape,
                         num_classes=t.plan.data.num_classes, example=t.evaluator.example, finetune=finetune,
                         calibration=t.evaluator.calibration, seed=spec.seed)


class Compress:
    def cpus_needed(self, spec: JobSpec) -> float:
        return launch.cpus_needed(spec)

    def run(self, spec: JobSpec, source: str, say=print) -> dict:
        run_dir = runs.run_dir_of(spec, source)
        folder = runs.folder_of(spec)
        # Its fine-tunes: Ray Train runs beside the run's files, where every worker reaches them.
        train_runs = ((f"{folder.remote}/finetune", folder.fs) if folder.fs is not None
                      else (str(run_dir / "finetune"), None))
        t = resolve_teacher(spec, source, say)
        spec, c = t.spec, t.spec.compress
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_spec(run_dir, dump(spec))
        # counted as the table counts them: the floating-point state (BatchNorm statistics included)
        say(f"{spec.name}: teacher {t.checkpoint} ({measure.parameter_counts(t.model)[0]:,} params); "
            f"methods: {' -> '.join(m.method for m in c.methods)}")
        candidates = [Candidate("teacher", t.model.eval())] + compress(t, source, train_runs, say)
        table = cands.measure(candidates, t.evaluator, c.measure)
        selected = cands.choose(table, c, run_dir)
        data = t.plan.data
        saved = cands.save(candidates, run_dir, data.input_shape, data.num_classes, t.evaluator.example, say)

        summary = {"name": spec.name, "teacher_checkpoint": str(t.checkpoint), "selected": selected,
                   "candidates": table.to_dict(orient="records"), "saved": saved}
        if c.export == "onnx" and selected is not None:
            model = next(cand.model for cand in candidates if cand.name == selected)
            summary["export"] = cands.export_checked(model, run_dir / "selected.onnx", t.evaluator,
                                                     c.measure.threads, say)
        runs.write_result(run_dir, summary)
        with pd.option_context("display.width", 200, "display.max_columns", 30,
                               "display.float_format", "{:.4g}".format):
            say(table.drop(columns=["settings"]).to_string(index=False))
        say(f"{spec.name}: selected {selected} -> {run_dir}")
        return summary

    # ---- a sweep: one teacher for every trial, trained (or found) first
    def prepare_sweep(self, spec: JobSpec, source: str, say) -> kinds.Prepared:
        t = resolve_teacher(spec, source, say)
        t.spec.compress.teacher = str(t.checkpoint.parent)
        return kinds.Prepared(t.spec, f"compress {t.spec.model.name} ({t.plan.params:,} params) with "
                                f"{' -> '.join(m.method for m in t.spec.compress.methods)}", carry=t)

    def trial_epochs(self, spec: JobSpec) -> int:
        return 1                  # a compress trial reports once

    def run_trial(self, spec: JobSpec, source: str, trial) -> None:
        """Compress the teacher with this trial's values; report the final candidate's
        measurements once and keep it as `candidates/<trial id>.pt2` in the sweep folder."""
        from ray import tune

        from bigmodel_ray.tune.trial import TRAIN_RUNS

        say = lambda _: None      # noqa: E731 — the sweep's progress view reports
        t = resolve_teacher(spec, source, say)
        here, name = kinds.trains_in_trial(t.spec), f"{trial.trial_id}-{uuid.uuid4().hex[:6]}"
        storage_path, storage_filesystem = trial.train_storage(here)
        final = compress(t, source, (f"{storage_path}/{name}", storage_filesystem), say, here=here)[-1]
        m = t.spec.compress.measure
        params, nonzeros = measure.parameter_counts(final.model)
        metrics = {"epoch": 1, **t.evaluator(final.model), "params": params, "nonzeros": nonzeros,
                   "bytes": measure.serialized_bytes(final.model)}
        runner = quantize.compiled(final.model) if final.compiled else final.model
        x = t.evaluator.test_inputs()
        for batch in m.batch_sizes:
            metrics[f"latency_ms_bs{batch}"] = measure.latencies({"m": runner}, measure.batch_of(x, batch),
                                                                   m.threads, m.rounds)["m"]
        cands.save([Candidate(trial.trial_id, final.model)], trial.sweep_dir, t.plan.data.input_shape,
                   t.plan.data.num_classes, t.evaluator.example, say)
        trial.folder.push(*(f"{cands.FOLDER}/{trial.trial_id}{ext}" for ext in (".pt2", ".json")))
        trial.folder.remove(f"{TRAIN_RUNS}/{name}")
        trial.record(metrics)
        tune.report(metrics)

    def finish_sweep(self, prepared: kinds.Prepared, sweep_dir: Path, records, say) -> dict:
        """The teacher measured beside the trials' candidates (latency again, interleaved, so all
        numbers compare), the job's rule applied across trials, the chosen candidate exported."""
        t: Teacher = prepared.carry
        c = t.spec.compress
        candidates = [Candidate("teacher", t.model)]
        for r in records:
            path = sweep_dir / cands.FOLDER / f"{r.trial_id}.pt2"
            if r.status == "finished" and path.exists():
                candidates.append(Candidate(r.trial_id, onnx_export.load_program(path)[0]))
        table = cands.measure(candidates, t.evaluator, c.measure)
        selected = cands.choose(table, c, sweep_dir)
        out = {"selected": selected, "candidates": table.drop(columns=["settings"]).to_dict(orient="records")}
        if c.export == "onnx" and selected not in (None, "teacher"):
            model = next(cand.model for cand in candidates if cand.name == selected)
            out["export"] = cands.export_checked(model, sweep_dir / "selected.onnx", t.evaluator, c.measure.threads, say)
        say(f"{t.spec.name}: selected {selected} by {c.select.minimize} within "
            f"{c.select.max_accuracy_drop:g} of the teacher's val accuracy")
        return out


KIND = Compress()
