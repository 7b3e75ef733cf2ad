"""Data for jobs: every source becomes Ray Datasets with columns `x` and `y` (int64).

`sources.py` opens a source (built-in set, parquet, image folder, synthetic) as lazy datasets of
stored rows per split; `pipeline.py` turns them into worker batches in Ray Data tasks (decode,
augment the train split; `x` uint8 images or float32 series); workers scale and normalize on
their device (train/inputs.py). `load_data` puts the two together for a job; text sources
(text.py) read, tokenize and split rows in their own Ray Data tasks; interactions
(interactions.py) are read on the driver and handed to the workers as arrays.
"""

from bigmodel_ray.data.bundle import DataBundle

SOURCES = ("digits", "mnist1d", "synthetic", "image_folder", "parquet", "text", "reviews", "interactions", "movielens")
BLOCK_BYTES = 32 << 20
__all__ = ["DataBundle", "SOURCES", "check_path", "load_data", "open_pipeline", "open_source"]


def open_source(data_spec):
    """The source's lazy datasets of stored rows, per split (sources.py, parquet.py)."""
    from bigmodel_ray.data import parquet, sources

    openers = {"parquet": parquet.open_parquet, "image_folder": sources.open_image_folder,
               "synthetic": sources.open_synthetic}
    return openers.get(data_spec.source, sources.open_builtin)(data_spec)


def check_path(data_spec) -> None:
    """The checks of a local `path` that need no Ray: a wrong path fails before Ray starts."""
    from bigmodel_ray.data import parquet, sources

    if data_spec.source == "image_folder":
        sources.check_folder(data_spec)
    if data_spec.source in ("parquet", "text", "interactions") and "://" not in data_spec.path:
        parquet.parquet_layout(data_spec.path)
    if data_spec.source in ("reviews", "movielens"):
        from bigmodel_ray.data.fetch import path_of

        path_of(data_spec.source)


def open_pipeline(data_spec, seed: int = 0):
    """The opened source, the image format, and a function split -> that split's `Transform`."""
    from bigmodel_ray.data.images import ImageFormat, max_pixels_of
    from bigmodel_ray.data.pipeline import Transform, augment_config
    from bigmodel_ray.data.shift import Shift
    from bigmodel_ray.data.sources import DataError

    source = open_source(data_spec)
    if source.storage == "array":
        x = source.first_image                     # (C, H, W) images or (C, L) series
        fmt = ImageFormat(x.shape[1], x.shape[2], x.shape[0]) if x.ndim == 3 else None
        pixel_max, input_shape = 1.0, tuple(x.shape)
    else:
        if source.storage == "ids":
            channels = 1 if data_spec.color_mode == "grayscale" else 3
            fmt = ImageFormat(data_spec.image_size, data_spec.image_size, channels)
        else:
            fmt = ImageFormat.of(data_spec, source.first_image.shape[:2])
        pixel_max, input_shape = 255.0, (fmt.channels, fmt.height, fmt.width)
    norm = data_spec.normalize
    channels = fmt.channels if fmt is not None else input_shape[0]
    if norm is not None and len(norm.mean) not in (1, channels):
        raise DataError("normalize", f"has {len(norm.mean)} channels, the inputs have {channels}")
    aug = augment_config(data_spec.augment, pixel_max) if data_spec.augment else None
    on_device = aug is not None and data_spec.augment.on == "device"
    # Built-in sets are shifted when opened (sources.py); image sources row by row in the pipeline.
    shift = Shift(**data_spec.shift.model_dump()) if data_spec.shift and source.storage != "array" else None

    def transform(name: str) -> Transform:
        return Transform(
            storage=source.storage, fmt=fmt, image_column=data_spec.image_column, label_column=data_spec.label_column,
            raw_shape=data_spec.image_shape,
            synthetic=(data_spec.image_size, data_spec.num_classes) if source.storage == "ids" else None,
            split_seed=data_spec.split_seed, keep_share=source.hash_split.get(name),
            augment=aug if name == "train" and not on_device else None, emit_key=name == "train" and on_device,
            seed=seed, skip_bad=data_spec.on_bad_record == "skip", shift=shift,
            num_classes=source.num_classes, max_pixels=max_pixels_of(data_spec))

    return source, fmt, input_shape, transform, (aug if on_device else None)


def load_data(data_spec, seed: int = 0, state=None, task: str = "classify") -> DataBundle:
    """The job's splits as Ray Datasets (needs a running Ray). `state`: a PipelineState actor;
    `task`: lm reads text without labels (train.task)."""
    from functools import partial

    from bigmodel_ray.data.bundle import LazyDatasets
    from bigmodel_ray.data.pipeline import batch_rows, transform_blocks

    if data_spec.text is not None:
        from bigmodel_ray.data.text import load_text

        return load_text(data_spec, state, task)
    if data_spec.interactions is not None:
        from bigmodel_ray.data.interactions import load_interactions

        return load_interactions(data_spec, task)
    source, fmt, input_shape, transform, device_aug = open_pipeline(data_spec, seed)
    makers, has_tasks, arrays = {}, False, {}
    for name in source.splits:
        t = transform(name)
        if source.storage == "array" and t.augment is None and not t.emit_key:     # rows pass as they are
            if data_spec.keep_in_memory:
                arrays[name] = source.arrays[name]
            makers[name] = partial(source.splits.__getitem__, name)      # made only if looked up
        else:
            has_tasks = True
            ds = source.splits[name].map_batches(transform_blocks, batch_size=None, batch_format="numpy",
                                                 fn_kwargs={"t": t, "rows": batch_rows(fmt), "state": state})
            # Blocks of ~32 MB instead of Ray's 128 MB: a task holds less decoded data before it
            # hands a block on, and the object store budget holds more blocks in flight.
            ds.context.target_max_block_size = BLOCK_BYTES
            makers[name] = lambda ds=ds: ds
    datasets = LazyDatasets(makers)
    return DataBundle(datasets=datasets, rows=source.rows, input_shape=input_shape, num_classes=source.num_classes,
                      class_names=source.class_names, has_tasks=has_tasks,
                      device_augment=device_aug, arrays=arrays)
