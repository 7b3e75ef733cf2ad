"""Apply a job's compression methods in order; every method's result is a candidate.

Training happens elsewhere: `finetune(model, epochs, lr, teacher)` trains a model (the recipe
runs it on the DDP loop) and returns it with the trained weights.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bigmodel_ray.compress import lowrank, prune, quantize
from bigmodel_ray.compress.export import Loaded
from bigmodel_ray.models import build_model, takes_tokens


@dataclass
class Candidate:
    name: str                  # "teacher", "1-distill", "2-prune", ...
    model: nn.Module           # what is evaluated and saved
    settings: dict = field(default_factory=dict)
    compiled: bool = False     # static int8: timed through torch.compile


def step_amounts(amount: float, steps: int) -> list[float]:
    """Per-step shares of what is left, so that after step k a share amount*k/steps is gone."""
    gone = [amount * k / steps for k in range(steps + 1)]
    return [1 - (1 - gone[k]) / (1 - gone[k - 1]) for k in range(1, steps + 1)]


def apply_methods(teacher: nn.Module, methods, *, input_shape, num_classes: int, example: torch.Tensor,
                  finetune: Callable, calibration: Callable, seed: int = 0) -> list[Candidate]:
    """The candidates after each method, in order (the teacher itself is not among them)."""
    model, out = teacher, []
    for i, method in enumerate(methods, 1):
        settings = method.model_dump(exclude={"method"})
        model = copy.deepcopy(model).eval()
        if method.method == "distill":
            torch.manual_seed(seed)
            args = dict(method.student.args)
            if takes_tokens(method.student.name) and hasattr(teacher, "vocab_size"):   # the teacher's tokens
                args.setdefault("vocab_size", teacher.vocab_size)
            student = build_model(method.student.name, input_shape, num_classes, **args)
            model = finetune(student, method.epochs, None, teacher=teacher, distill=method)
        elif method.method == "prune":
            for share in step_amounts(method.amount, method.steps):
                if method.structured:
                    prune.structured(model, example, share, norm=method.norm)
                else:
                    prune.unstructured(model, share)
                model = finetune(model, method.finetune_epochs, method.finetune_lr)
            if not method.structured:
                prune.make_permanent(model)
        elif method.method == "lowrank":
            settings["ranks"] = lowrank.factorize(model, method.ratio, method.energy, convs=method.convs)
            model = finetune(model, method.finetune_epochs, method.finetune_lr)
        elif method.method == "quantize":
            if method.mode == "dynamic":
                model = quantize.dynamic(model)
            else:
                # pt2e's converted graph refuses .eval()/.train(): it is an exported program
                model = Loaded(quantize.static(model, calibration(method.calibration_batches), example))
        out.append(Candidate(f"{i}-{method.method}", model.eval(), settings,
                             compiled=method.method == "quantize" and method.mode == "static"))
    return out
