"""V-JEPA pretraining: one loop for CPU, one GPU and many, read top to bottom in `train`.

Per step: targets = layer_norm(EMA target encoder(full clip)) at the target indices (no gradient);
the encoder sees only context tokens; the predictor fills in the targets; loss = mean |pred - tgt|^p / p
averaged over mask configs; AdamW step; EMA update of the target from the (unwrapped) encoder.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data.build import build_dataset
from data.collate import MaskCollator
from data.config import DataAugConfig, DataConfig
from data.loader import build_loader
from data.masks import MaskConfig, long_range_mask, short_range_mask
from vjepa import checkpoint as ckpt
from vjepa.config import to_dict, to_yaml
from vjepa.models import ModelConfig, build_encoder, build_predictor, gather_tokens
from vjepa.monitor import feature_std, rankme
from vjepa.runtime import MetricLog, checkpoint_paths, make_accelerator, resolve_run_dir
from vjepa.schedules import cosine_at, linear_at, lr_at, set_lr_wd

logger = logging.getLogger(__name__)


@dataclass
class OptimizationConfig:
    """Reference `optimization:` section. An "epoch" is `ipe` optimizer steps, as in the reference.

    Args:
        ipe / epochs: the run lasts epochs x ipe optimizer steps. warmup: LR warmup, in epochs.
        ipe_scale: schedules (cosine LR/WD, EMA) span ipe_scale x the run, so they end short of final values.
        ema: EMA momentum goes linearly from ema[0] to ema[1].
        clip_grad: max grad norm for encoder and predictor each (None = no clipping).
        grad_accum_steps: micro-batches per optimizer step.
    """

    ipe: int = 300
    ipe_scale: float = 1.25
    epochs: int = 300
    warmup: float = 40
    start_lr: float = 2e-4
    lr: float = 6.25e-4
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    clip_grad: Optional[float] = 10.0
    ema: List[float] = field(default_factory=lambda: [0.998, 1.0])
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_accum_steps: int = 1


@dataclass
class LossConfig:
    """loss_exp: p of mean |pred - target|^p / p (1 = L1 as V-JEPA, 2 = L2).
    reg_coeff: weight of the reference's variance hinge mean(relu(1 - std(pred))) (0 = off)."""

    loss_exp: float = 1.0
    reg_coeff: float = 0.0


@dataclass
class MetaConfig:
    """seed: init, data order and masks. dtype: autocast precision on GPU (CPU runs fp32).
    load_checkpoint: resume from the run folder's latest checkpoint. read_checkpoint: resume from this file.
    save_every_freq: checkpoint every this many epochs (and at the end). eval_freq: reference key, kept
    for monitoring jobs. max_steps: stop (with a checkpoint) after this many steps, schedules unchanged,
    e.g. to fit a cluster's time limit and resume later."""

    seed: int = 234
    dtype: str = "bfloat16"
    load_checkpoint: bool = False
    read_checkpoint: Optional[str] = None
    save_every_freq: int = 25
    eval_freq: int = 100
    max_steps: Optional[int] = None


@dataclass
class LoggingConfig:
    """folder: run folder (None = runs/<task>-<time>). write_tag: checkpoint file prefix.
    log_every: metrics every this many steps (>= 1). rankme_every: RankMe every this many steps (0: never).
    collapse_std_floor: warn when the target features' std across tokens falls below it.
    knn_monitor: every `meta.eval_freq` steps, log the EMA target's k-NN top-1 on a small held-out motion
    benchmark (vjepa/knn_monitor.py) at the pretraining clip geometry."""

    folder: Optional[str] = None
    write_tag: str = "jepa"
    log_every: int = 10
    rankme_every: int = 50
    collapse_std_floor: float = 0.05
    tensorboard: bool = True
    progress_bar: bool = True
    knn_monitor: bool = False


