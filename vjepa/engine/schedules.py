"""Schedules as pure functions of the global (optimizer) step, so a resumed run needs no replay.

Shapes follow the V-JEPA reference: linear LR warmup then cosine to `final_lr`; weight decay cosine
from `weight_decay` to `final_weight_decay`; EMA momentum linear from ema[0] to ema[1]. The cosine and
EMA horizons are `ipe_scale` x the run length, so schedules stop short of their end values.
"""
from __future__ import annotations

import math


def lr_at(step: int, *, warmup_steps: int, total_steps: int, start_lr: float, lr: float, final_lr: float) -> float:
    if step < warmup_steps:
        return start_lr + (lr - start_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_at(step: int, *, total_steps: int, start: float, end: float) -> float:
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_at(step: int, *, total_steps: int, start: float, end: float) -> float:
    progress = min(1.0, step / max(1, total_steps))
    return start + (end - start) * progress


def set_lr_wd(optimizer, lr: float, wd: float) -> None:
    """Write this step's LR into every param group and its weight decay into the groups that take it
    (those without `wd_exclude`, see `vjepa.engine.optim.param_groups`). `optimizer`: an optimizer, or a
    list of its param groups (e.g. one probe's, when probes with their own LRs share an optimizer)."""
    for group in getattr(optimizer, "param_groups", optimizer):
        group["lr"] = lr
        if not group.get("wd_exclude", False):
            group["weight_decay"] = wd
