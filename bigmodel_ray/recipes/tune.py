"""A sweep: any job with a `search` block, run as Ray Tune trials of that job.

Sweep folder `<storage>/<name>/`: `spec.yaml`, Tune's experiment state and one folder per trial
(reports, checkpoints), and what `bigmodel_ray.tune.results` writes when the sweep ends
(trials table, best.yaml, Pareto set, plots, result.json). Running the same job again restores
the sweep: finished trials stay finished, the others continue from their last checkpoints.

A sweep in object storage is written there by Tune and by each trial, on whatever node it runs
(no node needs to see another's disk); the driver then brings it into its mirror to read it.
"""

import glob
import math
import os
from pathlib import Path, PurePosixPath

from bigmodel_ray import integrity, kinds, runs
from bigmodel_ray.errors import RunFailed, SpecError
from bigmodel_ray.spec import JobSpec, apply, dump, validate, without_search
from bigmodel_ray.spec.space import distributions
from bigmodel_ray.storage import RunFolder
from bigmodel_ray.tracking import STATE_FILE as TRACKING_FILE
from bigmodel_ray.tracking import TENSORBOARD_DIR
from bigmodel_ray.tune import results
from bigmodel_ray.tune.progress import SendSweep, SweepProgress
from bigmodel_ray.tune.signed_state import SignState, sign_tuner, state_files, verified
from bigmodel_ray.tune.space import to_tune, trial_count, trial_values, tune_space
from bigmodel_ray.tune.tracking import open_sweep
from bigmodel_ray.tune.trial import TRAIN_RUNS, Trial, stored_checkpoints


