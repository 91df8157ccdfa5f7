"""Frame encoders of the world model's level 0: observation `[B, C, S, S]` -> state vector `[B, D]`.

"conv" is a small CNN (the fast CPU default, trained jointly with the predictor); "vjepa" is the project's
own V-JEPA video ViT (`vjepa.models`), optionally loaded from a `task: pretrain` checkpoint and frozen, as
V-JEPA 2-AC plans on a frozen pretrained encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa.engine import checkpoint as ckpt
from vjepa.models import ModelConfig, build_encoder


@dataclass
class EncoderConfig:
    """Args:
        type: "conv" (small CNN, CPU runs) or "vjepa" (the V-JEPA video ViT of vjepa.models, mean-pooled).
        dim: representation width (conv only; the ViT gives its embed_dim). Small on purpose: the state is
        2-D, and with 32 dims the VICReg-spread features saturated (latent distance flat beyond ~0.2 of
        travel, correlation with position distance 0.67); 8 dims gave a near-metric map (0.94).
        width: conv channels. vit: ViT shape (model_name etc.). patch_size / tubelet_size: ViT tokenisation.
        checkpoint: V-JEPA checkpoint to load (its `target_encoder`, else `encoder`). frozen: no training.
    """

    type: str = "conv"
    dim: int = 8
    width: int = 32
    vit: ModelConfig = field(default_factory=lambda: ModelConfig(model_name="vit_micro"))
    patch_size: int = 8
    tubelet_size: int = 2
    checkpoint: Optional[str] = None
    frozen: bool = False


class ConvEncoder(nn.Module):
    """Image `[B, C, S, S]` -> vector `[B, D]`: a 4x4 stride-4 patchify convolution (as a ViT patch
    embedding; the agent disc is ~5 pixels wide, so no detail is lost), two stride-2 convolutions
    (S/4 -> S/16) and a linear head. About 30x cheaper than four stride-2 layers, which matters on CPU."""

    def __init__(self, in_chans: int = 3, dim: int = 32, width: int = 32, img_size: int = 64):
        super().__init__()
        # BatchNorm because frames differ only in a few agent pixels while the walls are constant: batch
        # statistics remove the shared part, so features vary across states from the first step and the
        # variance regulariser has a gradient to work with (without it the encoder starts collapsed).
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, width // 2, 4, stride=4), nn.BatchNorm2d(width // 2), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.GELU(),
        )
        self.head = nn.Linear(width * (img_size // 16) ** 2, dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))  # [B, C, H, W] -> [B, D]


class VJEPAEncoder(nn.Module):
    """The V-JEPA ViT on single frames, tokens mean-pooled and layer-normed (as V-JEPA 2-AC normalises)."""

    def __init__(self, cfg: EncoderConfig, img_size: int):
        super().__init__()
        self.vit = build_encoder(cfg.vit, img_size=img_size, num_frames=cfg.tubelet_size,
                                 patch_size=cfg.patch_size, tubelet_size=cfg.tubelet_size)
        self.dim = self.vit.embed_dim
        if cfg.checkpoint:
            state = ckpt.load(cfg.checkpoint)
            key = "target_encoder" if "target_encoder" in state else "encoder"
            ckpt.load_state_strict(self.vit, state[key], f"{cfg.checkpoint}:{key}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.vit(x)  # [B, N, D]
        return F.layer_norm(h.mean(1), (self.dim,))


def build_frame_encoder(cfg: EncoderConfig, img_size: int) -> nn.Module:
    if cfg.type == "conv":
        if img_size % 16:
            raise ValueError(f"conv encoder needs img_size divisible by 16, got {img_size}")
        return ConvEncoder(3, cfg.dim, cfg.width, img_size)
    if cfg.type == "vjepa":
        return VJEPAEncoder(cfg, img_size)
    raise ValueError(f"encoder.type {cfg.type!r} unknown; valid: ['conv', 'vjepa']")
