"""`bigmodel-ray export CKPT --format onnx`: any checkpoint to ONNX, checked against onnxruntime.

CKPT: a train run folder (its last checkpoint), a checkpoint folder (state.pt), a compress run
folder (its selected candidate), a candidate's `.pt2` file from a compress run, or an rl run
folder (its policy network: observations -> Q-values or action logits). A multitask
run holds a classifier per task: `--task NAME` exports that one (the backbone and its head).
"""

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from bigmodel_ray.errors import SpecError
from bigmodel_ray.runs import RESULT_FILE, SPEC_FILE, result_checkpoint, unfinished
from bigmodel_ray.storage import open_uri

if TYPE_CHECKING:
    import torch


def add_parser(sub) -> None:
    c = sub.add_parser("export", help="export a checkpoint to ONNX and check it against onnxruntime")
    c.add_argument("checkpoint", help="run folder, checkpoint folder, or a compress candidate .pt2")
    c.add_argument("--format", default="onnx", choices=("onnx",))
    c.add_argument("--out", help="output file (default: model.onnx, or model-TASK.onnx, next to the checkpoint)")
    c.add_argument("--task", help="a multitask run: the task whose classifier to export")
    c.add_argument("--threads", type=int, default=1, help="threads for the latency check")


def load_any(path: Path, task: str | None = None) -> "tuple[torch.nn.Module, tuple[int, ...], Path]":
    """(model, input shape, where the ONNX file goes by default)."""
    from bigmodel_ray.train.state import STATE_FILE, load_classifier, read_state

    if path.suffix == ".pt2":
        if task is not None:
            raise SpecError(f"{path}: --task picks a multitask run's classifier; a compress candidate has one")
        info = path.with_suffix(".json")
        if not path.exists() or not info.exists():
            raise SpecError(f"{path}: not a compress candidate (needs {path.name} and {info.name})")
        from bigmodel_ray.compress.export import load_program

        model, info = load_program(path)
        return model, tuple(info["input_shape"]), path.with_suffix(".onnx")
    if (path / STATE_FILE).exists():
        model = load_classifier(path, f"{path}: cannot be exported", task,
                                hint="" if task else "; --task NAME exports one task's classifier")
        return model, tuple(read_state(path)["meta"]["input_shape"]), path / f"model{'-' + task if task else ''}.onnx"
    result_file = path / RESULT_FILE
    if result_file.exists():
        try:
            result = json.loads(result_file.read_text())
        except ValueError as e:
            raise SpecError(f"{result_file}: not JSON ({e})") from None
        if not isinstance(result, dict):
            raise SpecError(f"{result_file}: not a run's result (a JSON object)")
        if selected := result.get("selected"):                        # a compress run
            # A name, never a path: result.json must not send the loader out of the run folder.
            if not isinstance(selected, str) or not re.fullmatch(r"[\w.-]{1,200}", selected) or selected.strip(".") == "":
                raise SpecError(f"{result_file}: selected: not a candidate name ({str(selected)[:80]!r})")
            model, shape, _ = load_any(path / "candidates" / f"{selected}.pt2", task)
            return model, shape, path / f"{selected}.onnx"
        if result.get("algorithm") and result.get("checkpoint"):       # an rl run: its policy network
            from bigmodel_ray.rl.policy import load_run_policy

            policy, obs_size = load_run_policy(path)
            return policy, (obs_size,), path / "policy.onnx"
        if result.get("checkpoint"):                                  # a train run
            model, shape, default_out = load_any(result_checkpoint(path), task)
            return model, shape, path / default_out.name
    if (path / SPEC_FILE).exists():
        raise SpecError(unfinished(path))
    raise SpecError(f"{path}: not a run folder, checkpoint folder or .pt2 candidate")


def run(args) -> int:
    import torch

    from bigmodel_ray.compress import export, measure

    model, shape, default_out = load_any(open_uri(args.checkpoint), args.task)
    out = Path(args.out) if args.out else default_out
    generator = torch.Generator().manual_seed(0)
    # Token models say what their inputs look like (ids, padding); the others take floats.
    x = model.example_inputs(64, generator) if hasattr(model, "example_inputs") else torch.randn(64, *shape,
                                                                                                   generator=generator)
    try:
        export.to_onnx(model, x[:2], out)
    except export.ExportError as e:
        raise SpecError(f"{args.checkpoint}: cannot be exported to ONNX ({e})") from None
    check = export.parity(model, out, x, args.threads)
    eager = measure.latencies({"eager": model}, x[:1], threads=args.threads)["eager"]
    print(f"{out}: {check['onnx_bytes']:,} bytes; onnxruntime vs PyTorch on {len(x)} inputs: max |diff| "
          f"{check['max_abs_diff']:.2e}, argmax agreement {check['argmax_agreement']:.4f}; latency at batch 1: "
          f"onnxruntime {check['ort_latency_ms_bs1']:.3f} ms, PyTorch {eager:.3f} ms ({args.threads} thread)")
    return 0
