"""Schedules as pure functions of the global (optimizer) step, so a resumed run needs no replay.

Shapes follow the V-JEPA reference: linear LR warmup then cosine to `final_lr`; weight decay cosine
from `weight_decay` to `final_weight_decay`; EMA momentum linear from ema[0] to ema[1]. The cosine and
EMA horizons are `ipe_scale` x the run length, so schedules stop short of their end values.
`optimization.lr_schedule: wsd` replaces the LR's cosine by warmup-stable-decay (`wsd_lr_at`).
"""
from __future__ import annotations

import math

from vjepa.engine.config import ConfigError


def lr_at(step: int, *, warmup_steps: int, total_steps: int, start_lr: float, lr: float, final_lr: float) -> float:
    if step < warmup_steps:
        return start_lr + (lr - start_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_lr_at(step: int, *, warmup_steps: int, total_steps: int, decay_steps: int, start_lr: float, lr: float,
              final_lr: float) -> float:
    """Warmup-stable-decay: linear warmup, `lr` held, then linear decay to `final_lr` over the last
    `decay_steps` of `total_steps` (Hagele et al. 2024, arXiv 2405.18392). Runs of different lengths share
    their trajectory up to the decay, so a longer run differs from a shorter one only by more steps at `lr`."""
    if step < warmup_steps:
        return start_lr + (lr - start_lr) * step / warmup_steps
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    return lr + (final_lr - lr) * progress


def run_lr_at(step: int, opt, total_steps: int) -> float:
    """This step's LR under an `optimization:` section (vjepa/engine/sections.py:OptimizationConfig) for a
    run of `total_steps`: the cosine spans ipe_scale x the run; the wsd decay ends with the run."""
    warmup = int(opt.warmup * opt.ipe)
    if opt.lr_schedule == "wsd":
        decay = max(1, round(opt.decay_fraction * total_steps))
        return wsd_lr_at(step, warmup_steps=warmup, total_steps=total_steps, decay_steps=decay,
                         start_lr=opt.start_lr, lr=opt.lr, final_lr=opt.final_lr)
    return lr_at(step, warmup_steps=warmup, total_steps=int(opt.ipe_scale * total_steps), start_lr=opt.start_lr,
                 lr=opt.lr, final_lr=opt.final_lr)


def check_lr_schedule(opt) -> None:
    if opt.lr_schedule not in ("cosine", "wsd"):
        raise ConfigError(f"optimization.lr_schedule must be cosine or wsd, got {opt.lr_schedule!r}")
    if not 0.0 < opt.decay_fraction <= 1.0:
        raise ConfigError(f"optimization.decay_fraction must lie in (0, 1], got {opt.decay_fraction}")


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
