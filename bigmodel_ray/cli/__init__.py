"""`bigmodel-ray` command line: run jobs here or on a Ray cluster; prepare data; export, predict, generate, recommend, rollout.

Exit codes: 0 done, 1 the run failed, 2 bad input (one line on stderr, no traceback);
`submit --follow` / `logs --follow` mirror the cluster job's (3 when it was stopped).
"""

import argparse
import os
import sys

from bigmodel_ray.errors import RunFailed, SpecError


def _parser() -> argparse.ArgumentParser:
    from bigmodel_ray.cli.data import add_parser as add_data_parser
    from bigmodel_ray.cli.export import add_parser as add_export_parser
    from bigmodel_ray.cli.generate import add_parser as add_generate_parser
    from bigmodel_ray.cli.predict import add_parser as add_predict_parser
    from bigmodel_ray.cli.recommend import add_parser as add_recommend_parser
    from bigmodel_ray.cli.rollout import add_parser as add_rollout_parser

    p = argparse.ArgumentParser(prog="bigmodel-ray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run a job (Ray embedded here, or --address of a cluster)"),
                        ("validate", "check a job file and print the resolved spec"),
                        ("submit", "submit a job to a Ray cluster through the Jobs API")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("job", help="job YAML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec field, e.g. --set train.epochs=3 (repeatable)")
        if name == "run":
            c.add_argument("--address", help="attach to a running Ray cluster (e.g. auto, or HOST:6379)")
            c.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and worker output")
            c.add_argument("--dashboard", action="store_true",
                           help="serve the embedded Ray's dashboard on http://127.0.0.1:8265 (else a free port)")
        if name == "submit":
            _cluster_options(c)
            c.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's code")
            c.add_argument("--working-dir", help="also ship this folder (e.g. the project checkout) with the job")
            c.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT",
                           help="pip-install a package into the job's environment (repeatable)")
    for name, help_ in (("status", "a submitted job's status"), ("logs", "a submitted job's logs"),
                        ("stop", "stop a submitted job"), ("list", "jobs submitted to the cluster")):
        c = sub.add_parser(name, help=help_)
        if name != "list":
            c.add_argument("id", help="submission id (printed by submit; see list)")
        if name == "logs":
            c.add_argument("--follow", action="store_true", help="stream until the job ends")
        _cluster_options(c)
    c = sub.add_parser("up", help="keep a Ray running on this machine: runs attach to it and start in seconds")
    c.add_argument("--cpus", type=int, default=(os.cpu_count() or 1) + 2,
                   help="logical CPUs it offers (default: cores + 2, room for a job's data tasks and trial drivers)")
    c.add_argument("--object-store-mb", type=int, default=2048, help="shared-memory object store (default 2048)")
    sub.add_parser("down", help="stop the Ray that `up` started (only its processes)")
    c = sub.add_parser("cluster", help="ray up | ray down | head status, for a cluster file in cluster/")
    c.add_argument("verb", choices=("up", "down", "status"))
    c.add_argument("file", help="cluster launcher YAML, e.g. cluster/aws.yaml")
    c.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_data_parser(sub)
    add_export_parser(sub)
    add_generate_parser(sub)
    add_recommend_parser(sub)
    add_rollout_parser(sub)
    add_predict_parser(sub)
    return p


def _cluster_options(c) -> None:
    where = c.add_mutually_exclusive_group()
    where.add_argument("--address", help="the cluster's dashboard, e.g. http://HOST:8265 "
                                         "(default: $RAY_API_SERVER_ADDRESS or an http $RAY_ADDRESS)")
    where.add_argument("--cluster", metavar="FILE", help="cluster launcher YAML: reach its head through `ray dashboard`")


def _jobs_command(args) -> int:
    import contextlib

    from bigmodel_ray import submit
    from bigmodel_ray.cluster import dashboard_address

    spec = None
    if args.command == "submit":
        from bigmodel_ray.cluster import default_storage
        from bigmodel_ray.spec import load_job

        spec = load_job(args.job, args.overrides)         # a bad job never reaches the cluster
        if args.cluster and "storage" not in spec.model_fields_set and (storage := default_storage(args.cluster)):
            spec = load_job(args.job, [*args.overrides, f"storage={storage}"])     # the cluster file's bucket
    if args.cluster:
        where = dashboard_address(args.cluster)
    else:
        env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
        address = args.address or (env if env.startswith("http") else None)
        if not address:
            raise SpecError(f"{args.command}: give --address http://HOST:8265 or --cluster cluster/FILE.yaml")
        where = contextlib.nullcontext(address)
    with where as address:
        if args.command == "submit":
            submission_id = submit.submit(spec, args.job, address, working_dir=args.working_dir, pip=args.pip)
            if not args.follow:
                print(f"follow it with: bigmodel-ray logs {submission_id} --follow --address {address}")
                return 0
            return submit.follow(address, submission_id)
        if args.command == "status":
            return submit.status(address, args.id)
        if args.command == "logs":
            return submit.logs(address, args.id, args.follow)
        if args.command == "stop":
            return submit.stop(address, args.id)
        return submit.list_jobs(address)


