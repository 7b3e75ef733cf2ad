"""`kind: train` — a data-parallel (DDP or FSDP2) classification run on Ray Train.

Run folder `<storage>/<name>/`: `spec.yaml` (resolved job), `metrics.jsonl` (one line per
epoch), `checkpoint_*/state.pt` (last `checkpoint.keep`), `result.json`. Running the same job
again resumes after the last checkpoint; a finished run resumes into just the test pass.
"""

from bigmodel_ray import kinds, runs
from bigmodel_ray.spec import JobSpec
from bigmodel_ray.train import launch
from bigmodel_ray.tune.trial import train_trial


class Train:
    resume_keys = ("model", "data", "seed")

    def cpus_needed(self, spec: JobSpec) -> float:
        return launch.cpus_needed(spec)

    def describe(self, spec: JobSpec, plan: launch.Plan) -> str:
        t, res, rows = spec.train, spec.resources, plan.data.rows
        return (f"{spec.model.name} ({plan.params:,} params) on {spec.data.source} "
                f"({rows['train']:,} train / {rows['val']:,} val / {rows['test']:,} test), "
                f"{res.workers} workers, {t.strategy} on {'GPU' if plan.use_gpu else 'CPU'}, {t.precision}; "
                f"effective global batch {t.batch_size} x {t.grad_accum} accum x {res.workers} workers "
                f"= {t.batch_size * t.grad_accum * res.workers}")

    def run(self, spec: JobSpec, source: str, say=print) -> dict:
        run_dir = runs.run_dir_of(spec, source)
        runs.check_same_job(run_dir, spec, source, keys=self.resume_keys)
        plan = launch.plan_classifier(spec, source)
        return launch.execute(spec, source, plan, run_dir, say, self.describe(spec, plan))

    def prepare_sweep(self, spec: JobSpec, source: str, say) -> kinds.Prepared:
        return kinds.Prepared(spec, self.describe(spec, launch.plan_classifier(spec, source)))

    def trial_epochs(self, spec: JobSpec) -> int:
        return spec.train.epochs

    def run_trial(self, spec: JobSpec, source: str, trial) -> None:
        train_trial(trial, spec, source, lambda: (spec, launch.plan_classifier(spec, source)))

    def finish_sweep(self, prepared: kinds.Prepared, sweep_dir, records, say) -> dict:
        return {}


KIND = Train()
