"""Ray Train's TorchTrainer, without the helper actors a run does not use.

Before the first step, a Ray Train run starts its actors one after another: the controller, a
placement-group cleaner, a synchronization actor, the workers, and a DatasetManager that hands
out Ray Data shards. Each is a Python process that imports Ray Train: ~1 s apiece on two cores.
Two of them do nothing for some runs:

- the DatasetManager, when no Ray Dataset is handed over (built-in sets and recommender data
  reach the workers as arrays through the object store);
- the placement-group cleaner, on a Ray of this machine (embedded, or `bigmodel-ray up`): it
  frees the run's CPUs if the controller dies while the job lives on, which a single-node Ray
  does on its own — the placement group belongs to the run's job and goes when the job ends.
"""

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback


class LeanTorchTrainer(TorchTrainer):
    def __init__(self, *args, local_ray: bool = False, **kwargs):
        self._local_ray = local_ray
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self):
        unused = (() if self.datasets else (DatasetsCallback,)) + ((PlacementGroupCleanerCallback,)
                                                                   if self._local_ray else ())
        return [c for c in super()._create_default_callbacks() if not isinstance(c, unused)]
