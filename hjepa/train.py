"""H-JEPA training: level 0 (the V-JEPA video encoder) and any number of temporal levels above it.

    python train.py --config configs/hjepa/two_level.yaml [key.sub=value ...] [--dry-run]

Modes:
- `stagewise`: stage 0 trains level 0 on single windows with the V-JEPA loss (skipped when level 0 is
  loaded and `level0.train=false`), then stage k trains level k on long videos with every level below
  frozen (their EMA targets feed it, under no_grad). Each stage lasts `optimization.epochs x ipe` steps
  with its own optimizer and schedules; the global step says which stage a resumed run is in.
- `end_to_end`: one stage; every trainable level's loss is summed each step. A level reads the level
  below's EMA target (stop-gradient) unless its `input_grad` is set.
The loop follows vjepa/pretrain.py: Accelerate, strict configs, atomic checkpoints, exact resume.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from einops import rearrange
from tqdm import tqdm

from data.collate import MaskCollator, derive_seed
from data.long_videos import LongVideoConfig, LongVideos, LongVideoWindows, validate
from data.loader import build_loader
from data.masks import MaskConfig
from data.transforms import to_float_clip
from hjepa.levels import WINDOW_POOLS, Level, LevelConfig, encode_windows, level_loss, monitor, validate_level
from vjepa import checkpoint as ckpt
from vjepa.config import to_dict, to_yaml
from vjepa.models import ModelConfig, build_encoder, build_predictor
from vjepa.pretrain import LoggingConfig, MetaConfig, NonFiniteLoss, OptimizationConfig, ema_update, jepa_loss, param_groups
from vjepa.runtime import MetricLog, checkpoint_paths, make_accelerator, resolve_run_dir
from vjepa.schedules import cosine_at, linear_at, lr_at, set_lr_wd

logger = logging.getLogger(__name__)

MODES = ("stagewise", "end_to_end")


def _micro_model() -> ModelConfig:
    return ModelConfig(model_name="vit_micro", pred_depth=2, pred_embed_dim=48)


def _window_masks() -> List[MaskConfig]:
    return [MaskConfig(num_blocks=4, spatial_scale=[0.15, 0.15]), MaskConfig(num_blocks=1, spatial_scale=[0.6, 0.6])]


@dataclass
class Level0Config:
    """Level 0: the V-JEPA video encoder, one vector per window (mean of its layer-normed tokens).

    Args:
        checkpoint: a V-JEPA pretraining checkpoint (keys encoder / predictor / target_encoder) to start
            from; None = random init. Its model and geometry must match `model`, `patch_size`,
            `tubelet_size` and the data's window size (a mismatch is an error).
        train: train level 0 with the V-JEPA loss (its own stage, or jointly end to end); false = frozen.
        model / mask: encoder and predictor shape, mask configs (as the pretraining config's sections).
        patch_size / tubelet_size: token size.
        pool: one vector per window from its tokens: `max` (default), `mean` or `meanmax` (both, 2 x D).
        loss_exp: p of the V-JEPA loss. ema: its target's EMA momentum, linear from ema[0] to ema[1].
        window_batch: windows per step when level 0 trains on its own (stage 0).
        cache_features: when level 0 is frozen for a stage, encode every video once and train the levels
            above on the stored features (exact here: the generated videos have no augmentation).
        mean / std: pixel normalisation.
    """

    checkpoint: Optional[str] = None
    train: bool = True
    model: ModelConfig = field(default_factory=_micro_model)
    mask: List[MaskConfig] = field(default_factory=_window_masks)
    patch_size: int = 8
    tubelet_size: int = 2
    pool: str = "max"
    loss_exp: float = 1.0
    ema: List[float] = field(default_factory=lambda: [0.99, 1.0])
    window_batch: int = 32
    cache_features: bool = True
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class HJEPAConfig:
    """Root config of an H-JEPA run. `levels[i]` is level i+1; add a level by adding an entry.

    Args:
        mode: `stagewise` or `end_to_end`. batch_size: long videos per step (levels >= 1).
        num_workers: DataLoader workers.
    """

    task: str = "hjepa"
    mode: str = "stagewise"
    data: LongVideoConfig = field(default_factory=LongVideoConfig)
    batch_size: int = 8
    num_workers: int = 0
    level0: Level0Config = field(default_factory=Level0Config)
    levels: List[LevelConfig] = field(default_factory=lambda: [LevelConfig(stride=2), LevelConfig(stride=2)])
    optimization: OptimizationConfig = field(default_factory=lambda: OptimizationConfig(
        ipe=100, epochs=3, warmup=0.5, start_lr=2e-4, lr=1e-3, final_lr=1e-5, clip_grad=10.0, ema=[0.99, 1.0]))
    meta: MetaConfig = field(default_factory=lambda: MetaConfig(seed=0, dtype="bfloat16", save_every_freq=1))
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(write_tag="hjepa", log_every=10,
                                                                         rankme_every=50))


def spans(cfg: HJEPAConfig) -> List[int]:
    """Windows per step of each level: [1, s_0, s_0 s_1, ...] (level k step = product of the strides below)."""
    out = [1]
    for lv in cfg.levels:
        out.append(out[-1] * lv.stride)
    return out


def check_config(cfg: HJEPAConfig) -> None:
    if cfg.mode not in MODES:
        raise ValueError(f"mode {cfg.mode!r} unknown; valid: {list(MODES)}")
    validate(cfg.data)
    for k, lv in enumerate(cfg.levels, start=1):
        validate_level(lv, k)
    top = spans(cfg)[-1]
    if cfg.data.num_windows % top or cfg.data.num_windows // top < 2:
        raise ValueError(f"data.num_windows={cfg.data.num_windows} must be a multiple of the top level's span "
                         f"{top} windows (strides {[lv.stride for lv in cfg.levels]}) with at least 2 top steps")
    if cfg.mode == "stagewise" and any(lv.input_grad for lv in cfg.levels):
        raise ValueError("levels[*].input_grad needs mode=end_to_end: stage-wise training freezes lower levels")
    if cfg.level0.checkpoint is None and not cfg.level0.train and cfg.levels:
        logger.warning("level 0 is neither loaded nor trained: levels above read a random encoder")
    if cfg.level0.pool not in WINDOW_POOLS:
        raise ValueError(f"level0.pool {cfg.level0.pool!r} unknown; valid: {list(WINDOW_POOLS)}")
    if cfg.data.size % cfg.level0.patch_size or cfg.data.window_frames % cfg.level0.tubelet_size:
        raise ValueError("data.size / data.window_frames must be multiples of level0.patch_size / tubelet_size")


class HJEPA(nn.Module):
    """Level 0 (`encoder`, `predictor`, EMA `target`) and the levels above it (`levels`)."""

    def __init__(self, cfg: HJEPAConfig):
        super().__init__()
        c0 = cfg.level0
        self.encoder = build_encoder(c0.model, img_size=cfg.data.size, num_frames=cfg.data.window_frames,
                                     patch_size=c0.patch_size, tubelet_size=c0.tubelet_size)
        self.predictor = build_predictor(c0.model, self.encoder, num_mask_tokens=len(c0.mask))
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.pool0 = c0.pool
        dims = [self.encoder.embed_dim * (2 if c0.pool == "meanmax" else 1)] + [lv.embed_dim for lv in cfg.levels]
        self.levels = nn.ModuleList(Level(lv, d) for lv, d in zip(cfg.levels, dims))
        self.loss_exp = c0.loss_exp

    def features(self, windows: torch.Tensor, upto: int) -> List[torch.Tensor]:
        """Target features of levels 0..upto, no gradient: [ `[B, W, D0]`, `[B, W / span_1, D1]`, ... ]."""
        with torch.no_grad():
            xs = [encode_windows(self.target, windows, self.pool0)]
            for level in self.levels[:upto]:
                xs.append(level.targets(level.pool(xs[-1])))
        return xs

    def forward(self, batch: dict, train0: bool, train_levels: Sequence[int], mask_seed: int):
        """Sum of the losses of the levels being trained; returns (loss, metrics, {level: features}).

        `batch["clip"]`: windows `[N, C, T, H, W]` (level 0 alone), long videos `[B, W, C, T, H, W]`, or
        cached level-0 features `[B, W, D0]`.
        `train_levels`: 1-based levels to train; `mask_seed` seeds their step masks (resume-exact).
        """
        loss, metrics, feats = batch["clip"].new_zeros(()), {}, {}
        clip = batch["clip"]
        if train0:
            flat = rearrange(clip, "b w c t h x -> (b w) c t h x") if clip.ndim == 6 else clip
            l0, h0 = jepa_loss(self.encoder, self.predictor, self.target,
                               {"clip": flat, "masks_ctx": batch["masks_ctx"], "masks_tgt": batch["masks_tgt"]},
                               self.loss_exp)
            loss = loss + l0
            metrics["L0/loss"] = l0.item()
            feats[0] = h0
        if clip.ndim == 5 or not train_levels:
            return loss, metrics, feats
        top = max(train_levels)
        first = self.levels[0].cfg.input_grad and 1 in train_levels
        # The input of level 1: level 0's EMA target (no gradient), or its online encoder (input_grad).
        if clip.ndim == 3:
            x = clip
        else:
            x = encode_windows(self.encoder, clip, self.pool0) if first else self.features(clip, 0)[0]
        feats[0] = x.detach()
        for k in range(1, top + 1):
            level = self.levels[k - 1]
            u = level.pool(x)
            if k in train_levels:
                g = torch.Generator().manual_seed(derive_seed(mask_seed, k))
                lk, mk, h = level_loss(level, u, g)
                loss = loss + lk
                metrics.update({f"L{k}/{n}": v for n, v in mk.items()})
                metrics[f"L{k}/loss"] = lk.item()
            else:
                h = level.targets(u)
            feats[k] = h.detach()
            upper_grad = k < top and self.levels[k].cfg.input_grad and (k + 1) in train_levels
            x = nn.functional.layer_norm(level.encoder(u), (level.embed_dim,)) if upper_grad else h
        return loss, metrics, feats


class FeatureVideos(torch.utils.data.Dataset):
    """Cached level-0 features of long videos: sample i -> {"clip": `[W, D0]`, "fast", "slow", "skipped"}."""

    def __init__(self, feats: torch.Tensor, fast: torch.Tensor, slow: torch.Tensor):
        self.feats, self.fast, self.slow = feats, fast, slow

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int) -> dict:
        return {"clip": self.feats[i], "fast": self.fast[i], "slow": self.slow[i], "skipped": 0}


@torch.no_grad()
def encode_videos(model: "HJEPA", videos: torch.utils.data.Dataset, batch_size: int, device,
                  autocast) -> FeatureVideos:
    """Level-0 target features of every video `[N, W, D0]`, with their labels."""
    feats, fast, slow = [], [], []
    for i in range(0, len(videos), batch_size):
        items = [videos[j] for j in range(i, min(len(videos), i + batch_size))]
        with autocast():
            feats.append(model.features(torch.stack([s["clip"] for s in items]).to(device), 0)[0].float().cpu())
        fast += [s["fast"] for s in items]
        slow += [s["slow"] for s in items]
    return FeatureVideos(torch.cat(feats), torch.stack(fast), torch.stack(slow))


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


def plan_stages(cfg: HJEPAConfig) -> List[tuple]:
    """[(train level 0?, levels trained)] per stage."""
    K = len(cfg.levels)
    if cfg.mode == "end_to_end":
        return [(cfg.level0.train, tuple(range(1, K + 1)))]
    stages = [(True, ())] if cfg.level0.train else []
    return stages + [(False, (k,)) for k in range(1, K + 1)]


def metric_keys(cfg: HJEPAConfig) -> List[str]:
    """A fixed column set (MetricLog fixes its columns on the first row; stages log different levels)."""
    keys = ["stage", "lr", "loss", "L0/loss", "L0/feature_std", "L0/rankme"]
    for k, lv in enumerate(cfg.levels, start=1):
        extra = {"vicreg": ["var", "cov"], "sigreg": ["sigreg"], "none": []}[lv.regularizer]
        keys += [f"L{k}/{n}" for n in ["loss", "jepa", "loss_future", "loss_masked", *extra, "feature_std", "rankme"]]
    return keys


def build(cfg: HJEPAConfig) -> HJEPA:
    check_config(cfg)
    model = HJEPA(cfg)
    if cfg.level0.checkpoint:
        state = ckpt.load(cfg.level0.checkpoint)
        ckpt.load_state_strict(model.encoder, state["encoder"], "level0 encoder")
        ckpt.load_state_strict(model.predictor, state["predictor"], "level0 predictor")
        ckpt.load_state_strict(model.target, state["target_encoder"], "level0 target_encoder")
        logger.info("level 0 loaded from %s", cfg.level0.checkpoint)
    return model


def describe(cfg: HJEPAConfig, model: HJEPA) -> str:
    lines = [to_yaml(cfg), f"mode {cfg.mode}; stages (train level 0?, levels): {plan_stages(cfg)}"]
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    sp = spans(cfg)
    lines.append(f"level 0: {cfg.level0.model.model_name} {n(model.encoder):.2f}M params, token grid "
                 f"{model.encoder.grid}, 1 window = {cfg.data.window_frames} frames, "
                 f"{cfg.data.num_windows} windows per video")
    for k, lv in enumerate(model.levels, start=1):
        lines.append(f"level {k}: stride {lv.cfg.stride} ({lv.cfg.pool}), step = {sp[k]} windows, "
                     f"{cfg.data.num_windows // sp[k]} steps per video, encoder {n(lv.encoder):.2f}M + predictor "
                     f"{n(lv.predictor):.2f}M params, regularizer {lv.cfg.regularizer}")
    return "\n".join(lines)


def set_trainable(model: HJEPA, train0: bool, train_levels: Sequence[int]) -> None:
    model.encoder.requires_grad_(train0 or (1 in train_levels and model.levels[0].cfg.input_grad))
    model.predictor.requires_grad_(train0)
    model.target.requires_grad_(False)
    for k, level in enumerate(model.levels, start=1):
        grad_from_above = k < len(model.levels) and model.levels[k].cfg.input_grad and (k + 1) in train_levels
        level.encoder.requires_grad_(k in train_levels or grad_from_above)
        level.predictor.requires_grad_(k in train_levels)
        level.target.requires_grad_(False)


def train(cfg: HJEPAConfig, dry_run: bool = False) -> Optional[Path]:
    opt = cfg.optimization
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
        ckpt.load_state_strict(model, state["model"], "hjepa model")
        step, rng = state["step"], state["rng"]
        opt_state = state["opt"] if state["opt_stage"] == step // (opt.epochs * opt.ipe) else None
        logger.info("resumed from %s at step %d", resume_from, step)
    if main:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if rng is not None:
        ckpt.set_rng_state(rng)

    per_stage = opt.epochs * opt.ipe
    total = per_stage * len(stages)
    horizon = int(opt.ipe_scale * per_stage)
    warmup = int(opt.warmup * opt.ipe)
    save_every = max(1, cfg.meta.save_every_freq * opt.ipe)
    log = MetricLog(run_dir, enabled=main, tensorboard=cfg.logging.tensorboard)
    log.truncate_after(step)
    keys = metric_keys(cfg)
    pbar = tqdm(total=total, initial=step, disable=not (main and cfg.logging.progress_bar), dynamic_ncols=True)
    transform = partial(to_float_clip, mean=cfg.level0.mean, std=cfg.level0.std)
    videos = LongVideos(cfg.data, transform=transform)
    last: Dict[str, float] = {}
    cache: Optional[FeatureVideos] = None

    while step < total:
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
        while step < (stage + 1) * per_stage:
            local = step - stage * per_stage
            lr = lr_at(local, warmup_steps=warmup, total_steps=horizon, start_lr=opt.start_lr, lr=opt.lr,
                       final_lr=opt.final_lr)
            wd = cosine_at(local, total_steps=horizon, start=opt.weight_decay, end=opt.final_weight_decay)
            set_lr_wd(optimizer, lr, wd)
            for micro in range(opt.grad_accum_steps):
                batch = next(batches)
                batch = {k: ([m.to(accelerator.device) for m in v] if isinstance(v, list) else
                             v.to(accelerator.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                with accelerator.accumulate(wrapped):
                    with accelerator.autocast():
                        loss, metrics, feats = wrapped(batch, train0, train_levels,
                                                       derive_seed(cfg.meta.seed, step, micro))
                    mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
                    if not torch.isfinite(mean_loss):
                        raise NonFiniteLoss(f"loss became {mean_loss.item()} at step {step}; stopping before "
                                            "the update. The last checkpoint is untouched.")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and opt.clip_grad:
                        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], opt.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
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
            if step % cfg.logging.log_every == 0 or step % per_stage == 0:
                last = {"stage": stage, "lr": lr, "loss": mean_loss.item(), **metrics}
                with_rank = step % cfg.logging.rankme_every == 0 or step % per_stage == 0
                for k, h in feats.items():
                    floor = cfg.logging.collapse_std_floor if k == 0 else cfg.levels[k - 1].collapse_std_floor
                    last.update({f"L{k}/{n}": v for n, v in monitor(h, f"level {k}", floor, step, with_rank).items()})
                log.log(step, {key: last.get(key, math.nan) for key in keys})
                pbar.set_postfix(stage=stage, loss=f"{last['loss']:.4f}",
                                 steps_s=f"{cfg.logging.log_every / max(time.time() - tick, 1e-9):.1f}")
                tick = time.time()
            if step % save_every == 0 or step % per_stage == 0:
                _save(accelerator, latest, inner, optimizer, step, stage, cfg)
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


def _save(accelerator, path: Path, model: HJEPA, optimizer, step: int, stage: int, cfg: HJEPAConfig) -> None:
    accelerator.wait_for_everyone()
    state = {"model": model.state_dict(), "opt": optimizer.state_dict(), "opt_stage": stage, "step": step,
             "rng": ckpt.rng_state(), "config": to_dict(cfg)}
    if accelerator.is_main_process:
        ckpt.save_atomic(state, path)
    accelerator.wait_for_everyone()
