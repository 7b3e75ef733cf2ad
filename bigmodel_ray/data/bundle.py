"""What a job's data is once opened: its splits as Ray Datasets, and what the model needs to know."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ray

    from bigmodel_ray.data.augment import AugmentConfig


class LazyDatasets(Mapping):
    """Split name -> Ray Dataset, each made when first looked up. `ray.data.from_arrow` runs a Ray
    task per block to read its metadata: at a run's start that means new worker processes (~2 s
    on two cores), for splits that a run may well take as arrays instead and never look up."""

    def __init__(self, makers: dict[str, Callable[[], "ray.data.Dataset"]]):
        self._makers, self._made = makers, {}

    def __getitem__(self, name: str) -> "ray.data.Dataset":
        if name not in self._made:
            self._made[name] = self._makers[name]()
        return self._made[name]

    def __iter__(self):
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


@dataclass
class DataBundle:
    datasets: Mapping[str, "ray.data.Dataset"]   # "train", "val", "test" (LazyDatasets for built-in sets)
    rows: dict[str, int]                      # exact, or estimated for hash-split parquet
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str] | None
    has_tasks: bool                           # the pipeline runs Ray Data tasks (needs CPUs beside training)
    device_augment: "AugmentConfig | None"    # augment.on: device — the workers warp the train batches
    artifacts: dict[str, str] = field(default_factory=dict)   # files the run folder keeps (a tokenizer)
    # Splits that the workers may take as (x, y) arrays instead of through Ray Data: built-in
    # sets kept in memory whose rows pass as they are. A run then starts without Ray Data's
    # coordinator actors (a process each: seconds per run on a small machine).
    arrays: dict[str, tuple] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)  # baselines result.json reports beside the model's
    model_args: dict[str, int] = field(default_factory=dict)   # sizes only the data knows (users, items)

    def handed_over(self) -> tuple[dict, dict]:
        """(the Ray Datasets for Ray Train to split, object refs of the arrays the workers read)."""
        import ray

        refs = {name: ray.put(xy) for name, xy in self.arrays.items()}
        return {name: self.datasets[name] for name in self.datasets if name not in refs}, refs