@dataclass
class PretrainConfig:
    task: str = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    data_aug: DataAugConfig = field(default_factory=DataAugConfig)
    mask: List[MaskConfig] = field(default_factory=lambda: [short_range_mask(), long_range_mask()])
    model: ModelConfig = field(default_factory=ModelConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


class NonFiniteLoss(RuntimeError):
    pass


def param_groups(*modules: nn.Module) -> list:
    """Weight decay on matrices only; biases and norm parameters (1-D) are exempt, as the reference."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "wd_exclude": True}]


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, parameter by parameter."""
    t = list(target.parameters())
    o = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t, m)
    torch._foreach_add_(t, o, alpha=1.0 - m)


def jepa_loss(encoder: nn.Module, predictor: nn.Module, target: nn.Module, batch: dict, loss_exp: float,
              reg_coeff: float = 0.0):
    """Returns (loss, layer-normed target features `[B, N, D]`)."""
    clip, masks_ctx, masks_tgt = batch["clip"], batch["masks_ctx"], batch["masks_tgt"]
    with torch.no_grad():
        h = target(clip)  # [B, N, D]
        h = F.layer_norm(h, (h.shape[-1],))
    z = encoder(clip, masks_ctx)  # list over mask configs of [B, K_ctx, D]
    preds = predictor(z, masks_ctx, masks_tgt)  # list of [B, K_tgt, D]
    loss = sum(
        (p.float() - gather_tokens(h, m).float()).abs().pow(loss_exp).mean() / loss_exp
        for p, m in zip(preds, masks_tgt)
    ) / len(preds)
    if reg_coeff > 0:
        std = torch.stack([torch.sqrt(p.float().var(dim=1) + 1e-4).mean() for p in preds]).mean()
        loss = loss + reg_coeff * F.relu(1.0 - std)
    return loss, h


def train_step(accelerator, encoder, predictor, target, optimizer, batch, loss_cfg: LossConfig,
               clip_grad: Optional[float], step: int, objective: Optional[Callable] = None) -> dict:
    """One micro-batch: forward, NaN check (all ranks agree), backward, and on the last micro-batch of an
    accumulation window grad clipping and the optimizer step. `objective(encoder, predictor, target, batch)`
    replaces `jepa_loss` in I-JEPA mode."""
    with accelerator.accumulate(encoder, predictor):
        with accelerator.autocast():
            if objective is not None:
                loss, h = objective(encoder, predictor, target, batch)
            else:
                loss, h = jepa_loss(encoder, predictor, target, batch, loss_cfg.loss_exp, loss_cfg.reg_coeff)
        mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
        if not torch.isfinite(mean_loss):
            raise NonFiniteLoss(f"loss became {mean_loss.item()} at step {step}; stopping before the update. "
                                "The last checkpoint is untouched.")
        accelerator.backward(loss)
        out = {"loss": mean_loss.item()}
        if accelerator.sync_gradients and clip_grad:
            out["grad_norm_enc"] = float(accelerator.clip_grad_norm_(encoder.parameters(), clip_grad))
            out["grad_norm_pred"] = float(accelerator.clip_grad_norm_(predictor.parameters(), clip_grad))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out["h"] = h
    return out


def build_models(cfg: PretrainConfig):
    d = cfg.data
    encoder = build_encoder(cfg.model, img_size=d.crop_size, num_frames=d.num_frames, patch_size=d.patch_size,
                            tubelet_size=d.tubelet_size)
    predictor = build_predictor(cfg.model, encoder, num_mask_tokens=len(cfg.mask))
    target = copy.deepcopy(encoder).requires_grad_(False).eval()
    return encoder, predictor, target


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


