"""A sweep: any job with a `search` block, run as Ray Tune trials of that job.

Sweep folder `<storage>/<name>/`: `spec.yaml`, Tune's experiment state and one folder per trial
(reports, checkpoints), and what `bigmodel_ray.tune.results` writes when the sweep ends
(trials table, best.yaml, Pareto set, plots, result.json). Running the same job again restores
the sweep: finished trials stay finished, the others continue from their last checkpoints.
"""

import json
import math
import os
import shutil
from pathlib import Path

from bigmodel_ray.recipes.train import check_same_job, describe, run_dir_of
from bigmodel_ray.runtime import RunFailed
from bigmodel_ray.spec import JobSpec, SpecError, dump, without_search
from bigmodel_ray.tune import results
from bigmodel_ray.tune.progress import SweepProgress
from bigmodel_ray.tune.space import check_space, trial_count, tune_space
from bigmodel_ray.tune.trial import TRAIN_RUNS, checkpoints_by_age, run_trial

SPEC_FILE, RESULT_FILE = "spec.yaml", "result.json"


def cpus_needed(spec: JobSpec) -> float:
    """Logical CPUs for an embedded Ray: the concurrent trials (each its workers plus its driver)
    and the data pipeline's CPUs, shared by all trials."""
    res = spec.resources
    per_trial = res.workers * res.cpus_per_worker + spec.search.trial_cpus
    concurrent = spec.search.max_concurrent_trials or max(1, (os.cpu_count() or 1) // math.ceil(
        res.workers * res.cpus_per_worker))
    return concurrent * per_trial + res.data_cpus


