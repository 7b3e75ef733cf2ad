"""Model compression: pruning, int8 quantization, low-rank factorization, distillation, and the
measurements every candidate gets (accuracy, size, latency)."""

import contextlib
import io
import logging
import warnings


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
