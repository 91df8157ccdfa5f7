"""One stage of the world model's training (a level, the goal distance, a refine stage): its optimisation
settings, its learning-rate schedule and the loop every stage shares."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from vjepa.engine.runtime import MetricLog
from vjepa.engine.schedules import lr_at, set_lr_wd

logger = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """Optimisation of one stage (a level, the goal distance, a refine stage). window: frames per training
    window. steps / batch_size / lr / warmup (steps) / weight_decay / clip_grad: AdamW with linear warmup then
    cosine to lr / 100."""

    window: int = 6
    steps: int = 1500
    batch_size: int = 64  # per process
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    clip_grad: Optional[float] = 1.0


def set_lr(optimizer, st: StageConfig, step: int) -> float:
    """Linear warmup from lr / 10, then cosine to lr / 100; weight decay stays `st.weight_decay`."""
    lr = lr_at(step, warmup_steps=st.warmup, total_steps=st.steps, start_lr=st.lr / 10, lr=st.lr, final_lr=st.lr / 100)
    set_lr_wd(optimizer, lr, st.weight_decay)
    return lr


def stage_loop(k, st: StageConfig, steps, stop, opt, cfg, accelerator, folder: Path, desc: str,
               step_fn, metrics_fn, save_fn) -> None:
    """The loop every stage shares (a level, the goal distance, a refine stage): learning-rate schedule,
    `step_fn()` (one optimizer step -> its output), the step count `steps[k]`, a progress bar,
    `metrics_fn(out, lr, end)` -> (metrics, progress-bar postfix) logged to `folder` every `log_every` steps
    and at the end, and `save_fn()` every `save_every_steps`; until the stage ends or the run's `max_steps`
    is reached."""
    main, lg = accelerator.is_main_process, cfg.logging
    folder.mkdir(exist_ok=True)
    log = MetricLog(folder, enabled=main, tensorboard=lg.tensorboard)
    log.truncate_after(steps[k])
    pbar = tqdm(total=st.steps, initial=steps[k], desc=desc, disable=not (main and lg.progress_bar))
    first, t0 = steps[k], time.perf_counter()
    while steps[k] < st.steps and not (stop and sum(steps) >= stop):
        lr = set_lr(opt, st, steps[k])
        out = step_fn()
        steps[k] += 1
        pbar.update(1)
        end = steps[k] == st.steps
        if steps[k] % lg.log_every == 0 or end:
            metrics, postfix = metrics_fn(out, lr, end)
            log.log(steps[k], metrics)
            pbar.set_postfix(**postfix)
        if steps[k] % cfg.meta.save_every_steps == 0:
            save_fn()
    pbar.close()
    log.close()
    if steps[k] > first:  # the stage's own time, for the pipeline's timing (the README's table)
        dt = time.perf_counter() - t0
        logger.info("%s: %d steps in %.0f s (%.1f steps/s)", desc, steps[k] - first, dt, (steps[k] - first) / dt)
