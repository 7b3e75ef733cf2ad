"""Stored rows -> worker batches (`x` uint8 images / float32 series, channels-first; `y` int64).

One fused `map_batches` per split does everything a row needs — keep its hash-split share,
read/decode/generate the image, shift it (`data.shift`, every split), augment it (train only) —
so each image is touched by one task and resampled once (twice with a geometric shift), in
parallel with training. Scaling to 0..1 and normalizing happen on the worker's device
(train/inputs.py).

Reproducible augmentation: a row's random draws depend on (job seed, epoch, row key) only, not
on which task or worker handles it or how rows are batched. Tasks learn the epoch from a tiny
`PipelineState` actor that the training workers set before each epoch (Ray Data starts an epoch's
tasks only once every worker has asked for it, so no task sees a stale epoch). With
`augment.on: device` the pipeline hands the key to the worker, which draws the same parameters
and warps on the GPU (data/device_warp.py).
"""

from dataclasses import dataclass

import cv2
import numpy as np

from bigmodel_ray.data.augment import AugmentConfig, augment_batch, draws_for_keys, params_from_draws
from bigmodel_ray.data.images import MAX_IMAGE_PIXELS, BadRecord, ImageFormat, decode, from_raw, read_file
from bigmodel_ray.data.labels import class_ids
from bigmodel_ray.data.shift import Shift, shift_images
from bigmodel_ray.data.sources import hash_share
from bigmodel_ray.data.synthetic import class_of, generate

TARGET_BATCH_BYTES = 16 << 20        # rows per transform call: ~16 MB of decoded pixels


class PipelineState:
    """Shared by a run's data tasks and workers: the current epoch, and records skipped as bad."""

    def __init__(self):
        self.epoch = 0
        self.skipped: dict[str, str] = {}        # origin -> reason (unique records, capped)
        self.skipped_total = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def get_epoch(self) -> int:
        return self.epoch

    def record_skipped(self, items: list[tuple[str, str]]) -> None:
        for origin, reason in items:
            if origin not in self.skipped:
                self.skipped_total += 1
                if len(self.skipped) < 10_000:
                    self.skipped[origin] = reason

    def skipped_report(self) -> tuple[int, list[str]]:
        return self.skipped_total, [f"{o}: {r}" for o, r in list(self.skipped.items())[:3]]


def start_state():
    import ray

    return ray.remote(num_cpus=0)(PipelineState).remote()


@dataclass(frozen=True)
class Transform:
    storage: str                          # see sources.py
    fmt: ImageFormat | None               # None: 1-D built-in rows (no image ops)
    image_column: str = "image"
    label_column: str = "label"
    raw_shape: tuple[int, int, int] | None = None
    synthetic: tuple[int, int] | None = None        # (image_size, num_classes)
    split_seed: int = 0
    keep_share: tuple[float, float] | None = None   # hash split: keep rows in [lo, hi)
    augment: AugmentConfig | None = None            # applied here (augment.on: data)
    emit_key: bool = False                          # augment.on: device — the worker augments
    shift: Shift | None = None                      # image sources; built-in sets are shifted when opened
    seed: int = 0
    skip_bad: bool = False
    num_classes: int | None = None                  # stored labels must be in [0, num_classes)
    max_pixels: int = MAX_IMAGE_PIXELS              # encoded images: width x height, read from the header


def transform_batch(batch: dict[str, np.ndarray], t: Transform, state=None, epoch: int | None = None) -> dict[str, np.ndarray]:
    """Stored rows -> {"x", "y"} (+ "key" for device augmentation).

    Images leave as uint8 (n, C, H, W): a quarter of float32's bytes through the object store and
    the workers' caches; the worker scales and normalizes them on its device (train/inputs.py).
    """
    cv2.setNumThreads(1)       # a Ray Data task holds one CPU; OpenCV's own pool would oversubscribe it
    images, y, key = stored_images(batch, t, state)
    if t.fmt is None:                                # 1-D rows pass through
        return {"x": images.astype(np.float32), "y": y}
    if t.augment is not None:
        epoch = _epoch(state) if epoch is None else epoch
        images = augment_batch(images, t.augment, draws=draws_for_keys(key, t.seed, epoch))
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    out = {"x": chw if chw.dtype == np.uint8 else chw.astype(np.float32), "y": y}
    if t.emit_key:
        out["key"] = key.view(np.int64)              # torch has no uint64; the bits are what count
    return out


def transform_blocks(block: dict[str, np.ndarray], t: Transform, rows: int, state=None):
    """`transform_batch` over a whole input block, yielding outputs of `rows` rows.

    Used with `map_batches(batch_size=None)`: with a batch size Ray Data will not fuse the map
    into the read task (measured: a separate op ran at 0.77 CPUs of 2), and a whole block at
    once would make one huge output; yielding slices streams ~16 MB outputs instead.
    """
    n = len(next(iter(block.values()))) if block else 0
    epoch = _epoch(state) if t.augment is not None else None      # one actor call per block
    for start in range(0, n, rows):
        yield transform_batch({k: v[start:start + rows] for k, v in block.items()}, t, state, epoch)


