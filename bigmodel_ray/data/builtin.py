"""Built-in real data sets that need no download: scikit-learn's digits and MNIST-1D.

Each loader returns numpy splits {"train", "val", "test"} of (x float32 channels-first, y int64).
Splits are fixed by `split_seed`, so every run of a job sees the same rows.
"""

import hashlib
import json
import os

import numpy as np

from bigmodel_ray.storage import cache_dir

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def load_digits(val_fraction: float, test_fraction: float, split_seed: int) -> Splits:
    """1,797 real 8x8 handwritten digits (UCI optdigits), pixel values 0..16 scaled to 0..1."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]          # (n, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y)
    return {"test": (x_test, y_test), **_carve_val(x_rest, y_rest, val_fraction, split_seed)}


# The generator's arguments a variant may change: how the templates are warped and noised, and
# its seed. The others would change the sequence length, the sample count or the split, which
# the two sides of a domain pair share.
MNIST1D_VARIANT_ARGS = ("scale_coeff", "max_translation", "corr_noise_scale", "iid_noise_scale", "shear_scale",
                        "shuffle_seq", "seed")


def check_mnist1d_args(generator: dict) -> None:
    """Raise ValueError naming the first argument the mnist1d generator would not take as a variant."""
    from mnist1d.data import get_dataset_args

    defaults = get_dataset_args(as_dict=True)
    defaults.pop("url")            # where get_dataset downloads from: not an argument of the data
    for key, value in generator.items():
        if key not in MNIST1D_VARIANT_ARGS:
            why = "fixed (it sets the sequence layout, sample count or split that a domain pair shares)" \
                if key in defaults else "unknown argument"
            raise ValueError(f"{key!r}: {why}; vary {', '.join(MNIST1D_VARIANT_ARGS)}")
        default = defaults[key]
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):      # seed (numpy takes 0 .. 2**32 - 1), max_translation
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32
            kind = "a whole number >= 0"
        else:
            ok, kind = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0, "a number >= 0"
        if not ok:
            raise ValueError(f"{key!r}: must be {kind} (got {value!r}; default {default!r})")


def load_mnist1d(val_fraction: float, test_fraction: float, split_seed: int, generator: dict | None = None) -> Splits:
    """MNIST-1D from the package's generator (4,000 train, 1,000 test): its default arguments,
    or with `generator` overriding some of them (a variant; see MNIST1D_VARIANT_ARGS).

    The test split is the generator's own; `test_fraction` does not apply. `mnist1d.data.get_dataset`
    is avoided on purpose: it downloads and unpickles a file.
    """
    from importlib.metadata import version

    # Named by the package's version and the arguments changed: importing the generator (scipy,
    # matplotlib) costs ~1 s, which a cached set never pays. (A 1 and a 1.0 get two files.)
    key = json.dumps({"mnist1d": version("mnist1d"), **(generator or {})}, sort_keys=True)
    cache = cache_dir() / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    else:  # generating takes ~7 s; cache it (numpy format, never pickle)
        from mnist1d.data import ObjectView, get_dataset_args, make_dataset

        check_mnist1d_args(generator or {})
        args = get_dataset_args(as_dict=True)
        args.update({k: type(args[k])(v) for k, v in (generator or {}).items()})
        args.pop("url")
        raw = make_dataset(ObjectView(dict(args)))
        data = {k: np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test")}
        _save_arrays(cache, **data)
    x, x_test = (data[k].astype(np.float32)[:, None] for k in ("x", "x_test"))   # (n, 1, 40)
    y, y_test = (data[k].astype(np.int64) for k in ("y", "y_test"))
    return {"test": (x_test, y_test), **_carve_val(x, y, val_fraction, split_seed)}


def _carve_val(x, y, val_fraction: float, seed: int) -> Splits:
    if val_fraction == 0:
        return {"train": (x, y), "val": (x[:0], y[:0])}
    train, val = _stratified_split(y, val_fraction, seed)
    return {"train": (x[train], y[train]), "val": (x[val], y[val])}


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's seeded, stratified split of the row indices, kept in the cache: importing
    it (with scipy) costs ~0.6 s of every run's start, and the same labels always split the same.
    Keyed by the labels themselves, the fraction, the seed and scikit-learn's version."""
    from importlib.metadata import version

    key = hashlib.sha256(json.dumps([version("scikit-learn"), fraction, seed]).encode() + y.tobytes()).hexdigest()
    cache = cache_dir() / "splits" / f"{key[:16]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            return f["train"], f["val"]
    from sklearn.model_selection import train_test_split  # here: every data task imports this module

    train, val = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y)
    cache.parent.mkdir(exist_ok=True)
    _save_arrays(cache, train=train, val=val)
    return train, val


def _save_arrays(path, **arrays) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)      # atomic: concurrent runs never read a half-written file


BUILTIN = {"digits": load_digits, "mnist1d": load_mnist1d}
