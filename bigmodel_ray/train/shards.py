"""A worker's batches from its Ray Data shards.

Train: the `train` shard (rows split evenly across workers by Ray). With `in_memory`, the first
pass keeps the rows as tensors and later epochs reshuffle them locally (small data: no per-epoch
streaming cost); otherwise every epoch streams the shard with a seeded local shuffle buffer.
Eval: `val`/`test` are not split by Ray (an even split may drop rows), so each worker takes
every world_size-th row (in memory) or batch (streaming): together the workers cover every
row exactly once.
"""

import torch

_READ_BATCH = 1024
_DTYPES = {"x": torch.float32, "y": torch.int64}


def _iter_xy(shard, batch_size, device, **kwargs):
    for b in shard.iter_torch_batches(batch_size=batch_size, dtypes=_DTYPES, device=device, **kwargs):
        yield b["x"], b["y"]


def _materialize(shard, device) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*_iter_xy(shard, _READ_BATCH, "cpu")) if shard is not None else ((), ())
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


class TrainBatches:
    def __init__(self, shard, *, batch_size: int, in_memory: bool, seed: int, rank: int, device):
        self.shard, self.batch_size, self.in_memory = shard, batch_size, in_memory
        self.seed, self.rank, self.device = seed, rank, device
        self._cache = None

    def epoch(self, epoch: int):
        # Order depends only on (seed, epoch, rank): a resumed run sees the same batches.
        order_seed = (self.seed * 1_000_003 + epoch) * 1_009 + self.rank
        if not self.in_memory:
            return _iter_xy(self.shard, self.batch_size, self.device,
                            local_shuffle_buffer_size=max(4 * self.batch_size, 1024), local_shuffle_seed=order_seed)
        if self._cache is None:
            self._cache = _materialize(self.shard, self.device)
        x, y = self._cache
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(order_seed)).to(self.device)
        return ((x[idx], y[idx]) for idx in perm.split(self.batch_size))


class EvalBatches:
    def __init__(self, shard, *, batch_size: int, in_memory: bool, rank: int, world_size: int, device):
        self.shard, self.batch_size, self.in_memory = shard, batch_size, in_memory
        self.rank, self.world_size, self.device = rank, world_size, device
        self._cache = None

    def __iter__(self):
        if self.in_memory:
            if self._cache is None:
                x, y = _materialize(self.shard, self.device)
                x, y = x[self.rank::self.world_size], y[self.rank::self.world_size]
                self._cache = list(zip(x.split(self.batch_size), y.split(self.batch_size)))
            return iter(self._cache)
        batches = _iter_xy(self.shard, self.batch_size, self.device) if self.shard is not None else ()
        return (b for i, b in enumerate(batches) if i % self.world_size == self.rank)
