"""What `train.task` optimizes: the label's classes, the text's next token, or a recommender's
ratings or rankings (the objectives of train/objectives.py, lm.py, recsys.py)."""

import json

from bigmodel_ray.data import DataBundle
from bigmodel_ray.data.interactions import IDS_FILE
from bigmodel_ray.train.lm import NextToken
from bigmodel_ray.train.objectives import Classify
from bigmodel_ray.train.recsys import Ranking, Rating


def task_objective(spec, data: DataBundle):
    """The objective of a plain run of `spec` on `data` (other kinds bring their own)."""
    task = spec.train.task
    if task == "lm":
        return NextToken()
    if task == "rating":
        return Rating(json.loads(data.artifacts[IDS_FILE])["rating_range"])
    if task == "ranking":
        return Ranking(data.model_args["num_items"], spec.data.interactions.train_negatives)
    return Classify(spec.train.label_smoothing)
