"""A worker's batches from its Ray Data shards (or, for small built-in sets, from (x, y) arrays).

Train: the `train` shard (rows split evenly across workers by Ray). With `in_memory`, the first
pass keeps the rows as tensors and later epochs reshuffle them locally (small data: no per-epoch
streaming cost); otherwise every epoch streams the shard with a seeded local shuffle buffer.
Eval: `val`/`test` are not split by Ray (an even split may drop rows), so each worker takes
every world_size-th row (in memory) or batch (streaming): together the workers cover every
row exactly once.
"""

import torch

_READ_BATCH = 1024


def _iter_stored(shard, batch_size, device, keyed=False, **kwargs):
    # Columns keep their stored dtypes (x: uint8 images or float series, y/key: int64);
    # ModelInputs converts x on the device. Two batches in flight: the next one is decoded,
    # augmented and moved while this one trains.
    for b in shard.iter_torch_batches(batch_size=batch_size, device=device, prefetch_batches=2, **kwargs):
        yield (b["x"], b["y"], b["key"]) if keyed else (b["x"], b["y"])


def _materialize(shard, device, keyed=False) -> tuple[torch.Tensor, ...]:
    if isinstance(shard, tuple):         # (x, y) arrays, handed over without Ray Data
        return tuple(torch.from_numpy(a).to(device) for a in shard)
    parts = list(zip(*_iter_stored(shard, _READ_BATCH, "cpu", keyed))) if shard is not None else []
    if not parts:
        return (torch.empty(0), torch.empty(0, dtype=torch.int64)) + ((torch.empty(0, dtype=torch.int64),) if keyed else ())
    return tuple(torch.cat(p).to(device) for p in parts)


class TrainBatches:
    """(inputs, y) batches of this worker's train shard for one epoch, through `inputs` (ModelInputs).

    With device augmentation the shard carries each row's `key`, from which `inputs` draws the
    row's transform for the epoch.
    """

    def __init__(self, shard, *, batch_size: int, in_memory: bool, seed: int, rank: int, device, inputs,
                 row_bytes: int = 0):
        self.shard, self.batch_size, self.in_memory = shard, batch_size, in_memory
        self.seed, self.rank, self.device, self.inputs = seed, rank, device, inputs
        # Streaming shuffle window: 1,024 rows, or ~64 MB of rows if that is fewer (a fixed row
        # count would hold 150 MB of 224x224 images per worker), at least 4 batches.
        self.shuffle_rows = max(4 * batch_size, min(1024, (64 << 20) // max(row_bytes, 1)))
        self._cache = None

    def label_counts(self, num_classes: int) -> torch.Tensor:
        """Rows per class in this worker's shard (a streamed shard is read once more for it)."""
        if self.in_memory:
            if self._cache is None:
                self._cache = _materialize(self.shard, self.device, self.inputs.needs_key)
            labels = [self._cache[1]]
        else:
            labels = [y for _, y in _iter_stored(self.shard, _READ_BATCH, self.device)]
        counts = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        for y in labels:
            counts += torch.bincount(y, minlength=num_classes)[:num_classes]
        return counts

    def epoch(self, epoch: int):
        # Order depends only on (seed, epoch, rank): a resumed run sees the same batches.
        order_seed = (self.seed * 1_000_003 + epoch) * 1_009 + self.rank
        keyed = self.inputs.needs_key
        if not self.in_memory:
            batches = _iter_stored(self.shard, self.batch_size, self.device, keyed,
                                   local_shuffle_buffer_size=self.shuffle_rows, local_shuffle_seed=order_seed)
        else:
            if self._cache is None:
                self._cache = _materialize(self.shard, self.device, keyed)
            perm = torch.randperm(len(self._cache[1]), generator=torch.Generator().manual_seed(order_seed))
            batches = (tuple(t[idx] for t in self._cache) for idx in perm.to(self.device).split(self.batch_size))
        if keyed:
            return ((self.inputs(x, key, epoch), y) for x, y, key in batches)
        return ((self.inputs(x), y) for x, y in batches)


class EvalBatches:
    def __init__(self, shard, *, batch_size: int, in_memory: bool, rank: int, world_size: int, device, inputs):
        self.shard, self.batch_size, self.in_memory = shard, batch_size, in_memory
        self.rank, self.world_size, self.device, self.inputs = rank, world_size, device, inputs
        self._cache = None

    def __iter__(self):
        if self.in_memory:
            if self._cache is None:
                x, y = _materialize(self.shard, self.device)
                x, y = x[self.rank::self.world_size], y[self.rank::self.world_size]
                self._cache = list(zip(x.split(self.batch_size), y.split(self.batch_size)))
            return ((self.inputs(x), y) for x, y in self._cache)
        batches = _iter_stored(self.shard, self.batch_size, self.device) if self.shard is not None else ()
        return ((self.inputs(x), y) for i, (x, y) in enumerate(batches) if i % self.world_size == self.rank)
