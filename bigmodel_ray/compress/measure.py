"""How every candidate model is measured, the same way: accuracy and macro-F1 on the test split,
parameters and nonzeros, bytes on disk, and inference latency.

Latency: model.eval() under inference_mode, a fixed thread count, warm-up calls first, then the
median of timed calls; candidates are timed interleaved over several rounds and each keeps its
best round, so background load on a shared machine hits all of them alike (see `latencies`).
"""

import io
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) over the floating-point state; quantized tensors count
    as their element numbers (their zeros are not counted: they are rarely exactly zero)."""
    total = nonzero = 0
    for value in model.state_dict().values():
        if not torch.is_tensor(value) or not value.is_floating_point() and not value.is_quantized:
            continue
        if type(value) is not torch.Tensor and not value.is_quantized:   # tensor subclasses (torchao int8)
            total += value.numel()
            nonzero += value.numel()
            continue
        plain = value.dequantize() if value.is_quantized else value
        total += plain.numel()
        nonzero += int(torch.count_nonzero(plain))
    return total, nonzero


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict as `torch.save` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def batch_of(x: torch.Tensor, size: int) -> torch.Tensor:
    """`size` inputs taken from `x` (repeated when `x` has fewer): a timing batch of any size."""
    return x.repeat(size // len(x) + 1, *[1] * (x.dim() - 1))[:size]


def gzip_bytes(model: nn.Module) -> int:
    """The same file gzipped: what zeros from unstructured pruning save on disk."""
    import gzip

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(gzip.compress(buffer.getvalue(), compresslevel=6))


@torch.inference_mode()
def median_ms(fn: Callable, x: torch.Tensor, calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn(x)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


def latencies(models: dict[str, Callable], x: torch.Tensor, threads: int = 1, rounds: int = 3,
              calls: int | None = None) -> dict[str, float]:
    """Median ms per call of each model on batch `x`, interleaved over `rounds`, best round kept."""
    calls = calls or (100 if len(x) == 1 else 15)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = {name: float("inf") for name in models}
        for _ in range(rounds):
            for name, fn in models.items():
                best[name] = min(best[name], median_ms(fn, x, calls))
        return best
    finally:
        torch.set_num_threads(old)


@torch.inference_mode()
def gpu_latency_ms(model: nn.Module, x: torch.Tensor, calls: int = 50, warmup: int = 10) -> float | None:
    """Median ms per call on the first CUDA device (None without one, or for models that cannot
    move there, e.g. CPU int8 kernels). Each call is timed with CUDA events around it."""
    if not torch.cuda.is_available():
        return None
    import copy

    try:
        model = copy.deepcopy(model).to("cuda")
        x = x.to("cuda")
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(calls):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    except (RuntimeError, NotImplementedError):
        return None
