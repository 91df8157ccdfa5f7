"""V-JEPA pretraining: one loop for CPU, one GPU and many, read top to bottom in `train`.

Per step: targets = layer_norm(EMA target encoder(full clip)) at the target indices (no gradient);
the encoder sees only context tokens; the predictor fills in the targets; loss = mean |pred - tgt|^p / p
averaged over mask configs; AdamW step; EMA update of the target from the (unwrapped) encoder.

The loop has modes: a mode is a module that supplies `build_models`, `build_collator`,
`build_train_dataset`, `objective` and `describe` for its config (`pick_mode`). V-JEPA is this module;
I-JEPA (`task: ijepa`, images) is vjepa/ijepa.py. Schedules, checkpoints, resume and logging are shared.
"""
from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from data.build import build_dataset
from data.collate import MaskCollator
from data.config import DataAugConfig, DataConfig
from data.masks import MaskConfig, long_range_mask, short_range_mask
from data.transforms import normalize_clip
from vjepa.engine import checkpoint as ckpt
from vjepa.engine import fsdp
from vjepa.engine.checkpoint import save_checkpoint
from vjepa.engine.config import ConfigError, check_resume, to_dict, to_yaml
from vjepa.engine.monitor import feature_std, rankme
from vjepa.engine.optim import ema_update, optimizer_step, param_groups, scalars
from vjepa.engine.runtime import MetricLog, checkpoint_paths, make_accelerator, resolve_run_dir
from vjepa.engine.sampling import build_loader
from vjepa.engine.schedules import check_lr_schedule, cosine_at, linear_at, run_lr_at, set_lr_wd
from vjepa.engine.sections import EpochMetaConfig, LoggingConfig, OptimizationConfig, check_logging
from vjepa.engine.speed import build_adamw, compile_modules, keep_fused_flag, make_finite_watch
from vjepa.models import ModelConfig, build_encoder, build_predictor
from vjepa.objective import LossConfig, PooledDecoder, jepa_loss, local_head, pixel_head, view_projector

logger = logging.getLogger(__name__)


@dataclass
class PretrainOptimizationConfig(OptimizationConfig):
    """The shared `optimization:` section (vjepa/engine/sections.py) plus ema: the EMA momentum of the
    target encoder goes linearly from ema[0] to ema[1]. clip_grad applies to encoder and predictor each.
    fused_adamw: one fused AdamW kernel per step (null = on CUDA, off on CPU; vjepa/engine/speed.py).
    check_finite_every: read the loss's finiteness on the host every this many steps, on logging steps and
    before every save (1 = every step, stopping before the update; null = 1 on CPU, logging.log_every on
    GPU, so the GPU never waits for a step it has queued between logging steps)."""

    ema: List[float] = field(default_factory=lambda: [0.998, 1.0])
    fused_adamw: Optional[bool] = None
    check_finite_every: Optional[int] = None


@dataclass
class PretrainMetaConfig(EpochMetaConfig):
    """The shared `meta:` section plus eval_freq: the k-NN monitor's period in steps (`logging.knn_monitor`),
    compile: `torch.compile` encoder, predictor and target (null = on CUDA, off on CPU), and fsdp: shard
    encoder, predictor, EMA target and AdamW state over the ranks (FSDP2, vjepa/engine/fsdp.py) instead
    of replicating them (DDP); needs a distributed launch (torchrun), even for one process. Checkpoints
    hold full state dicts either way."""

    eval_freq: int = 100
    compile: Optional[bool] = None
    fsdp: bool = False


@dataclass
class PretrainLoggingConfig(LoggingConfig):
    """The shared `logging:` section plus the quality monitor. knn_monitor: before the first step and every
    `meta.eval_freq` steps, log the EMA target's k-NN top-1 and ridge linear-readout top-1 (`knn_top1`,
    `linear_top1`) on small held-out labelled sets (vjepa/knn_monitor.py): the `monitor_train` /
    `monitor_val` lists (`path label`) when given, else the built-in motion benchmark at the pretraining
    clip geometry. monitor_max_clips: videos used from each list."""

    knn_monitor: bool = False
    monitor_train: Optional[str] = None
    monitor_val: Optional[str] = None
    monitor_max_clips: int = 512


