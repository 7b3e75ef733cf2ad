"""What the training loop (train/worker.py) asks of Ray Train, in one place.

In a Train worker these are Ray Train's own calls. A sweep's one-worker trial runs the same loop
in its own process instead (train/in_process.py), where Ray refuses its public `ray.train.*`
calls beside Tune's session; that runner hands the loop calls of its own with the same meaning.
"""

import ray.train
import ray.train.torch
import torch


class RayTrainCalls:
    def rank_and_world(self) -> tuple[int, int]:
        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def checkpoint(self) -> ray.train.Checkpoint | None:
        """The run's own latest checkpoint (a resumed or restarted run), if any."""
        return ray.train.get_checkpoint()

    def dataset_shard(self, name: str):
        return ray.train.get_dataset_shard(name)

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict | None) -> torch.nn.Module:
        """On the worker's device; under DDP when there are several workers."""
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs or None)

    def report(self, metrics: dict, checkpoint: ray.train.Checkpoint | None) -> None:
        ray.train.report(metrics, checkpoint=checkpoint)
