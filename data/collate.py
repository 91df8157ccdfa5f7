"""Batch collation with mask generation, run inside DataLoader workers.

Every random draw is seeded from values the sampler attaches to each sample (see `vjepa.engine.sampling`):
the block size of a mask config from (seed, step, config) and each clip's block positions and
truncation from that sample's own seed. Masks are therefore the same after a resume and do not
depend on the number of workers or ranks.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

from data.masks import MaskConfig, build_mask_generator
from data.seeding import derive_seed


def _generator(*values: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*values))
    return g


def collate_samples(samples: Sequence[dict]) -> Dict[str, torch.Tensor]:
    """Stack sample dicts; a sample holding a list of clips contributes one batch row per clip."""
    clips, labels = [], []
    for s in samples:
        cs = s["clip"] if isinstance(s["clip"], (list, tuple)) else [s["clip"]]
        clips.extend(cs)
        labels.extend([s["label"]] * len(cs))
    return {
        "clip": torch.stack(clips),  # [B, C, T, H, W]
        "label": torch.as_tensor(labels, dtype=torch.long),  # [B]
        "skipped": torch.as_tensor(sum(int(s.get("skipped", 0)) for s in samples)),
        "padded": torch.as_tensor(sum(int(s.get("padded", 0)) for s in samples)),  # clips of too-short videos
    }


class MaskCollator:
    """Collates samples and adds, per mask config i, `masks_ctx[i]` and `masks_tgt[i]`: int64 `[B, K]`;
    when any config pads (below), also `valid_ctx[i]` / `valid_tgt[i]`: bool `[B, K]`, True = a real index.

    By default lengths inside a batch are equalised by keeping a *random* subset of each clip's indices
    (kept in sorted order; the reference keeps the lowest indices, which biases targets towards early
    frames and top rows). Truncating to the batch minimum drops many tokens when block overlaps vary (29%
    of context and target tokens on average on the quickstart's 8x8x8 grid, up to 85% for some clips).
    A config with `pad_to_longest` keeps every index instead: shorter sets are padded by repeating their
    first index, and the `valid_*` masks say which entries are real.

    Args:
        cfgs: mask configs. grid: (t, h, w) token grid. seed: run seed.
    """

    def __init__(self, cfgs: Sequence[MaskConfig], grid: Tuple[int, int, int], seed: int):
        self.generators = [build_mask_generator(c, grid) for c in cfgs]
        self.cfgs = list(cfgs)
        self.seed = seed

    def __call__(self, samples: Sequence[dict]) -> Dict[str, object]:
        batch = collate_samples(samples)
        step = int(samples[0]["step"])
        sample_seeds = []
        for s in samples:
            n = len(s["clip"]) if isinstance(s["clip"], (list, tuple)) else 1
            sample_seeds.extend(derive_seed(s["seed"], j) for j in range(n))
        padding = any(c.pad_to_longest for c in self.cfgs)  # no padding: no masks for attention to apply
        for key in ("masks_ctx", "masks_tgt") + (("valid_ctx", "valid_tgt") if padding else ()):
            batch[key] = []
        for i, (gen, cfg) in enumerate(zip(self.generators, self.cfgs)):
            size = gen.sample_block_size(_generator(self.seed, step, i))
            gens = [_generator(s, i) for s in sample_seeds]
            pairs = [gen(size, g) for g in gens]
            if cfg.pad_to_longest:
                ctx = [c if cfg.max_keep is None else _random_subset(c, min(len(c), cfg.max_keep), g)
                       for (c, _), g in zip(pairs, gens)]
                for key, sets in (("ctx", ctx), ("tgt", [t for _, t in pairs])):
                    idx, valid = _pad(sets)
                    batch[f"masks_{key}"].append(idx)
                    batch[f"valid_{key}"].append(valid)
                continue
            k_ctx = min(len(c) for c, _ in pairs)
            if cfg.max_keep is not None:
                k_ctx = min(k_ctx, cfg.max_keep)
            k_tgt = min(len(t) for _, t in pairs)
            batch["masks_ctx"].append(torch.stack([_random_subset(c, k_ctx, g) for (c, _), g in zip(pairs, gens)]))
            batch["masks_tgt"].append(torch.stack([_random_subset(t, k_tgt, g) for (_, t), g in zip(pairs, gens)]))
            if padding:  # beside padded configs, this one's entries are all real
                batch["valid_ctx"].append(torch.ones_like(batch["masks_ctx"][-1], dtype=torch.bool))
                batch["valid_tgt"].append(torch.ones_like(batch["masks_tgt"][-1], dtype=torch.bool))
        batch["step"] = step
        return batch


def _random_subset(idx: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    if len(idx) == k:
        return idx
    keep = torch.randperm(len(idx), generator=g)[:k]
    return idx[keep.sort().values]


def _pad(sets: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index sets of different lengths -> (indices `[B, K_max]` padded with each set's first index,
    validity `[B, K_max]`)."""
    k = max(len(x) for x in sets)
    idx = torch.stack([torch.cat([x, x[:1].expand(k - len(x))]) for x in sets])
    valid = torch.stack([torch.arange(k) < len(x) for x in sets])
    return idx, valid
