"""H-JEPA training: level 0 (the V-JEPA video encoder) and any number of temporal levels above it.

    python train.py --config configs/hjepa/two_level.yaml [key.sub=value ...] [--dry-run]

Modes:
- `stagewise`: stage 0 trains level 0 on single windows with the V-JEPA loss (skipped when level 0 is
  loaded and `level0.train=false`), then stage k trains level k on long videos with every level below
  frozen (their EMA targets feed it, under no_grad). Each stage lasts `optimization.epochs x ipe` steps
  with its own optimizer and schedules; the global step says which stage a resumed run is in.
- `end_to_end`: one stage; every trainable level's loss is summed each step. A level reads the level
  below's EMA target (stop-gradient) unless its `input_grad` is set.
The model and its config are in hjepa/model.py; the step, checkpoints, schedules and sampling come from the
engine (vjepa/engine/): Accelerate, strict configs, atomic checked checkpoints, exact resume.
"""
from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from data.collate import MaskCollator
from data.generated.long_videos import LongVideos, LongVideoWindows
from data.seeding import derive_seed
from data.transforms import to_float_clip
from hjepa.model import HJEPA, FeatureVideos, HJEPAConfig, build, describe, encode_videos, plan_stages
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.checkpoint import save_checkpoint
from vjepa.engine.config import check_resume, to_dict, to_yaml
from vjepa.engine.monitor import monitor
from vjepa.engine.optim import ema_update, optimizer_step, param_groups
from vjepa.engine.runtime import MetricLog, checkpoint_paths, make_accelerator, resolve_run_dir
from vjepa.engine.sampling import build_loader
from vjepa.engine.schedules import check_lr_schedule, cosine_at, linear_at, run_lr_at, set_lr_wd
from vjepa.engine.sections import check_logging, due

logger = logging.getLogger(__name__)


class WindowCollator:
    """Collates long-video samples; with a `MaskCollator`, also draws V-JEPA masks for every window, each
    window seeded from (sample seed, window index), so level 0 can train on the windows of the batch."""

    def __init__(self, masks: Optional[MaskCollator]):
        self.masks = masks

    def __call__(self, samples: Sequence[dict]) -> dict:
        batch = {"clip": torch.stack([s["clip"] for s in samples]),  # [B, W, C, T, H, W] (or [B, W, D0])
                 "fast": torch.stack([s["fast"] for s in samples]), "slow": torch.stack([s["slow"] for s in samples]),
                 "skipped": torch.as_tensor(0)}
        if self.masks is not None:
            flat = [{"clip": w, "label": 0, "seed": derive_seed(s["seed"], i), "step": s["step"]}
                    for s in samples for i, w in enumerate(s["clip"])]
            m = self.masks(flat)
            batch["masks_ctx"], batch["masks_tgt"] = m["masks_ctx"], m["masks_tgt"]
        return batch


def metric_keys(cfg: HJEPAConfig) -> List[str]:
    """A fixed column set (MetricLog fixes its columns on the first row; stages log different levels)."""
    keys = ["stage", "lr", "loss", "L0/loss", "L0/feature_std", "L0/rankme"]
    for k, lv in enumerate(cfg.levels, start=1):
        extra = {"vicreg": ["var", "cov"], "sigreg": ["sigreg"], "none": []}[lv.regularizer]
        keys += [f"L{k}/{n}" for n in ["loss", "jepa", "loss_future", "loss_masked", *extra, "feature_std", "rankme"]]
    return keys


def set_trainable(model: HJEPA, train0: bool, train_levels: Sequence[int]) -> None:
    model.encoder.requires_grad_(train0 or (1 in train_levels and model.levels[0].cfg.input_grad))
    model.predictor.requires_grad_(train0)
    model.target.requires_grad_(False)
    for k, level in enumerate(model.levels, start=1):
        grad_from_above = k < len(model.levels) and model.levels[k].cfg.input_grad and (k + 1) in train_levels
        level.encoder.requires_grad_(k in train_levels or grad_from_above)
        level.predictor.requires_grad_(k in train_levels)
        level.target.requires_grad_(False)


def objective(model, batch: dict, train0: bool, train_levels: Sequence[int], mask_seed: int):
    """The step's objective for `optimizer_step`: (summed loss of the trained levels, {"metrics": per-level
    scalars, "feats": {level: features}} for the monitors)."""
    loss, metrics, feats = model(batch, train0, train_levels, mask_seed)
    return loss, {"metrics": metrics, "feats": feats}


