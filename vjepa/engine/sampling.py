"""Resumable, rank-sharded loading.

The sampler walks a fixed sequence of micro-batches: micro-step m of the run reads positions
[m*G, (m+1)*G) of a per-epoch permutation (G = batch size x world size), rank r taking its own
slice. Each sample gets a seed derived from (seed, epoch, position), and the dataset's random
draws (clip position, crop, flip) are made under that seed. So the data position is just the
micro-step, a resumed run continues exactly, and what a sample looks like does not depend on the
number of ranks or workers.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.seeding import derive_seed

SampleKey = Tuple[int, int, int]  # (dataset index, sample seed, micro-step)


class ResumableBatchSampler(Sampler[List[SampleKey]]):
    """Infinite stream of this rank's micro-batches from `start_step` on (drop-last epochs).

    Args:
        num_samples: dataset length. batch_size: per-rank batch. rank / world_size: this process's shard.
        seed: run seed (epoch permutations and sample seeds). start_step: first micro-step to yield.
        shuffle: permute each epoch (False reads in order, for evaluation).
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0, shuffle: bool = True):
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise ValueError(f"dataset of {num_samples} samples is smaller than one global batch "
                             f"({batch_size} x {world_size} ranks)")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.seed, self.start_step, self.shuffle = rank, seed, start_step, shuffle
        self.steps_per_epoch = num_samples // self.global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[List[SampleKey]]:
        step = self.start_step
        epoch, order = -1, None
        while True:
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self._order(epoch)
            first = (step % self.steps_per_epoch) * self.global_batch + self.rank * self.batch_size
            positions = range(first, first + self.batch_size)
            yield [(int(order[p]), derive_seed(self.seed, epoch, p), step) for p in positions]
            step += 1

    def __len__(self) -> int:  # one epoch; the stream itself is infinite
        return self.steps_per_epoch


class SeededDataset(Dataset):
    """Calls `dataset[index]` with torch, numpy and python RNGs seeded from the sample key, restoring
    the caller's RNG state afterwards, and tags the sample with its seed and micro-step."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> dict:
        index, seed, step = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            sample = dict(self.dataset[index])
        random.setstate(py_state)
        np.random.set_state(np_state)
        sample["seed"], sample["step"] = seed, step
        return sample


def build_loader(dataset: Dataset, collate_fn: Callable, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start_step: int = 0, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = True, shuffle: bool = True) -> DataLoader:
    """An infinite DataLoader over this rank's shard, starting at micro-step `start_step`."""
    sampler = ResumableBatchSampler(len(dataset), batch_size, rank, world_size, seed, start_step, shuffle)
    return DataLoader(
        SeededDataset(dataset), batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
    )
