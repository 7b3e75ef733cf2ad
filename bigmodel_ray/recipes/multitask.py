"""`kind: multitask` — one shared backbone, one classifier per task, on the DDP training loop.

Each task has its own data (`multitask.tasks.NAME.data`, any source; every task's inputs must
have one shape) and loss weight. Each optimizer step trains on one task's batch, mixed by
`multitask.sampling` (transfer/objectives.py: MultiTask). Every epoch reports each task's
`<task>_val_*` metrics and their mean as `val_*`; the last epoch the same for test. The run
folder is a train run's; its checkpoints hold the backbone and every head.
"""

from bigmodel_ray.models import build_model
from bigmodel_ray.data import DataBundle
from bigmodel_ray.data.pipeline import start_state
from bigmodel_ray.recipes import train as train_recipe
from bigmodel_ray.recipes.transfer import open_data
from bigmodel_ray.spec import JobSpec, SpecError
from bigmodel_ray.transfer.objectives import MultiTask

SPLITS = ("train", "val", "test")


def cpus_needed(spec: JobSpec) -> float:
    return train_recipe.cpus_needed(spec)


def plan(spec: JobSpec, source: str) -> train_recipe.Plan:
    res, tasks = spec.resources, spec.multitask.tasks
    use_gpu = train_recipe.uses_gpu(spec, source)
    needs_state = any(t.data.augment is not None or t.data.on_bad_record == "skip" for t in tasks.values())
    state = start_state() if needs_state else None
    bundles = {name: open_data(t.data, spec, state, source, f"multitask.tasks.{name}.data") for name, t in tasks.items()}
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
    train_recipe.check_data_cpus(data, res, source)
    try:
        model = objective.prepare(build_model(spec.model.name, shape, bundles[first].num_classes, **spec.model.args))
    except (TypeError, ValueError) as e:
        raise SpecError(f"{source}: model.args: {e}") from None
    extra = {"data_sections": {f"{t}_{s}": tasks[t].data.model_dump(mode="json") for t, s in names},
             "num_classes_of": {f"{t}_{s}": bundles[t].num_classes for t, s in names}}
    return train_recipe.Plan(data, use_gpu, train_recipe.micro_batches(objective, data, spec),
                             sum(p.numel() for p in model.parameters()), state, objective, extra)


def describe(spec: JobSpec, job: train_recipe.Plan) -> str:
    tasks = ", ".join(f"{name} ({t.data.source}{' shifted' if t.data.shift else ''}: "
                      f"{job.data.rows[name + '_train']:,} train rows, weight {t.weight:g})"
                      for name, t in spec.multitask.tasks.items())
    return (f"multitask {spec.model.name} backbone + {len(spec.multitask.tasks)} heads ({job.params:,} params) "
            f"on {tasks}; {spec.multitask.sampling} sampling, {job.micro_batches} steps per epoch per worker, "
            f"{spec.resources.workers} workers")


def run(spec: JobSpec, source: str, say=print) -> dict:
    run_dir = train_recipe.run_dir_of(spec, source)
    train_recipe.check_same_job(run_dir, spec, source, keys=("model", "multitask", "seed"))
    job = plan(spec, source)
    return train_recipe.execute(spec, source, job, run_dir, say, what=describe(spec, job))
