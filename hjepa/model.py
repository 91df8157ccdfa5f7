"""The H-JEPA model: level 0 (the V-JEPA video encoder, predictor and EMA target) and the temporal levels
above it (hjepa/levels.py), its config, and level-0 feature caching. Trained by hjepa/train.py."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from einops import rearrange

from data.generated.long_videos import LongVideoConfig, validate
from data.masks import MaskConfig
from data.seeding import derive_seed
from hjepa.levels import WINDOW_POOLS, Level, LevelConfig, encode_windows, level_loss, validate_level
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import to_yaml
from vjepa.engine.sections import EpochMetaConfig, LoggingConfig, OptimizationConfig
from vjepa.models import ModelConfig, build_encoder, build_predictor
from vjepa.objective import LossConfig, jepa_loss

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
        mode: `stagewise` or `end_to_end`. batch_size: long videos per step and process (levels >= 1).
        num_workers: DataLoader workers.
        optimization / meta / logging: the engine's shared sections; `meta.max_steps` counts steps over
            all stages. The EMA momenta are per level (`level0.ema`, `levels[k].ema`).
    """

    # Accepted and ignored before the engine (the value every config then carried): dropped on load.
    RETIRED_KEYS: ClassVar[Dict[str, Any]] = {"optimization.ema": [0.99, 1.0], "meta.eval_freq": 100,
                                               "logging.knn_monitor": False}

    task: str = "hjepa"
    mode: str = "stagewise"
    data: LongVideoConfig = field(default_factory=LongVideoConfig)
    batch_size: int = 8
    num_workers: int = 0
    level0: Level0Config = field(default_factory=Level0Config)
    levels: List[LevelConfig] = field(default_factory=lambda: [LevelConfig(stride=2), LevelConfig(stride=2)])
    optimization: OptimizationConfig = field(default_factory=lambda: OptimizationConfig(
        ipe=100, epochs=3, warmup=0.5, start_lr=2e-4, lr=1e-3, final_lr=1e-5, clip_grad=10.0))
    meta: EpochMetaConfig = field(default_factory=lambda: EpochMetaConfig(seed=0, dtype="bfloat16", save_every_freq=1))
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
            l0, h0, _ = jepa_loss(self.encoder, self.predictor, self.target,
                                  {"clip": flat, "masks_ctx": batch["masks_ctx"], "masks_tgt": batch["masks_tgt"]},
                                  LossConfig(loss_exp=self.loss_exp))
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


def plan_stages(cfg: HJEPAConfig) -> List[tuple]:
    """[(train level 0?, levels trained)] per stage."""
    K = len(cfg.levels)
    if cfg.mode == "end_to_end":
        return [(cfg.level0.train, tuple(range(1, K + 1)))]
    stages = [(True, ())] if cfg.level0.train else []
    return stages + [(False, (k,)) for k in range(1, K + 1)]


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


