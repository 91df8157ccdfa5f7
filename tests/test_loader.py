import random

import numpy as np
import torch

from data.collate import collate_samples
from vjepa.engine.sampling import ResumableBatchSampler, SeededDataset, build_loader


class RandomItems(torch.utils.data.Dataset):
    """Each item draws from all three global RNGs, like an augmenting dataset."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"clip": torch.full((1,), float(i)) + torch.rand(1) + random.random() + float(np.random.rand()),
                "label": i, "skipped": 0}


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_rank_shards_are_disjoint_and_cover_the_global_batch():
    one = take(ResumableBatchSampler(20, 4, rank=0, world_size=1, seed=1), 10)
    r0 = take(ResumableBatchSampler(20, 2, rank=0, world_size=2, seed=1), 10)
    r1 = take(ResumableBatchSampler(20, 2, rank=1, world_size=2, seed=1), 10)
    for full, a, b in zip(one, r0, r1):
        assert a + b == full  # same samples and the same per-sample seeds, whatever the world size
        assert not {k[0] for k in a} & {k[0] for k in b}
    # each epoch (5 steps of 4) visits every sample once, in a new order
    epoch0 = [k[0] for batch in one[:5] for k in batch]
    epoch1 = [k[0] for batch in one[5:] for k in batch]
    assert sorted(epoch0) == list(range(20)) and sorted(epoch1) == list(range(20)) and epoch0 != epoch1


def test_resumed_sampler_continues_the_same_stream():
    full = take(ResumableBatchSampler(20, 3, seed=5), 12)
    resumed = take(ResumableBatchSampler(20, 3, seed=5, start_step=7), 5)
    assert resumed == full[7:]


def test_seeded_dataset_is_reproducible_and_leaves_caller_rng_alone():
    ds = SeededDataset(RandomItems())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(3, 123, 0)]
    assert torch.equal(torch.get_rng_state(), before)
    b = ds[(3, 123, 0)]
    c = ds[(3, 124, 0)]
    assert torch.equal(a["clip"], b["clip"]) and not torch.equal(a["clip"], c["clip"])
    assert a["seed"] == 123 and a["step"] == 0


def test_loader_with_workers_matches_loader_without():
    def batches(workers, start):
        loader = build_loader(RandomItems(), collate_samples, 4, seed=2, start_step=start, num_workers=workers)
        it = iter(loader)
        return [next(it)["clip"] for _ in range(3)]

    for x, y in zip(batches(0, 2), batches(2, 2)):
        assert torch.equal(x, y)


def test_dataset_smaller_than_a_global_batch_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="smaller than one global batch"):
        ResumableBatchSampler(3, 2, rank=0, world_size=2)