def stored_images(batch: dict[str, np.ndarray], t: Transform, state=None):
    """The batch's rows in this split as images (uint8 (n, H, W, C); float for built-ins), labels, keys.
    A bad record (its label or its image) raises BadRecord, or with `skip_bad` is dropped and counted."""
    y, key, label_problems = _labels(batch, t)
    rows = np.flatnonzero(in_split(key, t))
    images, ok = _images(batch, t, rows, key, label_problems, state)
    y, key = y[rows][ok], key[rows][ok]
    if t.shift is not None:      # the target domain itself: before (and whatever) the train augmentation
        images = shift_images(images, t.shift, key)
    return images, y, key


def in_split(key: np.ndarray, t: Transform) -> np.ndarray:
    """Which rows belong to this split (all, unless rows are split by the hash of their key)."""
    if t.keep_share is None:
        return np.ones(len(key), bool)
    share = hash_share(key, t.split_seed)
    return (share >= t.keep_share[0]) & (share < t.keep_share[1])


def labels_and_keys(batch, t: Transform):
    """Labels and keys of the rows whose label is a class id, read without decoding any image (data
    inspect counts them); any other label raises BadRecord, or with `skip_bad` drops its row."""
    y, key, problems = _labels(batch, t)
    if problems and not t.skip_bad:
        i = min(problems)
        raise BadRecord(f"{_origin(batch, t, i, key)}: {problems[i]}")
    good = y >= 0
    return y[good], key[good]


def _labels(batch, t: Transform):
    """int64 labels (-1 where bad), uint64 keys, and {row: why} for labels that are not class ids."""
    if t.storage == "ids":
        ids = batch["id"].astype(np.int64)
        return class_of(ids, t.synthetic[1], t.split_seed), ids.astype(np.uint64), {}
    if t.storage in ("encoded", "raw"):       # stored by whoever wrote the files: checked
        y, problems = class_ids(batch[t.label_column], t.num_classes)
        return y, batch["row_hash"].astype(np.uint64), problems
    keys = batch["key"].astype(np.uint64) if "key" in batch else np.arange(len(batch["y"]), dtype=np.uint64)
    return batch["y"].astype(np.int64), keys, {}


def _origin(batch, t: Transform, i: int, key: np.ndarray) -> str:
    if t.storage == "files":
        return batch["path"][i]
    return f"{batch['path'][i]} (row_hash {key[i]})" if "path" in batch else f"row_hash {key[i]}"


def _images(batch, t: Transform, rows, key, label_problems: dict[int, str], state):
    """uint8 (n, H, W, C) images of `rows` (or float arrays for built-ins) and which were good records."""
    if t.storage == "array":
        x = batch["x"][rows]
        return (x.transpose(0, 2, 3, 1) if t.fmt is not None else x), np.ones(len(rows), bool)
    if t.storage == "ids":
        images, _ = generate(batch["id"][rows], t.synthetic[0], t.synthetic[1], t.fmt.channels, t.split_seed)
        return images, np.ones(len(rows), bool)
    out = np.empty((len(rows), t.fmt.height, t.fmt.width, t.fmt.channels), np.uint8)
    ok = np.ones(len(rows), bool)
    bad = []
    for j, i in enumerate(rows):
        origin = _origin(batch, t, i, key)
        try:
            if i in label_problems:
                raise BadRecord(f"{origin}: {label_problems[i]}")
            if t.storage == "files":
                out[j] = decode(read_file(origin), t.fmt, origin, t.max_pixels)
            elif t.storage == "encoded":
                out[j] = decode(batch[t.image_column][i], t.fmt, origin, t.max_pixels)
            else:
                out[j] = from_raw(batch[t.image_column][i], t.raw_shape, t.fmt, origin)
        except BadRecord as e:
            if not t.skip_bad:
                raise
            ok[j] = False
            bad.append((origin, str(e).removeprefix(f"{origin}: ")))
    if bad and state is not None:    # waited for: the count must be in before the run reports it
        import ray

        ray.get(state.record_skipped.remote(bad))
    return out[ok], ok


def _epoch(state) -> int:
    if state is None:
        return 0
    import ray

    return ray.get(state.get_epoch.remote())


def augment_config(spec_augment, pixel_max: float) -> AugmentConfig:
    """The spec's augment section as the op's config; cval (0..1 in the spec) in pixel units."""
    fields = spec_augment.model_dump(exclude={"on"})
    return AugmentConfig(**{**fields, "cval": spec_augment.cval * pixel_max})


def device_augment(x, keys, cfg: AugmentConfig, seed: int, epoch: int):
    """The `augment.on: device` path, on the worker (x float in 0..1): the data path's draws, warped with torch."""
    import torch

    from bigmodel_ray.data.device_warp import warp_batch_torch

    n, _, h, w = x.shape
    matrices, brightness = params_from_draws(cfg, draws_for_keys(keys.cpu().numpy(), seed, epoch), h, w)
    x = warp_batch_torch(x, torch.as_tensor(matrices, device=x.device), cfg.fill_mode, cfg.cval)
    if brightness is not None:
        x = (x * torch.as_tensor(brightness, dtype=x.dtype, device=x.device).view(n, 1, 1, 1)).clamp_(0, 1)
    return x


def batch_rows(fmt: ImageFormat | None) -> int:
    """Rows per map_batches call: ~16 MB of decoded pixels (small enough to spread over tasks)."""
    if fmt is None:
        return 1024
    return int(max(16, min(1024, TARGET_BATCH_BYTES // (fmt.height * fmt.width * fmt.channels))))