def run(spec: JobSpec, source: str, say=print) -> dict:
    from ray import tune

    search = spec.search
    sweep_dir = run_dir_of(spec, source)
    check_same_job(sweep_dir, spec, source, keys=[k for k in JobSpec.model_fields if k != "name"], what="sweep")
    as_written = spec                 # spec.yaml keeps the job as given (it is what a rerun compares)
    if spec.kind == "compress":       # one teacher for every trial, trained (or found) first
        from bigmodel_ray.recipes import compress as compress_recipe

        spec, _, teacher, _, _ = compress_recipe.prepare(spec, source, say)
        spec.compress.teacher = str(teacher.parent)
    source_only = None
    if spec.kind == "transfer":       # one source model for every trial, trained (or found) first
        from bigmodel_ray.recipes import transfer as transfer_recipe

        spec, _, source_only = transfer_recipe.plan(spec, source, say)
        spec.transfer.source = str(transfer_recipe.source_run(spec))
    raw_job = without_search(spec.model_dump(mode="json"))
    space = check_space(search, raw_job, source)
    concurrency = _concurrency(spec, source, say)
    say(f"{spec.name}: sweep of {_describe(spec, source)}")   # opens the data: fails early
    trials = trial_count(space, search)
    say(f"{spec.name}: {trials} trials ({search.search_alg} search, {search.scheduler.name} scheduler), "
        f"{concurrency} at a time, each {spec.resources.workers} x {spec.resources.cpus_per_worker:g} CPU + "
        f"{search.trial_cpus:g} for its driver; optimizing {_objectives(search)}")

    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SPEC_FILE).write_text(dump(as_written))
    # Tune snapshots the sweep's state this often: what a killed driver can lose on restore.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "10")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")    # Tune's own tables off: SweepProgress reports
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, raw_job=raw_job, source=source, sweep_dir=str(sweep_dir)),
        {"cpu": search.trial_cpus})
    if tune.Tuner.can_restore(str(sweep_dir)):
        done = sum(r.status in ("finished", "stopped")
                   for r in results.collect(sweep_dir, 1 if spec.kind == "compress" else spec.train.epochs))
        say(f"{spec.name}: resuming the sweep in {sweep_dir} ({done} trials already ended)")
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=tune_space(space, search.search_alg, spec.seed),
                           tune_config=_tune_config(spec, space, concurrency),
                           run_config=tune.RunConfig(
                               name=spec.name, storage_path=str(sweep_dir.parent), verbose=0,
                               callbacks=[SweepProgress(search.metrics[0], search.modes[0],
                                                        1 if spec.kind == "compress" else spec.train.epochs)],
                               checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    tuner.fit()

    epochs = 1 if spec.kind == "compress" else spec.train.epochs       # a compress trial reports once
    records = results.collect(sweep_dir, epochs)
    summary = {"name": spec.name, **results.write(sweep_dir, records, raw_job, search)}
    if spec.kind == "compress" and not any(r.status == "unfinished" for r in records):
        from bigmodel_ray.recipes import compress as compress_recipe

        summary.update(compress_recipe.finish_sweep(spec, source, sweep_dir, records, say))
    if spec.kind == "transfer":
        from bigmodel_ray.transfer import report

        summary["matrix"] = report.write_matrix(sweep_dir, records, source_only, search, spec.transfer.strategy, say)
    (sweep_dir / RESULT_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    results.print_table(results.table(records, search.metrics), search, say)
    unfinished = [r for r in records if r.status == "unfinished"]
    if unfinished:          # Ctrl-C: Tune stopped the trials and saved the sweep
        raise KeyboardInterrupt
    shutil.rmtree(sweep_dir / TRAIN_RUNS, ignore_errors=True)
    _prune_checkpoints(records)
    failed = [r for r in records if r.status == "failed"]
    if best := summary.get("best"):
        say(f"{spec.name}: best {search.metrics[0]} {best[search.metrics[0]]:.4f} (trial {best['trial']}, "
            f"test_accuracy {_fmt(best.get('test_accuracy'))}) -> {sweep_dir / 'best.yaml'}")
    if failed:
        raise RunFailed(f"{spec.name}: {len(failed)} of {len(records)} trials failed, e.g. {failed[0].error} "
                        f"(trials.csv in {sweep_dir})")
    return summary


def _describe(spec: JobSpec, source: str) -> str:
    from bigmodel_ray.recipes import multitask, plan_for, transfer

    spec, job = plan_for(spec, source, say=lambda _: None)
    recipe = {"transfer": transfer, "multitask": multitask}.get(spec.kind)
    return recipe.describe(spec, job) if recipe else describe(spec, job)


def _tune_config(spec: JobSpec, space, concurrency: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    search, sched = spec.search, spec.search.scheduler
    single = not search.multi_objective
    scheduler = None
    if sched.name == "asha":        # time is our own epoch count: it survives restores, Tune's iterations do not
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.train.epochs, grace_period=sched.grace_period,
                                  reduction_factor=sched.reduction_factor)
    elif sched.name == "pbt":
        # Synchronous: each exploit/explore step compares every trial at the same epoch. The
        # asynchronous variant compares whatever has been reported when a trial gets there, so
        # with trials that start ~15 s apart and 1-s epochs, who clones whom depended on timing.
        scheduler = PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=sched.perturbation_interval,
            hyperparam_mutations={path: dist.to_tune() for path, dist in space.items()},
            quantile_fraction=sched.quantile_fraction, resample_probability=sched.resample_probability, synch=True)
    if search.search_alg == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = (optuna.samplers.TPESampler(seed=spec.seed) if single
                   else optuna.samplers.NSGAIISampler(seed=spec.seed))
        search_alg = OptunaSearch(metric=None if single else search.metrics, mode=None if single else search.modes,
                                  sampler=sampler)
        limit = concurrency                  # Tune wraps the searcher in a ConcurrencyLimiter
    else:
        search_alg = BasicVariantGenerator(max_concurrent=concurrency, random_state=spec.seed)
        limit = None                         # Tune ignores max_concurrent_trials for a generator
    return tune.TuneConfig(metric=search.metric if single else None, mode=search.mode if single else None,
                           num_samples=search.num_samples, max_concurrent_trials=limit,
                           scheduler=scheduler, search_alg=search_alg)


def _prune_checkpoints(records) -> None:
    """Keep each ended trial's last checkpoint only.

    Tune keeps every checkpoint while the sweep runs: a PBT trial clones whichever checkpoint was
    the latest when PBT decided while the donor goes on, and after a killed driver the restored
    sweep may refer to any checkpoint its last snapshot saw. Both break if Tune deletes them.
    """
    for record in records:
        if record.status in ("finished", "stopped"):
            for old in checkpoints_by_age(Path(record.path).glob("checkpoint_*"))[:-1]:
                shutil.rmtree(old, ignore_errors=True)


def _concurrency(spec: JobSpec, source: str, say) -> int:
    """Trials that fit at once: each holds its workers' CPUs (and GPUs) plus its driver's share,
    beside the data pipeline's CPUs. Starting more would leave a trial's workers waiting for
    CPUs that other trials hold (Train gives up on them after a minute, and so on)."""
    import ray

    res, search = spec.resources, spec.search
    cluster = ray.cluster_resources()
    per_trial = res.workers * res.cpus_per_worker + search.trial_cpus
    fits = int((cluster.get("CPU", 0) - res.data_cpus) / per_trial + 1e-9)
    if res.use_gpu is True or (res.use_gpu == "auto" and cluster.get("GPU", 0) >= res.workers):
        fits = min(fits, int(cluster.get("GPU", 0) // res.workers))
    if fits < 1:
        raise SpecError(f"{source}: resources: a trial needs {per_trial:g} CPUs ({res.workers} workers x "
                        f"{res.cpus_per_worker:g} + search.trial_cpus {search.trial_cpus:g}) beside "
                        f"data_cpus {res.data_cpus:g}; the cluster has {cluster.get('CPU', 0):g}")
    wanted = search.max_concurrent_trials or fits
    if wanted > fits:
        say(f"{spec.name}: search.max_concurrent_trials {wanted} > {fits} trials that the cluster's resources "
            f"hold now; running {fits} at a time")
    return min(wanted, fits)


def _objectives(search) -> str:
    return ", ".join(f"{m} ({mode})" for m, mode in zip(search.metrics, search.modes))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-"