def train(cfg: HJEPAConfig, dry_run: bool = False) -> Optional[Path]:
    opt = cfg.optimization
    check_lr_schedule(opt)
    accelerator = make_accelerator(cfg.meta.dtype, opt.grad_accum_steps)
    main = accelerator.is_main_process
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    model = build(cfg)
    stages = plan_stages(cfg)
    if dry_run:
        if main:
            print(describe(cfg, model))
        return None

    run_dir = resolve_run_dir(cfg.logging.folder, "hjepa", accelerator)
    latest, resume_from = checkpoint_paths(run_dir, cfg.logging.write_tag, cfg.meta.load_checkpoint,
                                           cfg.meta.read_checkpoint)
    step, rng, opt_state = 0, None, None
    if resume_from is not None:
        state = ckpt.load(resume_from)
        check_resume(state.get("config"), cfg, resume_from, (("meta", "seed"),))
        ckpt.load_state_strict(model, state["model"], "hjepa model")
        step, rng = state["step"], state["rng"]
        opt_state = state["opt"] if state["opt_stage"] == step // (opt.epochs * opt.ipe) else None
        logger.info("resumed from %s at step %d", resume_from, step)
    if main:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if rng is not None:
        ckpt.set_rng_state(rng)

    check_logging(cfg.logging)
    per_stage = opt.epochs * opt.ipe
    total = per_stage * len(stages)
    stop = min(total, cfg.meta.max_steps or total)
    horizon = int(opt.ipe_scale * per_stage)
    save_every = max(1, cfg.meta.save_every_freq * opt.ipe)
    log = MetricLog(run_dir, enabled=main, tensorboard=cfg.logging.tensorboard)
    log.truncate_after(step)
    keys = metric_keys(cfg)
    pbar = tqdm(total=total, initial=step, disable=not (main and cfg.logging.progress_bar), dynamic_ncols=True)
    transform = partial(to_float_clip, mean=cfg.level0.mean, std=cfg.level0.std)
    videos = LongVideos(cfg.data, transform=transform)
    last: Dict[str, float] = {}
    cache: Optional[FeatureVideos] = None

    while step < stop:
        stage = step // per_stage
        train0, train_levels = stages[stage]
        set_trainable(model, train0, train_levels)
        optimizer = torch.optim.AdamW(param_groups(model), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
            opt_state = None
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        masks = MaskCollator(cfg.level0.mask, model.encoder.grid, cfg.meta.seed) if train0 else None
        alone = train0 and not train_levels  # level 0 trains on single windows
        frozen0 = not train0 and not (cfg.levels[0].input_grad and 1 in train_levels)
        if frozen0 and cfg.level0.cache_features and cache is None:
            t0 = time.time()
            cache = encode_videos(model, videos, cfg.batch_size, accelerator.device, accelerator.autocast)
            logger.info("cached level-0 features of %d videos %s in %.0f s", len(cache), tuple(cache.feats.shape),
                        time.time() - t0)
        dataset = LongVideoWindows(videos) if alone else cache if (frozen0 and cache is not None) else videos
        collate = masks if alone else WindowCollator(masks)
        batch_size = cfg.level0.window_batch if alone else cfg.batch_size
        loader = build_loader(dataset, collate, batch_size, rank=accelerator.process_index,
                              world_size=accelerator.num_processes, seed=derive_seed(cfg.meta.seed, stage),
                              start_step=(step - stage * per_stage) * opt.grad_accum_steps,
                              num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())
        batches = iter(loader)
        if main:
            logger.info("stage %d/%d: train level 0: %s, levels %s; steps %d-%d, run folder %s", stage + 1,
                        len(stages), train0, list(train_levels), stage * per_stage, (stage + 1) * per_stage, run_dir)
        tick = time.time()
        while step < min((stage + 1) * per_stage, stop):
            local = step - stage * per_stage
            lr = run_lr_at(local, opt, per_stage)
            wd = cosine_at(local, total_steps=horizon, start=opt.weight_decay, end=opt.final_weight_decay)
            set_lr_wd(optimizer, lr, wd)
            for micro in range(opt.grad_accum_steps):
                batch = next(batches)
                batch = {k: ([m.to(accelerator.device) for m in v] if isinstance(v, list) else
                             v.to(accelerator.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                trainable = [p for p in model.parameters() if p.requires_grad]
                out = optimizer_step(accelerator, optimizer,
                                     partial(objective, wrapped, batch, train0, train_levels,
                                             derive_seed(cfg.meta.seed, step, micro)),
                                     (wrapped,), step, opt.clip_grad, {"": trainable})
            inner = accelerator.unwrap_model(wrapped)
            if train0:
                ema_update(inner.target, inner.encoder,
                           linear_at(local, total_steps=horizon, start=cfg.level0.ema[0], end=cfg.level0.ema[1]))
            for k in train_levels:
                lv = inner.levels[k - 1]
                ema_update(lv.target, lv.encoder, linear_at(local, total_steps=horizon, start=lv.cfg.ema[0],
                                                            end=lv.cfg.ema[1]))
            step += 1
            pbar.update(1)
            end = step % per_stage == 0 or step == stop
            if step % cfg.logging.log_every == 0 or end:
                last = {"stage": stage, "lr": lr, "loss": float(out["loss"]), **out["metrics"]}
                with_rank = due(step, cfg.logging.rankme_every, last=end)
                for k, h in out["feats"].items():
                    floor = cfg.logging.collapse_std_floor if k == 0 else cfg.levels[k - 1].collapse_std_floor
                    last.update({f"L{k}/{n}": v for n, v in monitor(h, f"level {k}", floor, step, with_rank).items()})
                log.log(step, {key: last.get(key, math.nan) for key in keys})
                pbar.set_postfix(stage=stage, loss=f"{last['loss']:.4f}",
                                 steps_s=f"{cfg.logging.log_every / max(time.time() - tick, 1e-9):.1f}")
                tick = time.time()
            if step % save_every == 0 or end:
                state = {"model": inner.state_dict(), "opt": optimizer.state_dict(), "opt_stage": stage, "step": step,
                         "config": to_dict(cfg)}
                save_checkpoint(accelerator, latest, state, step=step, finite=[inner],
                                replicated=[inner.target, *(lv.target for lv in inner.levels)])
        accelerator.free_memory()  # drop this stage's prepared objects before the next stage prepares its own

    pbar.close()
    log.close()
    if main:
        from vjepa.plots import plot_metric_curves

        shown = ["loss"] + [f"L{k}/feature_std" for k in range(len(cfg.levels) + 1)]
        plot_metric_curves(run_dir / "metrics.csv", run_dir / "loss.png", shown,
                           "Healthy: loss falls, then flattens; every level's feature_std stays well above 0 (a "
                           "level whose std falls towards 0 is collapsing).")
        logger.info("done: %d steps, checkpoint %s", step, latest)
    return run_dir
