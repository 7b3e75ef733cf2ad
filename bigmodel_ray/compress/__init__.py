"""Model compression: pruning, int8 quantization, low-rank factorization, distillation, and the
measurements every candidate gets (accuracy, size, latency)."""

import contextlib
import io
import logging
import warnings

import torch


def batch_dim() -> "torch.export.Dim":
    """The dynamic batch dimension of every exported program (static int8, saved candidates,
    ONNX): one range everywhere, since re-exporting a program needs its own range or a narrower one."""
    return torch.export.Dim("batch", min=1, max=65536)


@contextlib.contextmanager
def quiet():
    """Keep the console ours around torchao and the ONNX exporter: torchao prints that its CUDA
    kernels do not load (harmless on CPU) and logs enum deprecations; the exporter prints its
    progress and logs that torchvision ops are skipped."""
    loggers = [logging.getLogger(name) for name in ("torch.utils._pytree", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
