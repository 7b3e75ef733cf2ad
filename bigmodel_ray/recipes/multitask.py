"""`kind: multitask` — one shared backbone, one classifier per task, on the DDP training loop.

Each task has its own data (`multitask.tasks.NAME.data`, any source; every task's inputs must
have one shape) and loss weight. Each optimizer step trains on one task's batch, mixed by
`multitask.sampling` (transfer/objectives.py: MultiTask). Every epoch reports each task's
`<task>_val_*` metrics and their mean as `val_*`; the last epoch the same for test. The run
folder is a train run's; its checkpoints hold the backbone and every head.
"""

from bigmodel_ray import kinds, runs
from bigmodel_ray.data import DataBundle
from bigmodel_ray.data.pipeline import start_state
from bigmodel_ray.errors import SpecError
from bigmodel_ray.models import build_model
from bigmodel_ray.spec import JobSpec
from bigmodel_ray.train import launch
from bigmodel_ray.transfer.objectives import MultiTask
from bigmodel_ray.tune.trial import train_trial

SPLITS = ("train", "val", "test")


def plan(spec: JobSpec, source: str) -> launch.Plan:
    res, tasks = spec.resources, spec.multitask.tasks
    use_gpu = launch.uses_gpu(spec, source)
    state = start_state() if launch.needs_pipeline_state(*(t.data for t in tasks.values())) else None
    bundles = {name: launch.open_data(t.data, spec, state, source, f"multitask.tasks.{name}.data")
               for name, t in tasks.items()}
    first, shape = next(iter(bundles)), next(iter(bundles.values())).input_shape
    for name, b in bundles.items():
        if b.input_shape != shape:
            raise SpecError(f"{source}: multitask.tasks.{name}.data: inputs are {list(b.input_shape)}, task {first}'s "
                            f"{list(shape)}; one backbone needs one input shape (data.target_size)")
    objective = MultiTask({name: {"weight": t.weight, "num_classes": bundles[name].num_classes}
                           for name, t in tasks.items()}, spec.multitask.sampling, spec.seed)
    names = [(task, split) for task in tasks for split in SPLITS]
    data = DataBundle(datasets={f"{t}_{s}": bundles[t].datasets[s] for t, s in names},
                      rows={f"{t}_{s}": bundles[t].rows[s] for t, s in names},
                      input_shape=shape, num_classes=bundles[first].num_classes, class_names=None,
                      has_tasks=any(b.has_tasks for b in bundles.values()), device_augment=None)
    launch.check_data_cpus(data, res, source)
    try:
        model = objective.prepare(build_model(spec.model.name, shape, bundles[first].num_classes, **spec.model.args))
    except (TypeError, ValueError) as e:
        raise SpecError(f"{source}: model.args: {e}") from None
    extra = {"data_sections": {f"{t}_{s}": tasks[t].data.model_dump(mode="json") for t, s in names},
             "num_classes_of": {f"{t}_{s}": bundles[t].num_classes for t, s in names}}
    return launch.Plan(data, use_gpu, launch.micro_batches(objective, data, spec),
                       sum(p.numel() for p in model.parameters()), state, objective, extra)


class MultiTaskKind:
    resume_keys = ("model", "multitask", "seed")

    def cpus_needed(self, spec: JobSpec) -> float:
        return launch.cpus_needed(spec)

    def describe(self, spec: JobSpec, job: launch.Plan) -> str:
        tasks = ", ".join(f"{name} ({t.data.source}{' shifted' if t.data.shift else ''}: "
                          f"{job.data.rows[name + '_train']:,} train rows, weight {t.weight:g})"
                          for name, t in spec.multitask.tasks.items())
        return (f"multitask {spec.model.name} backbone + {len(spec.multitask.tasks)} heads ({job.params:,} params) "
                f"on {tasks}; {spec.multitask.sampling} sampling, {job.micro_batches} steps per epoch per worker, "
                f"{spec.resources.workers} workers")

    def run(self, spec: JobSpec, source: str, say=print) -> dict:
        run_dir = runs.run_dir_of(spec, source)
        runs.check_same_job(run_dir, spec, source, keys=self.resume_keys)
        job = plan(spec, source)
        return launch.execute(spec, source, job, run_dir, say, self.describe(spec, job))

    def prepare_sweep(self, spec: JobSpec, source: str, say) -> kinds.Prepared:
        return kinds.Prepared(spec, self.describe(spec, plan(spec, source)))

    def trial_epochs(self, spec: JobSpec) -> int:
        return spec.train.epochs

    def run_trial(self, spec: JobSpec, source: str, trial) -> None:
        train_trial(trial, spec, source, lambda: (spec, plan(spec, source)))

    def finish_sweep(self, prepared: kinds.Prepared, sweep_dir, records, say) -> dict:
        return {}


KIND = MultiTaskKind()
