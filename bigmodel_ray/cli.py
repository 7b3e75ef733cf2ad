"""`bigmodel-ray` command line: validate and run job files.

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
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        from bigmodel_ray.spec import dump, load_job

        spec = load_job(args.job, args.overrides)
        if args.command == "validate":
            print(dump(spec), end="")
            return 0
        import importlib

        from bigmodel_ray.runtime import start_ray

        recipe = importlib.import_module(RECIPES[spec.kind])
        start_ray(args.address, args.verbose, args.dashboard)
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
        if args.verbose:
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
