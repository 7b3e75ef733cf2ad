"""Batch inference with a finished run's model over new data, on Ray Data (`bigmodel-ray predict`).

  run.py     the run: its checkpoint, its `data` section, its input shape and class names
  inputs.py  DATA -> rows prepared as training's evaluation prepared them (decode and resize,
             or tokenize), in Ray Data; imports no torch, so the tasks that read start fast
  infer.py   the model in an actor pool (`Predictor`: loaded once per actor; scaling and
             normalization by train/inputs.py's ModelInputs), results streamed into one parquet file
"""
