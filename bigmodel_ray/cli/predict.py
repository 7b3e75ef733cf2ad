"""`bigmodel-ray predict RUN DATA --out FILE.parquet`: a finished run's model over new data, on
Ray Data (bigmodel_ray/predict). RUN and DATA are checked before Ray starts."""

import os
import re
from pathlib import Path

from bigmodel_ray.errors import RunFailed, SpecError
from bigmodel_ray.storage import open_uri

OBJECT_STORE_MB = 1024      # the embedded Ray's store, as a run's by default: memory stays flat whatever the data


def add_parser(sub) -> None:
    c = sub.add_parser("predict", help="predict with a finished run's model over an image folder or parquet")
    c.add_argument("run", help="a finished train or transfer run folder")
    c.add_argument("data", help="an image folder (every image under it), or parquet (file, folder or glob) with "
                                "the run's image column, its text column(s), or `x` (1-D series runs)")
    c.add_argument("--out", required=True, help="the predictions, one parquet file")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.add_argument("--actors", type=int, default=1, help="model replicas, one Ray Data actor each (default 1)")
    c.add_argument("--batch-size", type=int, default=256, help="rows per model call (default 256)")
    c.add_argument("--address", help="attach to a running Ray cluster (e.g. auto, or HOST:6379); RUN and DATA "
                                     "must then be readable on its nodes")
    c.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and worker output")


def run(args) -> int:
    from bigmodel_ray import runtime
    from bigmodel_ray.predict.infer import predict
    from bigmodel_ray.predict.inputs import find_inputs
    from bigmodel_ray.predict.run import open_run

    if args.actors < 1 or args.batch_size < 1:
        raise SpecError(f"--actors and --batch-size must be >= 1 (got {args.actors}, {args.batch_size})")
    out = checked_out(Path(args.out).expanduser(), args.overwrite)
    trained = open_run(open_uri(args.run))
    inputs = find_inputs(args.data, trained)
    # A CPU for the data tasks beside the actors: an actor pool holding every CPU starves the reads.
    runtime.start_ray(args.address, args.verbose, num_cpus=args.actors + 1, object_store_mb=OBJECT_STORE_MB)
    import ray.exceptions

    try:
        predict(trained, inputs, args.data, out, args.actors, args.batch_size)
    except ray.exceptions.RayError as e:
        raise RunFailed(f"predict failed: {_raised(e)} (rerun with -v for worker logs)") from e
    return 0


def checked_out(out: Path, overwrite: bool) -> Path:
    """--out, if a file can be written there: never an existing one unless --overwrite."""
    if out.is_dir():
        raise SpecError(f"{out}: --out is a folder; it names the predictions' parquet file")
    if out.exists() and not overwrite:
        raise SpecError(f"{out}: --out exists (--overwrite replaces it)")
    if not out.parent.is_dir():
        raise SpecError(f"{out}: --out: no folder {out.parent}")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise SpecError(f"{out}: --out: cannot write in {out.parent}")
    return out


def _raised(e: Exception) -> str:
    """The worker's own exception line in a Ray error (its message also carries the remote
    traceback and Ray's advice)."""
    raised = [line for line in str(e).splitlines() if re.match(r"[\w.]*(Error|Exception)\b", line)]
    return (raised[-1] if raised else type(e).__name__)[:300]