def _run_command(args) -> None:
    from bigmodel_ray import kinds, runtime, tracking
    from bigmodel_ray.spec import dump, load_job

    spec = load_job(args.job, args.overrides)
    tracking.check_ready(spec, args.job)        # a missing package is said now, not after Ray started
    if args.command == "validate":
        print(dump(spec), end="")
        return
    recipe = kinds.runner(spec)
    if args.address is None:
        _check_paths(spec, args.job)
    runtime.start_ray(args.address, args.verbose, args.dashboard, num_cpus=recipe.cpus_needed(spec),
                      object_store_mb=4 * spec.resources.data_memory_mb)
    if args.dashboard and args.address is None:
        print(f"Ray dashboard: {runtime.STATE_API}", flush=True)
    try:
        kinds.run(spec, args.job)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_where_it_stopped(spec, args)) from None


def _where_it_stopped(spec, args) -> str:
    """'after epoch 3 of runs/x: `bigmodel-ray run JOB ...` resumes it' (the line Ctrl-C prints)."""
    import shlex

    from bigmodel_ray import kinds, runs

    folder = runs.folder_of(spec)
    epoch = runs.epochs_logged(folder.local)
    unit = getattr(kinds.get(spec.kind), "step_name", "epoch")     # what one row of its log is
    sets = [a for o in args.overrides for a in ("--set", o)]
    command = shlex.join(["bigmodel-ray", "run", args.job, *sets, *(["--address", args.address] if args.address else [])])
    return f"{f'after {unit} {epoch} ' if epoch else ''}in {folder.uri}: `{command}` resumes it from its last checkpoint"


def _check_paths(spec, source: str) -> None:
    """Local data paths that do not exist, said now rather than after Ray has started (~10 s)."""
    from bigmodel_ray.data import check_path
    from bigmodel_ray.data.sources import DataError
    from bigmodel_ray.spec import data_sections

    for key, section in data_sections(spec):
        try:
            check_path(section)
        except DataError as e:
            raise SpecError(f"{source}: {key}.{e.field}: {e}") from None


def main(argv=None, here: bool = False) -> int:
    """`here`: run the command in this process, never handing it to the warm process of `up` (warm.py)."""
    args = _parser().parse_args(argv)
    if args.command == "run" and args.address is None and not here and os.environ.get("BIGMODEL_RAY_WARM") != "0":
        from bigmodel_ray import local_ray, warm

        code = warm.hand_over(sys.argv[1:] if argv is None else list(argv), local_ray.state_dir())
        if code is not None:
            return code
    try:
        if args.command == "data":
            from bigmodel_ray.cli import data

            data.run(args)
        elif args.command == "export":
            from bigmodel_ray.cli import export as export_cli

            return export_cli.run(args)
        elif args.command == "generate":
            from bigmodel_ray.cli import generate

            return generate.run(args)
        elif args.command == "rollout":
            from bigmodel_ray.cli import rollout

            return rollout.run(args)
        elif args.command == "recommend":
            from bigmodel_ray.cli import recommend

            return recommend.run(args)
        elif args.command == "predict":
            from bigmodel_ray.cli import predict

            return predict.run(args)
        elif args.command in ("up", "down"):
            from bigmodel_ray import local_ray, runtime

            if args.command == "down":
                return 0 if local_ray.down() else print("no local Ray is up") or 0
            local_ray.up(args.cpus, args.object_store_mb, runtime.ray_env())
        elif args.command == "cluster":
            from bigmodel_ray import cluster

            return cluster.run(args.verb, args.file, args.yes)
        elif args.command in ("submit", "status", "logs", "stop", "list"):
            return _jobs_command(args)
        else:
            _run_command(args)
        return 0
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted {str(e) or 'by Ctrl-C'}", file=sys.stderr)
        return 130
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        if getattr(args, "verbose", False):
            raise
        return 1