def train(cfg: PretrainConfig, dry_run: bool = False) -> Optional[Path]:
    opt = cfg.optimization
    image_mode = None
    if cfg.task == "ijepa":  # I-JEPA mode: its models, masks, images and objective (vjepa/ijepa.py)
        from vjepa import ijepa as image_mode
    accelerator = make_accelerator(cfg.meta.dtype, opt.grad_accum_steps)
    main = accelerator.is_main_process
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    encoder, predictor, target = (image_mode.build_models if image_mode else build_models)(cfg)
    grid = encoder.grid
    collator = image_mode.build_collator(cfg, grid) if image_mode else MaskCollator(cfg.mask, grid, cfg.meta.seed)
    optimizer = torch.optim.AdamW(param_groups(encoder, predictor), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
    if dry_run:
        if main:
            print((image_mode.describe if image_mode else describe)(cfg, encoder, predictor, collator))
        return None

    run_dir = resolve_run_dir(cfg.logging.folder, "pretrain", accelerator)
    latest, resume_from = checkpoint_paths(run_dir, cfg.logging.write_tag, cfg.meta.load_checkpoint,
                                           cfg.meta.read_checkpoint)
    step, rng = 0, None
    if resume_from is not None:
        state = ckpt.load(resume_from)
        ckpt.load_state_strict(encoder, state["encoder"], "encoder")
        ckpt.load_state_strict(predictor, state["predictor"], "predictor")
        ckpt.load_state_strict(target, state["target_encoder"], "target_encoder")
        optimizer.load_state_dict(state["opt"])
        step, rng = state["step"], state["rng"]
        logger.info("resumed from %s at step %d", resume_from, step)
    if main:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))

    encoder, predictor, optimizer = accelerator.prepare(encoder, predictor, optimizer)
    target.to(accelerator.device)
    d = cfg.data
    if image_mode:
        dataset = image_mode.build_dataset(cfg, accelerator.num_processes)
    else:
        dataset = build_dataset(d, cfg.data_aug, train=True)
    objective = image_mode.objective(cfg) if image_mode else None  # None: jepa_loss
    loader = build_loader(dataset, collator, d.batch_size, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, seed=cfg.meta.seed,
                          start_step=step * opt.grad_accum_steps, num_workers=d.num_workers,
                          pin_memory=d.pin_mem and torch.cuda.is_available(), persistent_workers=d.persistent_workers)
    if rng is not None:
        ckpt.set_rng_state(rng)

    if cfg.logging.log_every < 1:
        raise ValueError(f"logging.log_every must be >= 1, got {cfg.logging.log_every}")
    total = opt.epochs * opt.ipe
    stop = min(total, cfg.meta.max_steps or total)
    horizon = int(opt.ipe_scale * total)  # schedules span ipe_scale x the run, as the reference
    warmup = int(opt.warmup * opt.ipe)
    save_every = max(1, cfg.meta.save_every_freq * opt.ipe)
    log = MetricLog(run_dir, enabled=main, tensorboard=cfg.logging.tensorboard)
    log.truncate_after(step)
    if main:
        logger.info("pretraining %s for %d steps (%d epochs x %d) on %d process(es), run folder %s",
                    cfg.meta.model_name if image_mode else cfg.model.model_name, total, opt.epochs, opt.ipe,
                    accelerator.num_processes, run_dir)
    pbar = tqdm(total=total, initial=step, disable=not (main and cfg.logging.progress_bar), dynamic_ncols=True)
    clips_per_step = d.batch_size * accelerator.num_processes * opt.grad_accum_steps
    knn = None
    if cfg.logging.knn_monitor and main:
        from vjepa.knn_monitor import MotionKNNMonitor

        knn = MotionKNNMonitor(d.num_frames, d.crop_size, num_speeds=d.synthetic.num_speeds,
                               mean=cfg.data_aug.mean, std=cfg.data_aug.std)
    batches = iter(loader)
    tick, tick_step, last, skipped = time.time(), step, {}, 0

    while step < stop:
        lr = lr_at(step, warmup_steps=warmup, total_steps=horizon, start_lr=opt.start_lr, lr=opt.lr, final_lr=opt.final_lr)
        wd = cosine_at(step, total_steps=horizon, start=opt.weight_decay, end=opt.final_weight_decay)
        m = linear_at(step, total_steps=horizon, start=opt.ema[0], end=opt.ema[1])
        set_lr_wd(optimizer, lr, wd)

        for _ in range(opt.grad_accum_steps):
            batch = next(batches)
            if step == 0 and main and not image_mode:
                _save_mask_figure(cfg, batch, grid, run_dir)
            skipped += int(batch["skipped"])
            batch["clip"] = batch["clip"].to(accelerator.device, non_blocking=True)
            batch["masks_ctx"] = [x.to(accelerator.device) for x in batch["masks_ctx"]]
            batch["masks_tgt"] = [x.to(accelerator.device) for x in batch["masks_tgt"]]
            last = train_step(accelerator, encoder, predictor, target, optimizer, batch, cfg.loss, opt.clip_grad, step,
                              objective)
        ema_update(target, accelerator.unwrap_model(encoder), m)
        step += 1
        pbar.update(1)

        if step % cfg.logging.log_every == 0 or step == stop:
            elapsed, tick = time.time() - tick, time.time()
            metrics = {"loss": last["loss"], "lr": lr, "wd": wd, "ema": m,
                       "clips_per_s": clips_per_step * (step - tick_step) / max(elapsed, 1e-9),
                       "feature_std": feature_std(last["h"]), "skipped_files": skipped}
            metrics.update({k: v for k, v in last.items() if k.startswith("grad_norm")})
            tick_step = step
            if cfg.logging.rankme_every > 0 and (step % cfg.logging.rankme_every == 0 or step == stop):
                metrics["rankme"] = rankme(last["h"])
            if knn is not None and (step % cfg.meta.eval_freq == 0 or step == stop):
                metrics["knn_top1"] = knn.score(target, accelerator.device)
            if metrics["feature_std"] < cfg.logging.collapse_std_floor:
                logger.warning("step %d: target feature std %.4f is below %.3f: the representation may be "
                               "collapsing", step, metrics["feature_std"], cfg.logging.collapse_std_floor)
            log.log(step, metrics)
            pbar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", ema=f"{m:.4f}",
                             clips_s=f"{metrics['clips_per_s']:.1f}")
        if step % save_every == 0 or step == stop:
            _save(accelerator, latest, encoder, predictor, target, optimizer, step, cfg)

    pbar.close()
    log.close()
    if main:
        from vjepa.plots import plot_metric_curves

        plot_metric_curves(run_dir / "metrics.csv", run_dir / "loss.png", ("loss", "feature_std", "lr"))
        logger.info("done: %d steps, final loss %.4f, checkpoint %s", step, last.get("loss", float("nan")), latest)
    return run_dir


