"""The model over prepared rows in a Ray Data actor pool, and the results streamed into one
parquet file on the driver.

The file is written under a temporary name beside `out` and renamed at the end, so an existing
file is never left half-replaced. Bad records follow the run's `data.on_bad_record`: `fail` stops
at the first (one line naming it), `skip` drops them and reports the count in one line.
"""

import os
import time
from pathlib import Path

import numpy as np

from bigmodel_ray.errors import SpecError
from bigmodel_ray.predict.inputs import Inputs, prepared_rows
from bigmodel_ray.predict.run import TrainedRun

EXAMPLES = 3        # bad records quoted in the summary line


class Predictor:
    """One model replica, a Ray Data actor: prepared rows -> class probabilities."""

    def __init__(self, checkpoint: str, data_spec: dict, threads: int):
        import torch

        from bigmodel_ray.spec import DataSpec
        from bigmodel_ray.train.inputs import ModelInputs
        from bigmodel_ray.train.state import load_model

        torch.set_num_threads(threads)
        self.model = load_model(checkpoint)
        self.inputs = ModelInputs(DataSpec.model_validate(data_spec), seed=0)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        good = batch["error"] == ""
        with torch.inference_mode():
            logits = self.model(self.inputs(torch.from_numpy(batch["x"][good])))   # a copy: writable
            probs = np.zeros((len(good), logits.shape[1]), np.float32)
            probs[good] = torch.softmax(logits.float(), dim=1).numpy()
        out = {"error": batch["error"], "predicted": probs.argmax(1), "confidence": probs.max(1),
               "probabilities": probs}
        if "id" in batch:
            out["id"] = batch["id"]
        return out


def predict(run: TrainedRun, inputs: Inputs, data: str, out: Path, actors: int = 1, batch_size: int = 256,
            say=print) -> dict:
    """Predictions for every row of `inputs` written to `out` (needs a running Ray)."""
    import ray.data

    # Ray Data fuses the row preparation into the actors: each decodes its rows, then runs the
    # model on this machine's share of cores.
    model = {"checkpoint": str(run.checkpoint), "data_spec": run.data.model_dump(mode="json"),
             "threads": max(1, (os.cpu_count() or 1) // actors)}
    ds = prepared_rows(inputs).map_batches(Predictor, fn_constructor_kwargs=model, batch_size=batch_size,
                                           batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors))
    ds.context.execution_options.preserve_order = True      # rows without an id go by their position
    start = time.perf_counter()
    rows, skipped, examples = _write(ds, out, inputs, run, data)
    seconds = time.perf_counter() - start
    bad = f"; skipped {skipped:,} bad records (the run's data.on_bad_record: skip), e.g. {'; '.join(examples)}" \
        if skipped else ""
    say(f"{out}: {rows:,} predictions in {seconds:.1f}s ({rows / seconds:,.0f}/s){bad}")
    return {"rows": rows, "skipped": skipped, "seconds": seconds}


def _write(ds, out: Path, inputs: Inputs, run: TrainedRun, data: str) -> tuple[int, int, list[str]]:
    """Stream the batches into a temporary file beside `out`, then rename it to `out`; returns the
    rows written, the bad records skipped and a few of them."""
    import pyarrow.parquet as pq

    schema = _schema(inputs, run)
    names = np.array(run.class_names, dtype=object) if run.class_names else None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rows, skipped, examples, position = 0, 0, [], 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                ids = batch["id"] if "id" in batch else np.arange(position, position + len(batch["error"]))
                position += len(ids)
                good = batch["error"] == ""
                for i in np.flatnonzero(~good):
                    problem = _bad_record(run, inputs, data, ids[i], batch["error"][i])
                    skipped += 1
                    examples += [problem][:EXAMPLES - len(examples)]
                writer.write_table(_table(batch, ids, good, names, schema))
                rows += int(good.sum())
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, skipped, examples


def _schema(inputs: Inputs, run: TrainedRun):
    import pyarrow as pa

    id_type = {"path": pa.string(), "position": pa.int64()}.get(inputs.id_type, inputs.id_arrow_type)
    return pa.schema([("id", id_type), ("predicted", pa.string() if run.class_names else pa.int64()),
                      ("confidence", pa.float32()), ("probabilities", pa.list_(pa.float32()))])


def _table(batch, ids, good, names, schema):
    import pyarrow as pa

    probs, predicted = batch["probabilities"][good], batch["predicted"][good]
    offsets = np.arange(len(probs) + 1, dtype=np.int32) * probs.shape[1]
    return pa.table({
        "id": pa.array(ids[good], schema.field("id").type),
        "predicted": pa.array(names[predicted] if names is not None else predicted, schema.field("predicted").type),
        "confidence": pa.array(batch["confidence"][good], pa.float32()),
        "probabilities": pa.ListArray.from_arrays(pa.array(offsets), pa.array(probs.ravel(), pa.float32())),
    }, schema=schema)


def _bad_record(run: TrainedRun, inputs: Inputs, data: str, row_id, reason: str) -> str:
    """A bad record, named by its path or by DATA and its row; under on_bad_record: fail, the error."""
    where = row_id if inputs.id_type == "path" else f"{data} ({'id' if inputs.id_type == 'column' else 'row'} {row_id})"
    if run.data.on_bad_record == "fail":
        raise SpecError(f"{where}: {reason} (the run's data.on_bad_record is fail)")
    return f"{where}: {reason}"
