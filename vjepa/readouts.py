"""Extra frozen readouts on cached features, reported beside the main probe: what a representation is
worth to a low-capacity reader and with few labels.

- linear: a linear probe on mean-pooled tokens (`vjepa.probe.LinearClassifier`), over its own LR grid;
- low-shot: the main probe type trained on `shots` labelled clips per class, for the same number of
  optimizer steps as the full probe (so a small set is not also an under-trained one).

Both train on the features `vjepa.probe_train` cached, with its probe grid and schedules.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Dict, Tuple

import torch

from vjepa.probe import build_probe
from vjepa.probe_config import ProbeConfig
from vjepa.probe_train import ProbeGrid, evaluate, grid_points, train_epoch
from vjepa.engine.runtime import MetricLog

logger = logging.getLogger(__name__)

Cached = Tuple[torch.Tensor, torch.Tensor]  # (inputs [M, P, N, D], labels [M])


def few_shot_subset(cached: Cached, shots: int, num_classes: int) -> Cached:
    """The first `shots` samples of every class, in the cached order (deterministic)."""
    x, y = cached
    idx = []
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()[:shots]
        if len(members) < shots:
            raise ValueError(f"low-shot probe: class {c} has {len(members)} training samples, fewer than {shots}")
        idx.append(members)
    idx = torch.cat(idx).sort().values
    return x[idx], y[idx]


def fit_best_top1(train: Cached, val: Cached, cfg: ProbeConfig, num_classes: int, embed_dim: int, num_heads: int,
                  accelerator) -> float:
    """Train `cfg`'s probe grid on cached train features; the best probe's final val top-1 (%)."""
    o = cfg.optimization
    steps_per_epoch = len(train[1]) // o.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train[1])} training samples are fewer than one batch ({o.batch_size})")
    points = grid_points(o)
    torch.manual_seed(cfg.meta.seed)
    probes = [build_probe(cfg.probe.type, embed_dim, num_heads, num_classes, cfg.probe.num_probe_blocks,
                          cfg.probe.use_proj).to(accelerator.device) for _ in points]
    grid = ProbeGrid(probes, points, o, steps_per_epoch, accelerator)
    off = MetricLog(Path("."), enabled=False)  # nothing is written
    for epoch in range(o.num_epochs):
        train_epoch(grid, None, None, train, cfg, epoch, steps_per_epoch, accelerator.device, None, off)
    return max(s["top1"] for s in evaluate(grid, None, None, val, cfg, accelerator.device, None))


def extra_readouts(cached: Tuple[Cached, Cached], cfg: ProbeConfig, num_classes: int, embed_dim: int,
                   num_heads: int, accelerator) -> Dict[str, float]:
    """{"linear_top1", "low_shot_top1"} as `cfg.probe` asks (see the module docstring)."""
    train, val = cached
    out = {}
    if cfg.probe.linear_readout:
        lin = copy.deepcopy(cfg)
        lin.probe.type = "linear"
        lin.optimization.lr_grid = list(cfg.probe.linear_lr_grid)
        lin.optimization.lr = lin.optimization.start_lr = max(lin.optimization.lr_grid)
        out["linear_top1"] = fit_best_top1(train, val, lin, num_classes, embed_dim, num_heads, accelerator)
        logger.info("linear readout on pooled tokens: val top-1 %.2f%%", out["linear_top1"])
    if cfg.probe.low_shot > 0:
        few = copy.deepcopy(cfg)
        sub = few_shot_subset(train, cfg.probe.low_shot, num_classes)
        bs = few.optimization.batch_size = min(cfg.optimization.batch_size, len(sub[1]))
        full_steps = cfg.optimization.num_epochs * (len(train[1]) // cfg.optimization.batch_size)
        few.optimization.num_epochs = max(1, round(full_steps / (len(sub[1]) // bs)))
        out["low_shot_top1"] = fit_best_top1(sub, val, few, num_classes, embed_dim, num_heads, accelerator)
        logger.info("%d-shot %s probe: val top-1 %.2f%%", cfg.probe.low_shot, cfg.probe.type, out["low_shot_top1"])
    return out