def _target_checksum(target: nn.Module) -> torch.Tensor:
    return torch.stack([sum(p.double().sum() for p in target.parameters()),
                        sum(p.double().abs().sum() for p in target.parameters())])


def _save(accelerator, path: Path, encoder, predictor, target, optimizer, step: int, cfg: PretrainConfig) -> None:
    # A finite loss can still come with weights the update just broke: never let those replace a good file.
    if not all(torch.isfinite(p).all() for p in target.parameters()):
        raise NonFiniteLoss(f"target encoder weights are not finite at step {step}; not saving over {path}")
    # Every rank must hold the same EMA target; record each rank's checksum and stop if they differ.
    sums = accelerator.gather(_target_checksum(target).to(accelerator.device).unsqueeze(0)).cpu()  # [ranks, 2]
    if not torch.allclose(sums, sums[:1].expand_as(sums), rtol=1e-9, atol=0):
        raise RuntimeError(f"target encoders differ across ranks at step {step}: checksums {sums.tolist()}")
    accelerator.wait_for_everyone()
    state = {
        "target_checksums": sums,
        "encoder": accelerator.get_state_dict(encoder),
        "predictor": accelerator.get_state_dict(predictor),
        "target_encoder": target.state_dict(),
        "opt": optimizer.state_dict(),
        "step": step,
        "rng": ckpt.rng_state(),
        "config": to_dict(cfg),
    }
    if accelerator.is_main_process:
        ckpt.save_atomic(state, path)
    accelerator.wait_for_everyone()


def _save_mask_figure(cfg: PretrainConfig, batch: dict, grid, run_dir: Path) -> None:
    from vjepa.plots import plot_masks

    plot_masks(batch["clip"][0], [m[0] for m in batch["masks_ctx"]], [m[0] for m in batch["masks_tgt"]], grid,
               cfg.data.patch_size,
               cfg.data.tubelet_size, cfg.data_aug.mean, cfg.data_aug.std, run_dir / "masks.png")