def cpus_needed(spec: JobSpec) -> float:
    """Logical CPUs for an embedded Ray: the concurrent trials (each its workers plus its driver)
    and the data pipeline's CPUs, shared by all trials."""
    workers, data = kinds.trial_cpus(spec)
    per_trial = workers + spec.search.trial_cpus
    concurrent = spec.search.max_concurrent_trials or max(1, (os.cpu_count() or 1) // math.ceil(max(workers, 1)))
    return concurrent * per_trial + data


def run(spec: JobSpec, source: str, say=print) -> dict:
    from ray import tune

    search, kind = spec.search, kinds.get(spec.kind)
    sweep_dir = runs.run_dir_of(spec, source)     # object storage: a copy, to compare and count
    folder = runs.folder_of(spec)
    runs.check_same_job(sweep_dir, spec, source, keys=[k for k in JobSpec.model_fields if k != "name"], what="sweep")
    as_written = spec                 # spec.yaml keeps the job as given (it is what a rerun compares)
    concurrency = _concurrency(spec, source, say)
    # What every trial shares, resolved once (a teacher or source model trained or found). It
    # opens the data, so a bad job fails here, before any trial starts.
    prepared = kind.prepare_sweep(spec.model_copy(deep=True), source, say)    # it may fill in the copy
    spec = prepared.spec
    raw_job = without_search(spec.model_dump(mode="json"))
    space = distributions(search)
    epochs = kind.trial_epochs(spec)
    say(f"{spec.name}: sweep of {prepared.description}")
    say(f"{spec.name}: {trial_count(space, search)} trials ({search.search_alg} search, {search.scheduler.name} "
        f"scheduler), {concurrency} at a time, each {kinds.trial_cpus(spec)[0]:g} CPUs for its workers "
        f"+ {search.trial_cpus:g} for its driver; optimizing {_objectives(search)}")

    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs.write_spec(sweep_dir, dump(as_written))
    folder.push(runs.SPEC_FILE)
    # Tune snapshots the sweep's state this often: what a killed driver can lose on restore.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "10")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")    # Tune's own tables off: SweepProgress reports
    # The key that signs the trials' artifacts travels in memory (Ray's object store), never to disk.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, raw_job=raw_job, source=source, sweep=folder,
                             artifact_key=integrity.signing_key()),
        _trial_resources(raw_job, source, search.trial_cpus))
    # Object storage: Tune writes there itself, through a view that checks each state file it reads.
    where, fs = (folder.remote, verified(folder.fs, folder.remote)) if folder.fs is not None else (str(sweep_dir), None)
    driver_files = (TRACKING_FILE, TENSORBOARD_DIR)      # what this process writes while the trials run
    if tune.Tuner.can_restore(where, storage_filesystem=fs):
        # Restoring unpickles Tune's saved state: only from a folder no one else could have
        # written, or (object storage) files that carry this user's signature.
        _check_state(folder)
        done = sum(r.status in ("finished", "stopped") for r in results.collect(sweep_dir, epochs))
        say(f"{spec.name}: resuming the sweep in {folder.uri} ({done} trials already ended)")
        tuner = tune.Tuner.restore(where, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        signer = SignState()
        tuner = tune.Tuner(trainable, param_space=tune_space(space, search.search_alg, spec.seed),
                           tune_config=_tune_config(spec, space, concurrency),
                           run_config=tune.RunConfig(
                               name=spec.name, storage_path=str(PurePosixPath(where).parent), storage_filesystem=fs,
                               verbose=0, callbacks=[SweepProgress(search.metrics[0], search.modes[0], epochs),
                                                     SendSweep(folder, driver_files), signer],
                               checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
        if folder.fs is not None:
            sign_tuner(folder.fs, folder.remote, signer)
    with open_sweep(spec, raw_job, sweep_dir, say) as tracker:      # a no-op without a `tracking` section
        try:
            tuner.fit()
        finally:
            folder.push(*driver_files)
        if folder.fs is not None:
            folder.refresh()        # what Tune and the trials wrote, on any node (then read, so checked first)
            _check_state(folder)

    records = results.collect(sweep_dir, epochs)
    summary = {"name": spec.name, **results.write(sweep_dir, records, raw_job, search)}
    unfinished = [r for r in records if r.status == "unfinished"]
    if not unfinished:
        summary.update(kind.finish_sweep(prepared, sweep_dir, records, say))
    runs.write_result(sweep_dir, summary)
    tracker.finish(summary, records)
    results.print_table(results.table(records, search.metrics), search, say)
    if unfinished:          # Ctrl-C: Tune stopped the trials and saved the sweep
        raise KeyboardInterrupt
    folder.remove(TRAIN_RUNS)
    _prune_checkpoints(folder, records)
    failed = [r for r in records if r.status == "failed"]
    if best := summary.get("best"):
        tested = [f"{m} {_fmt(best[m])}" for m in results.BEST_TEST_METRICS if m in best][:1]
        say(f"{spec.name}: best {search.metrics[0]} {best[search.metrics[0]]:.4f} (trial "
            f"{', '.join([best['trial'], *tested])}) -> {sweep_dir / 'best.yaml'}")
    if failed:
        raise RunFailed(f"{spec.name}: {len(failed)} of {len(records)} trials failed, e.g. {failed[0].error} "
                        f"(trials.csv in {sweep_dir})")
    return summary


def run_trial(config: dict, raw_job: dict, source: str, sweep: RunFolder, artifact_key: bytes) -> None:
    """The Tune trainable: the job with this trial's values, run by its kind, in the driver's
    `sweep` folder (object storage: this node's mirror of the bucket stands in for the driver's)."""
    from ray import tune

    integrity.use_key(artifact_key)

    values = trial_values(config)
    spec = validate(apply(raw_job, values), source)     # raw_job has no search block: nothing more to check
    trial = Trial(sweep.on_this_node(), tune.get_context().get_trial_id(), values)
    trial.start_history()
    kinds.get(spec.kind).run_trial(spec, source, trial)


def _trial_resources(raw_job: dict, source: str, trial_cpus: float):
    """What a trial's own process holds: its driver's share, plus what it trains with there."""
    def resources(config: dict) -> dict:
        return {"cpu": trial_cpus + kinds.trial_process_cpus(validate(apply(raw_job, trial_values(config)), source))}
    return resources


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
            hyperparam_mutations={path: to_tune(dist) for path, dist in space.items()},
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


def _check_state(folder: RunFolder) -> None:
    """Before Tune's state is read (unpickled): a local sweep folder must be private to this
    user; a mirror of object storage must carry this user's signatures (tune/signed_state.py)."""
    if folder.fs is None:
        integrity.check_private(folder.local, state_files(folder.local))
    else:
        integrity.check_signed(folder.local, state_files(folder.local), folder.uri)


def _prune_checkpoints(folder: RunFolder, records) -> None:
    """Keep each ended trial's last checkpoint only.

    Tune keeps every checkpoint while the sweep runs: a PBT trial clones whichever checkpoint was
    the latest when PBT decided while the donor goes on, and after a killed driver the restored
    sweep may refer to any checkpoint its last snapshot saw. Both break if Tune deletes them.
    """
    for record in records:
        if record.status in ("finished", "stopped"):
            trial_dir = Path(record.path).name
            for old in stored_checkpoints(folder, glob.escape(trial_dir))[:-1]:
                folder.remove(f"{trial_dir}/{PurePosixPath(old.path).name}")


def _concurrency(spec: JobSpec, source: str, say) -> int:
    """Trials that fit at once: each holds its workers' CPUs (and GPUs) plus its driver's share,
    beside the data pipeline's CPUs. Starting more would leave a trial's workers waiting for
    CPUs that other trials hold (Train gives up on them after a minute, and so on)."""
    import ray

    res, search = spec.resources, spec.search
    cluster = ray.cluster_resources()
    workers, data = kinds.trial_cpus(spec)
    per_trial = workers + search.trial_cpus
    fits = int((cluster.get("CPU", 0) - data) / per_trial + 1e-9)
    if res.use_gpu is True or (res.use_gpu == "auto" and cluster.get("GPU", 0) >= res.workers):
        fits = min(fits, int(cluster.get("GPU", 0) // res.workers))
    if fits < 1:
        raise SpecError(f"{source}: resources: a trial needs {per_trial:g} CPUs ({workers:g} for its workers "
                        f"+ search.trial_cpus {search.trial_cpus:g}) beside {data:g} for the data pipeline; "
                        f"the cluster has {cluster.get('CPU', 0):g}")
    wanted = search.max_concurrent_trials or fits
    if wanted > fits:
        say(f"{spec.name}: search.max_concurrent_trials {wanted} > {fits} trials that the cluster's resources "
            f"hold now; running {fits} at a time")
    return min(wanted, fits)


def _objectives(search) -> str:
    return ", ".join(f"{m} ({mode})" for m, mode in zip(search.metrics, search.modes))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-"
