"""Spatiotemporal masks for V-JEPA, as index tensors into a (t, h, w) token grid flattened w-fastest.

A mask generator returns, for one clip, the context indices (visible to the encoder) and the target
indices (to be predicted); the two are disjoint and cover the grid. Randomness comes only from the
`torch.Generator`s passed in, so the collator controls reproducibility.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch


@dataclass
class MaskConfig:
    """One mask config (an entry of the reference `mask:` list).

    Args:
        type: `multiblock` (union of 3D blocks is the target) or `tube` (random spatial positions,
            masked in every frame).
        num_blocks, spatial_scale, temporal_scale, aspect_ratio: multi-block geometry; block area is a
            `spatial_scale` fraction of the frame grid, its h/w ratio drawn uniformly in `aspect_ratio`.
        max_temporal_keep: context only sees this first fraction of time steps (1.0 = all).
        max_keep: cap on the number of context tokens (None = no cap).
        ratio: fraction of spatial positions masked, for `tube` masks (VideoMAE uses 0.9).
        pad_to_longest: keep every clip's whole context and target sets, padding the shorter ones (with
            validity masks that attention and the loss respect) instead of truncating all clips of a batch
            to the shortest set, as the reference does (see `data.collate.MaskCollator`).
    """

    type: str = "multiblock"
    aspect_ratio: List[float] = field(default_factory=lambda: [0.75, 1.5])
    num_blocks: int = 8
    spatial_scale: List[float] = field(default_factory=lambda: [0.15, 0.15])
    temporal_scale: List[float] = field(default_factory=lambda: [1.0, 1.0])
    max_temporal_keep: float = 1.0
    max_keep: Optional[int] = None
    ratio: float = 0.9
    pad_to_longest: bool = False


def short_range_mask() -> MaskConfig:
    return MaskConfig(num_blocks=8, spatial_scale=[0.15, 0.15])


def long_range_mask() -> MaskConfig:
    return MaskConfig(num_blocks=2, spatial_scale=[0.7, 0.7])


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + torch.rand(1, generator=g).item() * (hi - lo)


def _randint(g: torch.Generator, high: int) -> int:
    return int(torch.randint(0, high, (1,), generator=g).item())


class MultiBlockMask:
    """Multi-block 3D masking (V-JEPA): the target is the union of `num_blocks` blocks that share one
    size per batch; the context is everything else (within the first `max_temporal_keep` of time)."""

    def __init__(self, cfg: MaskConfig, grid: Tuple[int, int, int]):
        self.cfg = cfg
        self.t, self.h, self.w = grid
        self.max_context_t = max(1, int(self.t * cfg.max_temporal_keep))

    def sample_block_size(self, g: torch.Generator) -> Tuple[int, int, int]:
        c = self.cfg
        bt = max(1, int(self.t * _uniform(g, *c.temporal_scale)))
        area = int(self.h * self.w * _uniform(g, *c.spatial_scale))
        ar = _uniform(g, *c.aspect_ratio)
        bh = min(self.h, max(1, int(round(math.sqrt(area * ar)))))
        bw = min(self.w, max(1, int(round(math.sqrt(area / ar)))))
        return bt, bh, bw

    def __call__(self, size: Tuple[int, int, int], g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        bt, bh, bw = size
        for _ in range(100):  # a draw whose blocks cover every token has no context; redraw
            keep = torch.ones(self.t, self.h, self.w, dtype=torch.bool)
            for _ in range(self.cfg.num_blocks):
                t0, y0, x0 = _randint(g, self.t - bt + 1), _randint(g, self.h - bh + 1), _randint(g, self.w - bw + 1)
                keep[t0:t0 + bt, y0:y0 + bh, x0:x0 + bw] = False
            keep[self.max_context_t:] = False
            keep = keep.flatten()
            if keep.any():
                return keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
        raise RuntimeError(f"mask config {self.cfg} leaves no context on grid {(self.t, self.h, self.w)}")


class TubeMask:
    """Random tube masking: a `ratio` fraction of spatial positions is masked in every frame."""

    def __init__(self, cfg: MaskConfig, grid: Tuple[int, int, int]):
        if not 0.0 < cfg.ratio < 1.0:
            raise ValueError(f"tube mask ratio must be in (0, 1), got {cfg.ratio}")
        self.t, self.h, self.w = grid
        self.num_masked = int(round(cfg.ratio * self.h * self.w))
        if not 0 < self.num_masked < self.h * self.w:
            raise ValueError(f"tube ratio {cfg.ratio} masks nothing or everything on a {self.h}x{self.w} grid")

    def sample_block_size(self, g: torch.Generator) -> Tuple[int, int, int]:
        return (self.t, 1, 1)  # no per-batch size to share

    def __call__(self, size, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        keep2d = torch.ones(self.h * self.w, dtype=torch.bool)
        keep2d[torch.randperm(self.h * self.w, generator=g)[: self.num_masked]] = False
        keep = keep2d.repeat(self.t)  # same spatial pattern in every time step
        return keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)


def build_mask_generator(cfg: MaskConfig, grid: Tuple[int, int, int]):
    if cfg.type == "multiblock":
        return MultiBlockMask(cfg, grid)
    if cfg.type == "tube":
        return TubeMask(cfg, grid)
    raise ValueError(f"unknown mask type {cfg.type!r}; valid: 'multiblock', 'tube'")
