"""Config sections shared by the training jobs. A section holds only keys that every job using it
honours with the same meaning; a job-specific key lives in that job's subclass of the section (e.g.
pretraining's `meta.eval_freq`), so a key a job does not honour is an unknown key there."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class MetaConfig:
    """Run identity and resume; honoured by pretraining, H-JEPA and the world model.

    Args:
        seed: init, data order and masks. dtype: autocast precision on GPU (CPU runs fp32).
        load_checkpoint: resume from the run folder's latest checkpoint. read_checkpoint: resume from this file.
        max_steps: stop (with a checkpoint) after this many optimizer steps of the whole run, schedules
            unchanged, e.g. to fit a cluster's time limit and resume later.
    """

    seed: int = 234
    dtype: str = "bfloat16"
    load_checkpoint: bool = False
    read_checkpoint: Optional[str] = None
    max_steps: Optional[int] = None


@dataclass
class EpochMetaConfig(MetaConfig):
    """`meta` of the jobs whose schedule counts epochs of `optimization.ipe` steps (pretraining, H-JEPA).
    save_every_freq: checkpoint every this many epochs (and at the end)."""

    save_every_freq: int = 25


@dataclass
class LoggingConfig:
    """folder: run folder (None = runs/<task>-<time>). write_tag: checkpoint file prefix.
    log_every: metrics every this many steps (>= 1). rankme_every: RankMe every this many steps (0: never).
    collapse_std_floor: warn when the monitored features' std falls below it."""

    folder: Optional[str] = None
    write_tag: str = "jepa"
    log_every: int = 10
    rankme_every: int = 50
    collapse_std_floor: float = 0.05
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class OptimizationConfig:
    """Reference `optimization:` section (pretraining, H-JEPA). An "epoch" is `ipe` optimizer steps.

    Args:
        ipe / epochs: the run lasts epochs x ipe optimizer steps. warmup: LR warmup, in epochs.
        ipe_scale: schedules (cosine LR/WD, EMA) span ipe_scale x the run, so they end short of final values.
        lr_schedule: cosine (the reference: warmup, then cosine to final_lr over ipe_scale x the run) or wsd
            (warmup, lr held, then linear decay to final_lr over the run's last decay_fraction; weight decay
            and EMA keep their schedules). See vjepa/engine/schedules.py.
        clip_grad: max grad norm (None = no clipping).
        grad_accum_steps: micro-batches per optimizer step.
    """

    ipe: int = 300
    ipe_scale: float = 1.25
    epochs: int = 300
    warmup: float = 40
    start_lr: float = 2e-4
    lr: float = 6.25e-4
    final_lr: float = 1e-6
    lr_schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    clip_grad: Optional[float] = 10.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_accum_steps: int = 1


def check_logging(cfg: LoggingConfig) -> None:
    if cfg.log_every < 1:
        raise ValueError(f"logging.log_every must be >= 1, got {cfg.log_every}")
    if cfg.rankme_every < 0:
        raise ValueError(f"logging.rankme_every must be >= 0 (0 = never), got {cfg.rankme_every}")


def due(step: int, every: int, last: bool = False) -> bool:
    """True on every `every`-th step (never when `every` is 0) and on the last step."""
    return last or (every > 0 and step % every == 0)
