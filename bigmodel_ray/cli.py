"""`bigmodel-ray` command line: validate and run job files; prepare and inspect data.

Exit codes: 0 done, 1 the run failed, 2 bad input (one line on stderr, no traceback).
"""

import argparse
import sys

from bigmodel_ray.runtime import RunFailed
from bigmodel_ray.spec import SpecError

RECIPES = {"train": "bigmodel_ray.recipes.train"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigmodel-ray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run a job"), ("validate", "check a job file and print the resolved spec")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("job", help="job YAML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec field, e.g. --set train.epochs=3 (repeatable)")
        if name == "run":
            c.add_argument("--address", help="attach to a running Ray cluster instead of starting one")
            c.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and worker output")
            c.add_argument("--dashboard", action="store_true",
                           help="start Ray's dashboard (http://127.0.0.1:8265) with the embedded Ray")
    from bigmodel_ray.data.cli import add_parser as add_data_parser

    add_data_parser(sub)
    return p


def _data_command(args) -> None:
    from bigmodel_ray.data import cli as data_cli
    from bigmodel_ray.data.sources import DataError
    from bigmodel_ray.runtime import start_ray

    try:
        start_ray()
        if args.data_command == "prepare":
            data_cli.prepare(args.src, args.out, args.encoding, args.overrides, args.layout)
        else:
            data_cli.inspect(args.src, args.overrides, args.grid, args.samples)
    except DataError as e:
        raise SpecError(f"{args.src}: data.{e.field}: {e}" if e.field != "out" else f"{args.out}: {e}") from None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "data":
            _data_command(args)
            return 0
        from bigmodel_ray.spec import dump, load_job

        spec = load_job(args.job, args.overrides)
        if args.command == "validate":
            print(dump(spec), end="")
            return 0
        import importlib

        from bigmodel_ray.runtime import start_ray

        recipe = importlib.import_module(RECIPES[spec.kind])
        res = spec.resources
        start_ray(args.address, args.verbose, args.dashboard, num_cpus=res.workers * res.cpus_per_worker + res.data_cpus)
        recipe.run(spec, args.job)
        return 0
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        if getattr(args, "verbose", False):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
