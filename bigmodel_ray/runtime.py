"""Starting or joining Ray, quietly unless asked otherwise."""

import logging
import os
import sys


def start_ray(address: str | None = None, verbose: bool = False) -> None:
    """Embedded Ray in this process (address None) or attach to a running cluster."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The Train controller polls workers this often (default 2 s): it bounds how soon a
    # report, a checkpoint or the end of a run is noticed.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not verbose:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray
    import ray.data

    if ray.is_initialized():
        return
    ray.init(address=address, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR)
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.print_on_execution_start = verbose
    data_ctx.enable_progress_bars = verbose and sys.stderr.isatty()
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
