"""I-JEPA (Assran et al. 2023): image pretraining as a mode of the pretraining job (vjepa/pretrain.py).

A context encoder sees one large context block of an image with every target patch removed; the EMA
target encoder sees the whole image; a narrow predictor, queried with the positions of the target blocks,
predicts the target encoder's layer-normed features there. Against V-JEPA: images, not clips (no time
axis; 2-D patches and tables, vjepa/image_vit.py); 2-D multi-block masks with an explicit context block
(data/ijepa_masks.py); smooth-L1 (the reference code) or L2 (the paper) instead of L1. The loop, the
schedules (warmup + cosine LR, cosine weight decay, linear EMA), checkpoints and resume are the
pretraining job's: `train` below is `vjepa.pretrain.train`, whose `pick_mode` makes this module the
mode when `task: ijepa` (it supplies `build_models`, `build_collator`, `build_train_dataset`, `objective`
and `describe`).

The config keeps the reference's layout and key names (`data`, `mask`, `meta`, `optimization`,
`logging`), so facebookresearch/ijepa YAMLs run unchanged; `loss:` is this project's addition. Every key
is honoured: `optimization` and `logging` are the pretraining job's sections (vjepa/engine/sections.py);
`meta` keeps the reference's `use_bfloat16` where the shared section says `dtype`, so it is a section of
its own with the shared keys' names and meanings. The reference's `meta.copy_data` (copy the dataset to
local disk on the cluster) changes nothing a run computes; it is dropped with a notice, as the engine
drops V-JEPA's launcher keys.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

from data.ijepa_masks import IJEPAMaskCollator, IJEPAMaskConfig, mask_summary
from data.images import ImageDataConfig, build_image_dataset
from vjepa.engine.config import to_yaml
from vjepa.engine.sections import LoggingConfig
from vjepa.image_vit import build_image_models
from vjepa.models import gather_tokens
from vjepa.pretrain import PretrainOptimizationConfig, count_params
from vjepa.pretrain import train as _pretrain

logger = logging.getLogger(__name__)

LOSSES = {"smooth_l1": F.smooth_l1_loss, "l2": F.mse_loss}


@dataclass
class IJEPAMetaConfig:
    """The reference `meta:` section, plus this project's run controls.

    Args:
        model_name: encoder size (`vjepa.models.VIT_SIZES`). pred_depth / pred_emb_dim: predictor shape.
        pred_num_heads: predictor heads (None = the encoder's, as the reference).
        use_bfloat16: bf16 autocast on GPU (CPU runs fp32); the shared section's `dtype` under the reference's name.
        seed, load_checkpoint, read_checkpoint, save_every_freq (epochs), max_steps: as the shared
            `vjepa.engine.sections.EpochMetaConfig`.
        compile: `torch.compile` encoder, predictor and target (None = on CUDA, off on CPU), as the
            pretraining job's `meta.compile` (vjepa/engine/speed.py).
    """

    model_name: str = "vit_base"
    pred_depth: int = 6
    pred_emb_dim: int = 384
    pred_num_heads: Optional[int] = None
    drop_path_rate: float = 0.0
    use_activation_checkpointing: bool = False
    use_bfloat16: bool = False
    seed: int = 0
    load_checkpoint: bool = False
    read_checkpoint: Optional[str] = None
    save_every_freq: int = 50
    max_steps: Optional[int] = None
    compile: Optional[bool] = None

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.use_bfloat16 else "float32"


@dataclass
class IJEPAOptimizationConfig(PretrainOptimizationConfig):
    """The pretraining job's `optimization:` keys with I-JEPA's published defaults (ViT-H/14, 300 epochs). `ipe`
    (steps per epoch) defaults to the dataset's length over the global batch, as the reference; no
    gradient clipping, as the reference."""

    ipe: Optional[int] = None
    ipe_scale: float = 1.0
    epochs: int = 300
    warmup: float = 40
    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    clip_grad: Optional[float] = None
    ema: List[float] = field(default_factory=lambda: [0.996, 1.0])


@dataclass
class IJEPALossConfig:
    """type: `smooth_l1` (the reference code) or `l2` (the paper), averaged over target tokens and channels."""

    type: str = "smooth_l1"


@dataclass
class IJEPAConfig:
    task: str = "ijepa"
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    mask: IJEPAMaskConfig = field(default_factory=IJEPAMaskConfig)
    meta: IJEPAMetaConfig = field(default_factory=IJEPAMetaConfig)
    optimization: IJEPAOptimizationConfig = field(default_factory=IJEPAOptimizationConfig)
    loss: IJEPALossConfig = field(default_factory=IJEPALossConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def validate(cfg: IJEPAConfig) -> None:
    if cfg.loss.type not in LOSSES:
        raise ValueError(f"loss.type must be one of {sorted(LOSSES)}, got {cfg.loss.type!r}")
    if cfg.data.crop_size % cfg.mask.patch_size:
        raise ValueError(f"data.crop_size {cfg.data.crop_size} is not a multiple of mask.patch_size {cfg.mask.patch_size}")


def build_models(cfg: IJEPAConfig):
    validate(cfg)
    m = cfg.meta
    encoder, predictor = build_image_models(m.model_name, cfg.data.crop_size, cfg.mask.patch_size, m.pred_depth,
                                            m.pred_emb_dim, m.pred_num_heads, m.drop_path_rate,
                                            m.use_activation_checkpointing)
    target = copy.deepcopy(encoder).requires_grad_(False).eval()
    return encoder, predictor, target


def build_collator(cfg: IJEPAConfig, grid) -> IJEPAMaskCollator:
    return IJEPAMaskCollator(cfg.mask, tuple(grid[1:]), cfg.meta.seed)


def build_train_dataset(cfg: IJEPAConfig, world_size: int):
    """The training images; sets `optimization.ipe` to one pass over them when it is not given."""
    dataset = build_image_dataset(cfg.data, train=True)
    if cfg.optimization.ipe is None:
        cfg.optimization.ipe = max(1, len(dataset) // (cfg.data.batch_size * world_size))
        logger.info("optimization.ipe = %d steps per epoch (%d images)", cfg.optimization.ipe, len(dataset))
    return dataset


def ijepa_loss(encoder, predictor, target, batch: dict, loss_type: str = "smooth_l1"):
    """Returns (loss, layer-normed target features `[B, N, D]`).

    The target blocks of one context are predicted in one predictor call, stacked along the batch
    (block j in rows j*B .. (j+1)*B), as the reference does."""
    imgs, masks_ctx, masks_tgt = batch["clip"], batch["masks_ctx"], batch["masks_tgt"]
    with torch.no_grad():
        h = target(imgs)  # [B, N, D]
        h = F.layer_norm(h, (h.shape[-1],))
    n_tgt = len(masks_tgt)
    tgt = torch.cat(masks_tgt, dim=0)  # [n_tgt * B, K_tgt]
    h_tgt = torch.cat([gather_tokens(h, m) for m in masks_tgt], dim=0)  # [n_tgt * B, K_tgt, D]
    z = encoder(imgs, list(masks_ctx))  # list over context blocks of [B, K_ctx, D]
    loss = 0.0
    for zc, mc in zip(z, masks_ctx):
        pred = predictor(zc.repeat(n_tgt, 1, 1), mc.repeat(n_tgt, 1), tgt)  # [n_tgt * B, K_tgt, D]
        loss = loss + LOSSES[loss_type](pred.float(), h_tgt.float())
    return loss / len(z), h


def objective(encoder, predictor, target, batch: dict, loss_cfg: IJEPALossConfig):
    """The step's objective for `optimizer_step`: (loss, {"h": layer-normed target features `[B, N, D]`})."""
    loss, h = ijepa_loss(encoder, predictor, target, batch, loss_cfg.type)
    return loss, {"h": h}


def describe(cfg: IJEPAConfig, encoder, predictor, collator: IJEPAMaskCollator) -> str:
    """Resolved config, parameter counts and the mask statistics of one (placeholder) batch."""
    _, gh, gw = encoder.grid
    lines = [to_yaml(cfg),
             f"encoder {cfg.meta.model_name}/{cfg.mask.patch_size} at {cfg.data.crop_size}px: "
             f"{count_params(encoder) / 1e6:.1f}M trainable params, token grid {gh}x{gw} = {gh * gw} tokens",
             f"predictor ({cfg.meta.pred_depth} x {cfg.meta.pred_emb_dim}): {count_params(predictor) / 1e6:.1f}M "
             "trainable params"]
    batch = collator([{"clip": torch.zeros(3, 1, 1), "label": 0, "seed": i, "step": 0}
                      for i in range(cfg.data.batch_size)])
    lines += mask_summary(batch, gh * gw)
    return "\n".join(lines)


def train(cfg: IJEPAConfig, dry_run: bool = False):
    """I-JEPA pretraining: the pretraining job's loop in I-JEPA mode."""
    return _pretrain(cfg, dry_run=dry_run)
