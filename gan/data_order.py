"""The data order: the resumable stream of dataset indices that feeds the training images, and the loader
around it (drawing images from a generator is gan/sampling.py's).

The data order is a pure function of (seed, samples consumed over all processes), so a resumed run, a run
with any number of DataLoader workers and every DDP rank see exactly the images the uninterrupted run sees.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gan.config import DataConfig

Key = int | tuple[int, bool]  # a dataset index, or (index, mirror horizontally)


class ResumableSampler(Sampler):
    """Infinite index stream that is a pure function of (seed, global position).

    Global position p reads epoch e = p // n at offset p % n of torch.randperm(n) drawn from
    `torch.Generator().manual_seed(seed + e)`; with `mirror`, the same generator then draws n flip bits
    (torch.rand(n) < 0.5) and the stream yields (index, flip) keys for `TrainingImages`.

    Positions are counted over all processes. Starting at `start`, the stream is cut into global batches of
    batch_size * world_size positions; rank r takes positions [r * batch_size, (r + 1) * batch_size) of each.
    To resume exactly, rebuild with start = samples consumed so far (over all ranks) and the same
    seed / batch_size / world_size. Epochs are seamless: a global batch may span two epochs (no partial batches).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        mirror: bool = False,
    ) -> None:
        if num_samples < 1 or batch_size < 1 or start < 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"ResumableSampler needs num_samples >= 1, batch_size >= 1, start >= 0 and 0 <= rank < world_size; "
                f"got {num_samples}, {batch_size}, {start}, {rank}, {world_size}"
            )
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.rank, self.world_size, self.batch_size, self.mirror = rank, world_size, batch_size, mirror
        self._epoch: int | None = None
        self._order: tuple[list[int], list[bool]] = ([], [])

    def key_at(self, position: int) -> Key:
        """The key at a global position: an index, or (index, flip) when mirroring."""
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_samples, generator=g)
            flips = torch.rand(self.num_samples, generator=g) < 0.5 if self.mirror else torch.zeros(0, dtype=torch.bool)
            self._epoch, self._order = epoch, (perm.tolist(), flips.tolist())
        index = self._order[0][offset]
        return (index, self._order[1][offset]) if self.mirror else index

    def positions(self) -> Iterator[int]:
        """Global positions this rank reads, in order (infinite)."""
        batch_start = self.start + self.rank * self.batch_size
        while True:
            yield from range(batch_start, batch_start + self.batch_size)
            batch_start += self.batch_size * self.world_size

    def __iter__(self) -> Iterator[Key]:
        return (self.key_at(p) for p in self.positions())


def build_loader(
    dataset: Dataset,
    data_cfg: DataConfig,
    batch_size: int,
    seed: int,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Endless loader of (images (B, C, R, R), labels (B,)) for one rank; use `iter()` / `next()`, not `len()`.

    `start` is the number of samples consumed over all ranks (see `ResumableSampler`). With data.random_flip
    the dataset must accept (index, flip) keys, as `TrainingImages` does.
    """
    sampler = ResumableSampler(
        len(dataset),  # type: ignore[arg-type]
        seed,
        start=start,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        mirror=data_cfg.random_flip,
    )
    workers = data_cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=data_cfg.pin_memory and torch.cuda.is_available(),
        persistent_workers=data_cfg.persistent_workers and workers > 0,
        worker_init_fn=partial(seed_worker, base_seed=_worker_base_seed(seed, rank)) if workers > 0 else None,
        generator=torch.Generator().manual_seed(_worker_base_seed(seed, rank)),
    )


def _worker_base_seed(seed: int, rank: int) -> int:
    return (seed * 1_000_003 + rank) % 2**63


def seed_worker(worker_id: int, base_seed: int) -> None:
    """Seed torch, numpy and random in a DataLoader worker from (base seed, worker id).

    Nothing in this module draws from these generators (flips come from the sampler); this keeps any
    user-added random transform reproducible too.
    """
    s = (base_seed + worker_id) % 2**32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
