"""Probing on several processes: each rank does 1/N of the work, the results are those of one process.

Under `accelerate launch` (or torchrun) every rank used to train the whole LR x WD grid on all the data.
Now, with N ranks:
- encoding for the feature cache: rank r encodes the r-th contiguous 1/N of a split; the features are
  gathered so that every rank holds the whole cache (and k-NN sees it all);
- training: the global batch (`optimization.batch_size`, the same batches as one process) is split into
  N equal parts, one per rank; the probes' gradients are averaged across ranks before clipping and the
  optimizer step, which is the gradient of the global batch's mean loss (as DDP would, for a grid of
  small modules that share no parameters);
- evaluation: each rank predicts a share of every batch; top-1/top-5 counts are summed across ranks.
One process is the case N = 1, where nothing is communicated.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from vjepa.errors import UnsupportedOption


class Ranks:
    """This process's rank and the number of processes, with the few collectives probing needs.

    Args:
        rank: this process's index. world: number of processes.
        device: where collectives run (NCCL needs CUDA tensors; gloo takes CPU ones). Results come back on
            the CPU, except gradients, which stay where they are.
    """

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | str = "cpu"):
        self.rank, self.world, self.device = rank, world, torch.device(device)

    @classmethod
    def of(cls, accelerator) -> "Ranks":
        if accelerator.num_processes > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"{accelerator.num_processes} processes but no torch.distributed process group")
        return cls(accelerator.process_index, accelerator.num_processes, accelerator.device)

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise UnsupportedOption(f"optimization.batch_size={batch_size} does not split evenly over {self.world} "
                                    f"processes; use a multiple of {self.world}")

    def share(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch of indices (strided: ranks differ by at most one row)."""
        return idx[self.rank:: self.world]

    def chunk(self, n: int) -> range:
        """This rank's contiguous share of `n` items (the first ranks get the extra ones)."""
        size = math.ceil(n / self.world)
        return range(min(n, self.rank * size), min(n, (self.rank + 1) * size))  # _chunk_len(n, rank, world) long

    def average_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Every gradient <- its mean over ranks, in one all-reduce."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for with one)."""
        if self.world > 1:
            dist.barrier()

    def mean(self, values: List[float]) -> List[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.to(self.device, copy=True)
            dist.all_reduce(values)
        return values.cpu()

    def gather_chunks(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Each rank's `chunk(n)` rows `[n_r, ...]` -> all `n` rows, in order, on every rank."""
        if self.world == 1:
            return x
        size = math.ceil(n / self.world)
        padded = torch.zeros(size, *x.shape[1:], dtype=x.dtype, device=self.device)
        padded[: len(x)] = x.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: _chunk_len(n, r, self.world)].cpu() for r, p in enumerate(parts)])


def _chunk_len(n: int, rank: int, world: int) -> int:
    size = math.ceil(n / world)
    return max(0, min(n, (rank + 1) * size) - min(n, rank * size))


class ShardedBatches(Sampler):
    """Index batches for a DataLoader's `batch_sampler`: the global batches of one process (a seeded
    permutation per epoch when shuffling, dropping the last partial batch; in order otherwise), each
    cut to this rank's share. Ranks whose share of the last evaluation batch is empty skip it.

    Args:
        n: dataset size. batch_size: global batch. shuffle: permute and drop the last partial batch.
        seed / epoch: the permutation's seed. ranks: this process's share.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, ranks: Ranks):
        self.n, self.batch_size, self.shuffle, self.ranks = n, batch_size, shuffle, ranks
        self.seed, self.epoch = seed, epoch

    def global_batches(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 100_003 + self.epoch)  # a function of (seed, epoch): resumable
            order = torch.randperm(self.n, generator=g)
            end = self.n - self.n % self.batch_size
        else:
            order, end = torch.arange(self.n), self.n
        for i in range(0, end, self.batch_size):
            yield order[i: i + self.batch_size]

    def __iter__(self) -> Iterator[List[int]]:
        for idx in self.global_batches():
            mine = self.ranks.share(idx)
            if len(mine):
                yield mine.tolist()

    def __len__(self) -> int:
        return sum(1 for _ in self.global_batches())