@dataclass
class PretrainConfig:
    task: str = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    data_aug: DataAugConfig = field(default_factory=DataAugConfig)
    mask: List[MaskConfig] = field(default_factory=lambda: [short_range_mask(), long_range_mask()])
    model: ModelConfig = field(default_factory=ModelConfig)
    optimization: PretrainOptimizationConfig = field(default_factory=PretrainOptimizationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    meta: PretrainMetaConfig = field(default_factory=PretrainMetaConfig)
    logging: PretrainLoggingConfig = field(default_factory=PretrainLoggingConfig)


def objective(encoder, predictor, target, batch: dict, loss_cfg: LossConfig):
    """The step's objective for `optimizer_step`: (loss, {"h": layer-normed target features `[B, N, D]`,
    and the optional loss terms' values})."""
    loss, h, extra = jepa_loss(encoder, predictor, target, batch, loss_cfg)
    return loss, {"h": h, **extra}


def build_models(cfg: PretrainConfig):
    d = cfg.data
    encoder = build_encoder(cfg.model, img_size=d.crop_size, num_frames=d.num_frames, patch_size=d.patch_size,
                            tubelet_size=d.tubelet_size)
    predictor = build_predictor(cfg.model, encoder, num_mask_tokens=len(cfg.mask))
    if cfg.loss.view_coeff > 0 and cfg.loss.view_proj_dim > 0:  # trained with the predictor, dropped after
        predictor.view_proj = view_projector(encoder.embed_dim, cfg.loss.view_proj_dim)
    if cfg.loss.local_coeff > 0:
        predictor.local_head = local_head(encoder.embed_dim)
    if cfg.loss.pooled_coeff > 0:
        predictor.pooled_decoder = PooledDecoder(encoder.embed_dim, math.prod(encoder.grid))
    if cfg.loss.pixel_coeff > 0:
        predictor.pixel_head = pixel_head(encoder.embed_dim, d.tubelet_size, d.patch_size)
    target = copy.deepcopy(encoder).requires_grad_(False).eval()
    return encoder, predictor, target


def build_collator(cfg: PretrainConfig, grid) -> MaskCollator:
    return MaskCollator(cfg.mask, grid, cfg.meta.seed)


def build_train_dataset(cfg: PretrainConfig, world_size: int):
    # Workers send uint8 clips (a quarter of the bytes), normalised by the loop on the device; random
    # erasing draws its noise in normalised space, so with it the workers keep sending float clips.
    return build_dataset(cfg.data, cfg.data_aug, train=True, uint8=cfg.data_aug.reprob == 0)


def pick_mode(cfg):
    """The module supplying the models, masks, data, objective and description of `cfg`'s mode."""
    if cfg.task == "ijepa":
        from vjepa import ijepa

        return ijepa
    return sys.modules[__name__]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def describe(cfg: PretrainConfig, encoder, predictor, collator: MaskCollator) -> str:
    """Resolved config, parameter counts and the mask statistics of one (dummy) batch."""
    n = encoder.grid[0] * encoder.grid[1] * encoder.grid[2]
    lines = [to_yaml(cfg), f"encoder {cfg.model.model_name}: {count_params(encoder) / 1e6:.1f}M trainable params, "
             f"token grid {encoder.grid} = {n} tokens",
             f"predictor: {count_params(predictor) / 1e6:.1f}M trainable params"]
    # Masks need no pixels: collate placeholder clips with real per-sample seeds.
    batch = collator([{"clip": torch.zeros(3, 1, 1, 1), "label": 0, "seed": i, "step": 0}
                      for i in range(cfg.data.batch_size)])
    for i, (mc, mt) in enumerate(zip(batch["masks_ctx"], batch["masks_tgt"])):
        lines.append(f"mask {i} ({cfg.mask[i].type}, {cfg.mask[i].num_blocks} blocks): context {mc.shape[1]} "
                     f"tokens ({mc.shape[1] / n:.1%}), target {mt.shape[1]} tokens ({mt.shape[1] / n:.1%})")
    return "\n".join(lines)


# What a resumed run must share with the run it continues: they fix its data order and masks.
RESUME_KEYS = (("meta", "seed"), ("data", "batch_size"))


def check_clip_geometry(d) -> None:
    """The clip must tile into whole tubelets: a crop that is not a multiple of the patch (or a clip length not
    a multiple of the tubelet) would silently lose its border to the patch embedding and break the masks."""
    for key, size, unit, unit_key in (("crop_size", d.crop_size, d.patch_size, "patch_size"),
                                      ("num_frames", d.num_frames, d.tubelet_size, "tubelet_size")):
        if unit < 1 or size < unit or size % unit:
            raise ConfigError(f"data.{key}={size} must be a positive multiple of data.{unit_key}={unit}")


def check_targets(loss: LossConfig) -> None:
    """Something must be predicted: the features (`feature_coeff`), the pixels, or, with the JEPA term off, one
    of the terms that predict target features another way (pooled context, local neighbourhoods, views)."""
    l = loss
    if l.feature_coeff < 0 or l.pixel_coeff < 0:
        raise ConfigError(f"loss.feature_coeff and loss.pixel_coeff are weights: both >= 0, got {l.feature_coeff} "
                          f"and {l.pixel_coeff}")
    if l.feature_coeff == 0 and l.pixel_coeff == 0 and not (l.pooled_coeff or l.local_coeff or l.view_coeff):
        raise ConfigError("loss.feature_coeff=0 turns the JEPA term off and nothing else predicts anything: set "
                          "loss.pixel_coeff (or pooled_coeff / local_coeff / view_coeff) > 0, or feature_coeff > 0")


def check_reverse(loss: LossConfig, embed_dim: int) -> None:
    """The time-reversal term asks the first `reverse_dims` channels to be odd: more channels than the encoder
    has would be silently clipped to all of them by the slice."""
    if loss.reverse_pool not in ("clip", "time"):
        raise ConfigError(f"loss.reverse_pool must be clip or time, got {loss.reverse_pool!r}")
    if loss.reverse_form not in ("ratio", "sqrt"):
        raise ConfigError(f"loss.reverse_form must be ratio or sqrt, got {loss.reverse_form!r}")
    if loss.reverse_coeff > 0 and not 0 <= loss.reverse_dims <= embed_dim:
        raise ConfigError(f"loss.reverse_dims={loss.reverse_dims} must lie in [0, {embed_dim}] (the encoder's width; "
                          f"0 = half of it)")


def train(cfg: PretrainConfig, dry_run: bool = False) -> Optional[Path]:
    opt = cfg.optimization
    mode = pick_mode(cfg)
    video = mode is sys.modules[__name__]  # V-JEPA only: the k-NN monitor and the mask figure
    if video and cfg.loss.view_coeff > 0 and len(cfg.mask) < 2:
        raise ConfigError("loss.view_coeff treats each mask config as a view of the clip: it needs >= 2 mask configs")
    if video and not 0 <= cfg.loss.target_diff <= 1:
        raise ConfigError(f"loss.target_diff mixes features and their change: it must be in [0, 1], got "
                          f"{cfg.loss.target_diff}")
    if video:
        check_targets(cfg.loss)
    if video:
        check_clip_geometry(cfg.data)
    if opt.epochs < 1 or (opt.ipe is not None and opt.ipe < 1):  # I-JEPA: ipe None = one pass over the images
        raise ConfigError(f"optimization.epochs and optimization.ipe must be >= 1, got {opt.epochs} and {opt.ipe}")
    check_lr_schedule(opt)
    accelerator = make_accelerator(cfg.meta.dtype, opt.grad_accum_steps)
    main = accelerator.is_main_process
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    encoder, predictor, target = mode.build_models(cfg)
    if video:
        check_reverse(cfg.loss, encoder.embed_dim)
    grid = encoder.grid
    collator = mode.build_collator(cfg, grid)
    optimizer = build_adamw(param_groups(encoder, predictor), accelerator.device, opt.fused_adamw, lr=opt.lr,
                            betas=opt.betas, eps=opt.eps)
    if dry_run:
        if main:
            print(mode.describe(cfg, encoder, predictor, collator))
        return None

    run_dir = resolve_run_dir(cfg.logging.folder, "pretrain", accelerator)
    latest, resume_from = checkpoint_paths(run_dir, cfg.logging.write_tag, cfg.meta.load_checkpoint,
                                           cfg.meta.read_checkpoint)
    step, rng = 0, None
    if resume_from is not None:
        state = ckpt.load(resume_from)
        check_resume(state.get("config"), cfg, resume_from, RESUME_KEYS, prefix="pretrain.")
        ckpt.load_state_strict(encoder, state["encoder"], "encoder")
        ckpt.load_state_strict(predictor, state["predictor"], "predictor")
        ckpt.load_state_strict(target, state["target_encoder"], "target_encoder")
        keep_fused_flag(optimizer, state["opt"])
        step, rng = state["step"], state["rng"]
        logger.info("resumed from %s at step %d", resume_from, step)
    if main:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))

    sharded = video and cfg.meta.fsdp  # I-JEPA's meta has no fsdp key
    if sharded:  # shard first, then compile the sharded modules (FSDP's hooks stay outside the graphs)
        encoder, predictor, target, optimizer = fsdp.prepare(accelerator, encoder, predictor, target, optimizer)
    compile_modules((encoder, predictor, target), ("encoder", "predictor", "target"), accelerator.device,
                    cfg.meta.compile)
    if not sharded:
        encoder, predictor, optimizer = accelerator.prepare(encoder, predictor, optimizer)
        target.to(accelerator.device)
    d = cfg.data
    dataset = mode.build_train_dataset(cfg, accelerator.num_processes)
    loader = build_loader(dataset, collator, d.batch_size, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, seed=cfg.meta.seed,
                          start_step=step * opt.grad_accum_steps, num_workers=d.num_workers,
                          pin_memory=d.pin_mem and torch.cuda.is_available(), persistent_workers=d.persistent_workers)
    if rng is not None:
        ckpt.set_rng_state(rng)

    check_logging(cfg.logging)
    if video and (cfg.logging.monitor_train is None) != (cfg.logging.monitor_val is None):
        raise ConfigError("logging.monitor_train and logging.monitor_val go together (labelled lists)")
    if sharded and cfg.logging.knn_monitor:
        raise ConfigError("logging.knn_monitor runs the EMA target on the main process alone, which a sharded "
                          "(meta.fsdp) target cannot do; turn one of them off")
    total = opt.epochs * opt.ipe
    stop = min(total, cfg.meta.max_steps or total)
    horizon = int(opt.ipe_scale * total)  # WD and EMA span ipe_scale x the run, as the reference (LR: run_lr_at)
    save_every = max(1, cfg.meta.save_every_freq * opt.ipe)
    log = MetricLog(run_dir, enabled=main, tensorboard=cfg.logging.tensorboard)
    log.truncate_after(step)
    if main:
        logger.info("pretraining %s for %d steps (%d epochs x %d) on %d process(es), run folder %s",
                    cfg.model.model_name if video else cfg.meta.model_name, total, opt.epochs, opt.ipe,
                    accelerator.num_processes, run_dir)
    pbar = tqdm(total=total, initial=step, disable=not (main and cfg.logging.progress_bar), dynamic_ncols=True)
    clips_per_step = d.batch_size * accelerator.num_processes * opt.grad_accum_steps
    knn = None
    if video and cfg.logging.knn_monitor and main:
        from vjepa.knn_monitor import ListMonitor, MotionKNNMonitor

        if cfg.logging.monitor_train is not None:
            knn = ListMonitor(cfg.logging.monitor_train, cfg.logging.monitor_val, d, cfg.data_aug,
                              max_clips=cfg.logging.monitor_max_clips)
        else:
            knn = MotionKNNMonitor(d.num_frames, d.crop_size, num_speeds=d.synthetic.num_speeds,
                                   mean=cfg.data_aug.mean, std=cfg.data_aug.std)
    watch = make_finite_watch(opt.check_finite_every, cfg.logging.log_every, accelerator.device)
    batches = iter(loader)
    tick, tick_step, last, skipped = time.time(), step, {}, 0
    padded, start_step = 0, step  # padded: clips of videos shorter than one clip, reported once at the end
    if knn is not None and step == 0:  # the random-init reference the monitor's curve starts from
        log.log(0, knn.scores(target, accelerator.device))

    while step < stop:
        lr = run_lr_at(step, opt, total)
        wd = cosine_at(step, total_steps=horizon, start=opt.weight_decay, end=opt.final_weight_decay)
        m = linear_at(step, total_steps=horizon, start=opt.ema[0], end=opt.ema[1])
        set_lr_wd(optimizer, lr, wd)

        for _ in range(opt.grad_accum_steps):
            batch = next(batches)
            if step == 0 and main and video:
                _save_mask_figure(cfg, batch, grid, run_dir)
            skipped += int(batch["skipped"])
            padded += int(batch.get("padded", 0))  # image batches carry no count
            batch["clip"] = batch["clip"].to(accelerator.device, non_blocking=True)
            if video:  # V-JEPA's workers send uint8 clips (float with random erasing), normalised here
                batch["clip"] = normalize_clip(batch["clip"], cfg.data_aug.mean, cfg.data_aug.std)
            batch["masks_ctx"] = [x.to(accelerator.device, non_blocking=True) for x in batch["masks_ctx"]]
            batch["masks_tgt"] = [x.to(accelerator.device, non_blocking=True) for x in batch["masks_tgt"]]
            for key in ("valid_ctx", "valid_tgt"):
                if key in batch:  # padded masks (data.masks.MaskConfig.pad_to_longest)
                    batch[key] = [x.to(accelerator.device, non_blocking=True) for x in batch[key]]
            objective_now = partial(mode.objective, encoder, predictor, target, batch, cfg.loss)
            last = optimizer_step(accelerator, optimizer, objective_now, (encoder, predictor), step, opt.clip_grad,
                                  {"enc": encoder, "pred": predictor}, watch=watch)
        ema_update(target, accelerator.unwrap_model(encoder), m)
        step += 1
        pbar.update(1)
        if watch is not None and (watch.due(step) or step % cfg.logging.log_every == 0 or step == stop):
            watch.check(step)

        if step % cfg.logging.log_every == 0 or step == stop:
            elapsed, tick = time.time() - tick, time.time()
            metrics = {"loss": float(last["loss"]), "lr": lr, "wd": wd, "ema": m,
                       "clips_per_s": clips_per_step * (step - tick_step) / max(elapsed, 1e-9),
                       "feature_std": feature_std(last["h"]), "skipped_files": skipped}
            metrics.update(scalars(last))  # grad norms and the objective's optional terms (vicreg_*, sigreg)
            tick_step = step
            if cfg.logging.rankme_every > 0 and (step % cfg.logging.rankme_every == 0 or step == stop):
                metrics["rankme"] = rankme(last["h"])
            if knn is not None and (step % cfg.meta.eval_freq == 0 or step == stop):
                metrics.update(knn.scores(target, accelerator.device))
            if metrics["feature_std"] < cfg.logging.collapse_std_floor:
                logger.warning("step %d: target feature std %.4f is below %.3f: the representation may be "
                               "collapsing", step, metrics["feature_std"], cfg.logging.collapse_std_floor)
            log.log(step, metrics)
            pbar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}", ema=f"{m:.4f}",
                             clips_s=f"{metrics['clips_per_s']:.1f}")
        if (step % save_every == 0 or step == stop) and sharded:  # every rank gathers; rank 0 keeps full tensors
            state = {"encoder": fsdp.full_state_dict(encoder, main), "predictor": fsdp.full_state_dict(predictor, main),
                     "target_encoder": fsdp.full_state_dict(target, main),
                     "opt": fsdp.full_optimizer_state(optimizer, main), "step": step, "config": to_dict(cfg)}
            save_checkpoint(accelerator, latest, state, step=step, replicated=[], finite=[encoder, predictor, target],
                            watch=watch, sharded={"encoder": encoder, "predictor": predictor, "target_encoder": target})
        elif step % save_every == 0 or step == stop:
            state = {"encoder": accelerator.get_state_dict(encoder), "predictor": accelerator.get_state_dict(predictor),
                     "target_encoder": target.state_dict(), "opt": optimizer.state_dict(), "step": step,
                     "config": to_dict(cfg)}
            save_checkpoint(accelerator, latest, state, step=step, replicated=[target],
                            finite=[accelerator.unwrap_model(encoder), accelerator.unwrap_model(predictor), target],
                            watch=watch)

    pbar.close()
    log.close()
    _report_padding(accelerator, padded, (step - start_step) * clips_per_step)
    if main:
        from vjepa.plots import plot_metric_curves

        curves = ("loss", "feature_std", "lr") + (("knn_top1", "linear_top1") if knn is not None else ())
        plot_metric_curves(run_dir / "metrics.csv", run_dir / "loss.png", curves)
        if "loss" in last:
            logger.info("done: %d steps, final loss %.4f, checkpoint %s", step, float(last["loss"]), latest)
        else:  # resumed from a finished run: nothing was trained
            logger.info("done: the checkpoint %s is already at step %d of %d; nothing to train", latest, step, stop)
    return run_dir


def _report_padding(accelerator, padded: int, clips: int) -> None:
    """One log line: how many of the run's clips came from videos shorter than one clip (summed over ranks)."""
    total = int(accelerator.reduce(torch.tensor(padded, device=accelerator.device), reduction="sum"))
    if total and accelerator.is_main_process:
        logger.warning("%d of %d clips (%.1f%%) came from videos shorter than one clip and were padded by repeating "
                       "their last frame; data.filter_short_videos=true skips such videos, and `python -m "
                       "data.check LIST --config CONFIG` lists them", total, clips, 100.0 * total / max(1, clips))


def _save_mask_figure(cfg: PretrainConfig, batch: dict, grid, run_dir: Path) -> None:
    from vjepa.plots import plot_masks

    clip = normalize_clip(batch["clip"][0], cfg.data_aug.mean, cfg.data_aug.std)  # uint8 from the workers
    plot_masks(clip, [m[0] for m in batch["masks_ctx"]], [m[0] for m in batch["masks_tgt"]], grid,
               cfg.data.patch_size,
               cfg.data.tubelet_size, cfg.data_aug.mean, cfg.data_aug.std, run_dir / "masks.png")
