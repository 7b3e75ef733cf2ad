"""Every candidate measured the same way, one picked by the job's rule, each saved and the
chosen one exported: the part of a compress run (or sweep) after the methods have run.

`Evaluator` reads the job's val and test splits once; `measure` fills the candidates table
(accuracy, F1, size, CPU latency at each batch size, interleaved so all numbers compare);
`select` applies `compress.select`; `save` writes each as a `torch.export` program.
"""

import json
from pathlib import Path

import pandas as pd
import torch

from bigmodel_ray import integrity
from bigmodel_ray.compress import batch_dim, quantize
from bigmodel_ray.compress import export as onnx_export
from bigmodel_ray.compress import measure as timing
from bigmodel_ray.compress.chain import Candidate
from bigmodel_ray.train.inputs import ModelInputs
from bigmodel_ray.train.shards import EvalBatches
from bigmodel_ray.train.steps import evaluate
from bigmodel_ray.tune.results import pareto_mask

TABLE_FILE = "candidates.csv"


class Evaluator:
    """The job's val and test splits, read once, for in-process evaluation of any model."""

    def __init__(self, spec, data):
        inputs = ModelInputs(spec.data, spec.seed)
        self.num_classes = data.num_classes
        self.splits = {name: EvalBatches(data.datasets[name].iterator(), batch_size=512, in_memory=True, rank=0,
                                         world_size=1, device=torch.device("cpu"), inputs=inputs)
                       for name in ("val", "test")}
        self.train = EvalBatches(data.datasets["train"].iterator(), batch_size=spec.train.batch_size, in_memory=False,
                                 rank=0, world_size=1, device=torch.device("cpu"), inputs=inputs)
        self.example = next(iter(self.splits["test"]))[0][:2]      # what export and pruning trace with

    @torch.inference_mode()
    def __call__(self, model) -> dict:
        out = {}
        for name, batches in self.splits.items():
            result = evaluate(model, batches, num_classes=self.num_classes, device=torch.device("cpu"))
            out.update({f"{name}_accuracy": result["accuracy"], f"{name}_f1": result["f1"]})
        return out

    def test_inputs(self) -> torch.Tensor:
        """The test inputs as one tensor: token batches, trimmed each to its own longest row, are
        padded back to the widest (padding changes nothing a token model computes)."""
        batches = [x for x, _ in self.splits["test"]]
        width = max(x.shape[-1] for x in batches)
        return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in batches])

    def calibration(self, batches: int) -> list[torch.Tensor]:
        out = []
        for x, _ in self.train:
            out.append(x)
            if len(out) == batches:
                break
        return out


def latency_key(m) -> str:
    """The latency column candidates are plotted and compared on: the first measured batch size."""
    return f"latency_ms_bs{m.batch_sizes[0]}"


def measure(candidates: list[Candidate], evaluator: Evaluator, m) -> pd.DataFrame:
    """One row per candidate; the first is the teacher, which ratios and drops are taken against."""
    rows = []
    for cand in candidates:
        params, nonzeros = timing.parameter_counts(cand.model)
        rows.append({"candidate": cand.name, **evaluator(cand.model), "params": params, "nonzeros": nonzeros,
                     "bytes": timing.serialized_bytes(cand.model), "bytes_gzip": timing.gzip_bytes(cand.model),
                     "settings": json.dumps(cand.settings, default=str)})
    x_full = evaluator.test_inputs()
    for batch in m.batch_sizes:
        x = timing.batch_of(x_full, batch)
        runners = {c.name: (quantize.compiled(c.model) if c.compiled else c.model) for c in candidates}
        timed = timing.latencies(runners, x, threads=m.threads, rounds=m.rounds)
        for row, cand in zip(rows, candidates):
            row[f"latency_ms_bs{batch}"] = timed[row["candidate"]]
            if torch.cuda.is_available():          # GPU latency where there is a GPU (CPU int8 kernels: none)
                row[f"gpu_latency_ms_bs{batch}"] = timing.gpu_latency_ms(cand.model, x)
    table = pd.DataFrame(rows)
    teacher = table.iloc[0]
    table["size_ratio"] = teacher["bytes"] / table["bytes"]
    for batch in m.batch_sizes:
        table[f"speedup_bs{batch}"] = teacher[f"latency_ms_bs{batch}"] / table[f"latency_ms_bs{batch}"]
    table["accuracy_drop"] = teacher["val_accuracy"] - table["val_accuracy"]
    return table


def select(table: pd.DataFrame, rule) -> str | None:
    """The candidate within `max_accuracy_drop` of the teacher's validation accuracy that has
    the smallest `minimize` (the teacher itself qualifies: nothing may be better)."""
    ok = table[table["accuracy_drop"] <= rule.max_accuracy_drop + 1e-12]
    return None if ok.empty else str(ok.loc[ok[rule.minimize].idxmin(), "candidate"])


def choose(table: pd.DataFrame, c, folder: Path) -> str | None:
    """Mark the Pareto set and the selected candidate; write the table and its plot into `folder`."""
    latency = latency_key(c.measure)
    table["pareto"] = pareto_mask(table[["val_accuracy", latency, "bytes"]].values.tolist(), ["max", "min", "min"])
    selected = select(table, c.select)
    table["selected"] = table["candidate"] == selected
    table.to_csv(folder / TABLE_FILE, index=False)
    plot(table, folder / "pareto.png", latency)
    return selected


FOLDER = "candidates"      # in the run (or sweep) folder: <name>.pt2 and <name>.json


def save(candidates, run_dir: Path, input_shape, num_classes: int, example, say) -> dict:
    """Each candidate as a `torch.export` program, signed (integrity.py: loading one unpickles parts
    of it), with its shapes and tag in `<name>.json`."""
    folder = run_dir / FOLDER
    folder.mkdir(exist_ok=True)
    saved = {}
    batch = batch_dim()
    for cand in candidates:
        path = folder / f"{cand.name}.pt2"
        try:
            program = torch.export.export(cand.model, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
        except Exception as e:
            say(f"  {cand.name}: not saved as a torch.export program ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:120]})")
            continue
        (folder / f"{cand.name}.json").write_text(json.dumps({"input_shape": list(input_shape), "num_classes": num_classes,
                                                              "hmac_sha256": integrity.tag(path)}))
        saved[cand.name] = str(path)
    return saved


def export_checked(model, path: Path, evaluator: Evaluator, threads: int, say) -> dict:
    x = evaluator.test_inputs()
    try:
        onnx_export.to_onnx(model, x[:2], path)
    except onnx_export.ExportError as e:
        say(f"ONNX export of the selected candidate failed: {e}")
        return {"error": str(e)}
    result = {"path": str(path), **onnx_export.parity(model, path, x[:256], threads)}
    say(f"ONNX: {path} max |diff| {result['max_abs_diff']:.2e}, argmax agreement {result['argmax_agreement']:.4f}, "
        f"onnxruntime {result['ort_latency_ms_bs1']:.3f} ms at batch 1")
    return result


def plot(table: pd.DataFrame, path: Path, latency: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = 40 + 400 * table["bytes"] / table["bytes"].max()
    colors = ["C3" if p else "0.6" for p in table["pareto"]]
    ax.scatter(table[latency], table["val_accuracy"], s=sizes, c=colors, alpha=0.7)
    for _, row in table.iterrows():
        ax.annotate(row["candidate"] + (" *" if row["selected"] else ""), (row[latency], row["val_accuracy"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel=f"{latency} (CPU)", ylabel="val accuracy",
           title="candidates (red: Pareto front, size: bytes, *: selected)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
