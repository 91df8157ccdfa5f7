"""I-JEPA multi-block masks on a 2-D patch grid, as int64 index tensors built in the DataLoader workers.

Per image: `num_pred_masks` target blocks (area a `pred_mask_scale` fraction of the grid, h/w ratio in
`aspect_ratio`) and `num_enc_masks` context blocks (area in `enc_mask_scale`, square), each context block
with every target patch removed (`allow_overlap: false`), as in I-JEPA (Assran et al. 2023, Sec. 3) and its
reference collator (facebookresearch/ijepa `src/masks/multiblock.py`). What matches the reference:
  - the two block sizes (target and context) are drawn once per batch, the positions per image;
  - a block is kept only if it has more than `min_keep` patches; when a context block keeps too few after
    the target patches are removed, 20 redraws later the last target is no longer excluded, and so on;
  - all target blocks of a batch are cut to one length (the shortest), and so are the context blocks.
Where it departs (each a bias of the reference):
  - scale and aspect ratio are two independent draws (the reference uses one uniform number for both, so
    large targets were always the tallest);
  - a block may touch the last row / column (the reference's `randint(0, H - h)` never places it there);
  - lengths are equalised by keeping a random subset of each mask's patches (sorted), not the first ones,
    which biased context and targets towards the top rows (the same choice as data/collate.py).
Seeding: the sizes come from (seed, step) and each image's blocks from that sample's own seed, so masks
are identical after a resume and independent of the number of workers or ranks.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from data.collate import _generator, _random_subset, collate_samples
from data.seeding import derive_seed

logger = logging.getLogger(__name__)

# Redraws of a context block before the next target region is let back in (the reference's timeout).
TRIES_PER_RELAXATION = 20


@dataclass
class IJEPAMaskConfig:
    """The reference I-JEPA `mask:` section (same key names).

    Args:
        patch_size: pixels per patch side (the grid is crop_size / patch_size square).
        enc_mask_scale / pred_mask_scale: area range of a context / target block, as a fraction of the grid.
        aspect_ratio: h/w range of a target block (context blocks are square).
        num_enc_masks / num_pred_masks: context and target blocks per image.
        min_keep: a block must keep more than this many patches.
        allow_overlap: let context blocks keep target patches (the published recipe: false).
    """

    patch_size: int = 16
    enc_mask_scale: List[float] = field(default_factory=lambda: [0.85, 1.0])
    pred_mask_scale: List[float] = field(default_factory=lambda: [0.15, 0.2])
    aspect_ratio: List[float] = field(default_factory=lambda: [0.75, 1.5])
    num_enc_masks: int = 1
    num_pred_masks: int = 4
    min_keep: int = 10
    allow_overlap: bool = False


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + torch.rand(1, generator=g).item() * (hi - lo)


def _randint(g: torch.Generator, high: int) -> int:
    return int(torch.randint(0, high, (1,), generator=g).item())


class MultiBlock2D:
    """Samples one image's context and target blocks on an `h x w` grid (see the module docstring).

    Args:
        cfg: mask geometry. grid: (h, w) patch grid.
    """

    def __init__(self, cfg: IJEPAMaskConfig, grid: Tuple[int, int]):
        for name in ("enc_mask_scale", "pred_mask_scale", "aspect_ratio"):
            lo, hi = getattr(cfg, name)
            if not 0 < lo <= hi:
                raise ValueError(f"mask.{name} must be a range 0 < lo <= hi, got {[lo, hi]}")
        if cfg.num_enc_masks < 1 or cfg.num_pred_masks < 1:
            raise ValueError(f"mask.num_enc_masks and num_pred_masks must be >= 1, got {cfg.num_enc_masks}, "
                             f"{cfg.num_pred_masks}")
        self.cfg = cfg
        self.h, self.w = grid
        # Fail at start-up, not in a loader worker mid-run, when some target size could never be kept.
        lo, hi = cfg.aspect_ratio
        smallest = min(self._size(cfg.pred_mask_scale[0], lo + (hi - lo) * i / 32) for i in range(33))
        if smallest[0] * smallest[1] <= cfg.min_keep:
            raise ValueError(f"a {smallest[0]}x{smallest[1]} target block (mask.pred_mask_scale {cfg.pred_mask_scale} "
                             f"on a {self.h}x{self.w} grid) cannot keep more than mask.min_keep={cfg.min_keep} "
                             "patches: lower min_keep or raise pred_mask_scale")

    def block_size(self, g: torch.Generator, scale: Sequence[float], aspect: Sequence[float]) -> Tuple[int, int]:
        s = _uniform(g, *scale)
        return self._size(s, _uniform(g, *aspect))

    def _size(self, scale: float, ar: float) -> Tuple[int, int]:
        area = self.h * self.w * scale
        bh = min(self.h, max(1, int(round(math.sqrt(area * ar)))))
        bw = min(self.w, max(1, int(round(math.sqrt(area / ar)))))
        return bh, bw

    def sample_sizes(self, g: torch.Generator) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """(target block size, context block size), shared by a batch."""
        c = self.cfg
        pred = self.block_size(g, c.pred_mask_scale, c.aspect_ratio)
        enc = self.block_size(g, c.enc_mask_scale, (1.0, 1.0))
        return pred, enc

    def _place(self, size: Tuple[int, int], g: torch.Generator) -> torch.Tensor:
        bh, bw = size
        top, left = _randint(g, self.h - bh + 1), _randint(g, self.w - bw + 1)
        block = torch.zeros(self.h, self.w, dtype=torch.bool)
        block[top:top + bh, left:left + bw] = True
        return block.flatten()  # [h*w]

    def __call__(self, sizes, g: torch.Generator) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """([context index tensors] x num_enc_masks, [target index tensors] x num_pred_masks) of one image."""
        pred_size, enc_size = sizes
        targets = [self._place(pred_size, g) for _ in range(self.cfg.num_pred_masks)]
        contexts = []
        for _ in range(self.cfg.num_enc_masks):
            excluded = [] if self.cfg.allow_overlap else list(targets)
            tries = 0
            while True:
                keep = self._place(enc_size, g)
                for t in excluded:
                    keep &= ~t
                if int(keep.sum()) > self.cfg.min_keep:
                    break
                tries += 1
                if tries % TRIES_PER_RELAXATION == 0:
                    if not excluded:
                        raise RuntimeError(f"no context block of {enc_size} keeps more than mask.min_keep="
                                           f"{self.cfg.min_keep} patches on a {self.h}x{self.w} grid")
                    excluded.pop()  # let the last target region back into the context
                    logger.warning("context block kept <= min_keep=%d patches %d times; allowing overlap with "
                                   "%d of %d targets", self.cfg.min_keep, tries,
                                   len(targets) - len(excluded), len(targets))
            contexts.append(keep.nonzero().squeeze(1))
        return contexts, [t.nonzero().squeeze(1) for t in targets]


class IJEPAMaskCollator:
    """Collates image samples and adds `masks_ctx` (a list of `num_enc_masks` int64 `[B, K_ctx]`) and
    `masks_tgt` (a list of `num_pred_masks` int64 `[B, K_tgt]`, one `K_tgt` for all of them).

    Args:
        cfg: mask geometry. grid: (h, w) patch grid. seed: run seed.
    """

    def __init__(self, cfg: IJEPAMaskConfig, grid: Tuple[int, int], seed: int):
        self.generator = MultiBlock2D(cfg, grid)
        self.cfg, self.seed = cfg, seed

    def __call__(self, samples: Sequence[dict]) -> Dict[str, object]:
        batch = collate_samples(samples)
        step = int(samples[0]["step"])
        sizes = self.generator.sample_sizes(_generator(self.seed, step))
        gens = [_generator(derive_seed(s["seed"], 0)) for s in samples]
        drawn = [self.generator(sizes, g) for g in gens]  # per image: (contexts, targets)
        k_tgt = min(len(t) for _, ts in drawn for t in ts)
        batch["masks_tgt"] = [torch.stack([_random_subset(ts[j], k_tgt, g) for (_, ts), g in zip(drawn, gens)])
                              for j in range(self.cfg.num_pred_masks)]
        batch["masks_ctx"] = []
        for j in range(self.cfg.num_enc_masks):
            k_ctx = min(len(cs[j]) for cs, _ in drawn)
            batch["masks_ctx"].append(torch.stack([_random_subset(cs[j], k_ctx, g) for (cs, _), g in zip(drawn, gens)]))
        batch["step"] = step
        return batch


def mask_summary(batch: dict, num_tokens: int) -> List[str]:
    """One line per mask: its token count and share of the grid (for --dry-run)."""
    lines = [f"context {j}: {m.shape[1]} tokens ({m.shape[1] / num_tokens:.1%})" for j, m in enumerate(batch["masks_ctx"])]
    lines += [f"target {j}: {m.shape[1]} tokens ({m.shape[1] / num_tokens:.1%})" for j, m in enumerate(batch["masks_tgt"])]
    return lines
