"""ONNX export with an onnxruntime parity check.

`torch.onnx.export` (the dynamo exporter, torch 2.13's default) writes `model.onnx` with a
dynamic batch dimension; onnxruntime then runs it on the same inputs as PyTorch: the result
carries the max absolute difference of the logits, the share of equal argmax predictions, and
onnxruntime's latency at batch 1 and at the inputs' batch size.
"""

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bigmodel_ray import integrity
from bigmodel_ray.compress import batch_dim, quiet
from bigmodel_ray.errors import SpecError


class ExportError(Exception):
    """The model cannot be exported to ONNX (e.g. int8 kernels the exporter does not translate)."""


class Loaded(nn.Module):
    """A module loaded from a `torch.export` program, usable where code calls .eval()/.train():
    it was exported in eval mode and refuses those calls itself."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)

    def train(self, mode: bool = True):
        return self


def load_program(path: str | Path) -> tuple[nn.Module, dict]:
    """A compress candidate and its `<name>.json` (shapes), after its signature verified: the
    loader unpickles parts of the archive, so an unsigned or altered program is never opened."""
    path = Path(path)
    info_file = path.with_suffix(".json")
    try:
        info = json.loads(info_file.read_text())
        shape = info["input_shape"]
        if not (isinstance(shape, list) and 0 < len(shape) <= 4 and all(type(n) is int and 0 < n <= 1 << 16 for n in shape)):
            raise ValueError(f"input_shape {str(shape)[:80]}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{info_file}: not a compress candidate's description ({type(e).__name__}: {str(e)[:120]})") from None
    integrity.verify(path, info.get("hmac_sha256"))
    with quiet():            # torchao prints on import
        # A static int8 program calls the quantized_decomposed q/dq ops: registered by this import.
        import torchao.quantization.pt2e  # noqa: F401

        return Loaded(torch.export.load(str(path)).module()), info


def inference_mode_of(model: nn.Module) -> nn.Module:
    """model.eval(), except for a module loaded from a torch.export program: it was exported in
    eval mode and refuses the call."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    if any(type(p) not in (torch.Tensor, nn.Parameter) for p in model.parameters()):
        raise ExportError("dynamic int8 (torchao's quantized weight tensors) has no ONNX translation; "
                          "static int8 exports")
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = {0: batch_dim()}
    # Token ids: any length up to the model's max_length. A recommender's [user, item] rows
    # (width 2) keep their width: one score per row.
    if not example.is_floating_point() and example.shape[1] > 2:
        dims[1] = torch.export.Dim("tokens", min=2, max=example.shape[1])
    try:
        with quiet():
            torch.onnx.export(inference_mode_of(model), (example,), str(path), input_names=["x"], output_names=["logits"],
                              dynamic_shapes=(dims,), external_data=False)
    except Exception as e:      # the exporters raise many types; the first line says what failed
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(e).strip().splitlines()[0])    # no terminal colours
        raise ExportError(f"{type(e).__name__}: {first_line[:200]}") from None
    return path


def session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def parity(model: nn.Module, path: str | Path, x: torch.Tensor, threads: int = 1) -> dict:
    from bigmodel_ray.compress.measure import latencies

    sess = session(path, threads)
    expected = inference_mode_of(model)(x).float().numpy()
    got = sess.run(None, {"x": x.numpy()})[0]

    def run_ort(batch):
        return sess.run(None, {"x": batch.numpy()})

    timed = {f"ort_latency_ms_bs{len(b)}": latencies({"ort": run_ort}, b, threads)["ort"] for b in (x[:1], x)}
    return {"max_abs_diff": float(np.abs(got - expected).max()),
            "argmax_agreement": float((got.argmax(1) == expected.argmax(1)).mean()),
            "onnx_bytes": Path(path).stat().st_size, **timed}
