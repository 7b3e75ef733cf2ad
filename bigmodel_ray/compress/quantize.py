"""int8 post-training quantization: dynamic (weights int8, activations quantized per batch) and
static (activations' ranges calibrated on training batches), through torchao — the API current
for torch 2.13, `torch.ao.quantization` being deprecated.

  dynamic  torchao `quantize_(Int8DynamicActivationInt8WeightConfig())` on Linear layers, eager.
  static   torchao pt2e: `torch.export` -> `prepare_pt2e(X86InductorQuantizer)` -> calibrate ->
           `convert_pt2e`; the int8 kernels appear when the result is compiled (`torch.compile`,
           with Inductor's freezing), so `static` models are measured compiled.

On a CPU without VNNI (AVX2 only) the x86 quantizer needs `reduce_range` (7-bit activations), or
the compiled int8 kernels saturate; this is detected from the CPU flags.
"""

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from bigmodel_ray.compress import batch_dim, quiet


def has_vnni() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def dynamic(model: nn.Module) -> nn.Module:
    with quiet():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(model).eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def static(model: nn.Module, calibration: Iterable[torch.Tensor], example: torch.Tensor) -> nn.Module:
    """Calibrate activation ranges on `calibration` batches; returns the converted (q/dq) module."""
    with quiet():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = batch_dim()
    program = torch.export.export(copy.deepcopy(model).eval(), (example,), dynamic_shapes=({0: batch},))
    quantizer = x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config(reduce_range=not has_vnni()))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.inference_mode():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared)


def compiled(model: nn.Module) -> nn.Module:
    """What runs the static int8 graph fast: Inductor with freezing, one compile per input shape
    (a dynamic batch dimension crashed Inductor's int8 conv lowering here)."""
    import warnings

    import torch._inductor.config as inductor

    # Inductor's int8 conv lowering warns about its own tensor copy on every compile.
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", module=r"torch\._inductor")
    inductor.freezing = True
    return torch.compile(model, dynamic=False)
