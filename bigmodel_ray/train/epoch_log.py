"""`metrics.jsonl`: one JSON object per finished epoch, written where the driver runs.

A Ray Train callback writes it: it runs in the run's controller, which Ray places on the
driver's node, so the log needs no folder shared with the workers' nodes, and for a run in
object storage each epoch is sent there as it ends (a run killed mid-way keeps its history).
"""

import json

from ray.train import UserCallback

from bigmodel_ray.runs import METRICS_FILE, read_epoch_log
from bigmodel_ray.storage import RunFolder

RESUMED_ROW = "resumed_row"     # in a report: the row of the epoch the run resumed from (worker.py)


class EpochLog(UserCallback):
    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.sent_all = False

    def after_report(self, run_context, metrics, checkpoint):
        row = dict(metrics[0])                 # rank 0's (every rank reports the same row)
        resumed = row.pop(RESUMED_ROW, None)
        if "epoch" not in row:
            return
        # Epochs logged after the checkpoint a restarted run resumed from are trained again:
        # their new rows replace the old ones.
        kept = [r for r in read_epoch_log(self.folder.local) if r["epoch"] < row["epoch"]]
        if resumed and resumed["epoch"] < row["epoch"] and all(r["epoch"] != resumed["epoch"] for r in kept):
            kept = sorted([*kept, resumed], key=lambda r: r["epoch"])
        path = self.folder.local / METRICS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in [*kept, row]))
        tmp.replace(path)
        # The first epoch sends the whole folder (the spec, a tokenizer); later ones the log.
        self.folder.push(*(() if not self.sent_all else (METRICS_FILE,)))
        self.sent_all = True
