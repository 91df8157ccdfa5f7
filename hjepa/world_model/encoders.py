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

from data.config import DataAugConfig
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
        static_dim: the last `static_dim` of the `dim` channels are scene channels (walls): regularised to stay
            constant within an episode and to differ across scenes (`loss.static`); the rest is the agent's state.
    """

    type: str = "conv"
    dim: int = 8
    width: int = 32
    vit: ModelConfig = field(default_factory=lambda: ModelConfig(model_name="vit_micro"))
    patch_size: int = 8
    tubelet_size: int = 2
    checkpoint: Optional[str] = None
    frozen: bool = False
    static_dim: int = 0


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
    """The V-JEPA ViT on single frames `[B, C, S, S]` in [0, 1] -> `[B, D]`.

    A frame is normalised with the pretraining's mean/std (the pretraining job normalises its clips the
    same way) and encoded as one tubelet: the ViT repeats an image `tubelet_size` times (V-JEPA 2-AC feeds
    its frames to the video encoder the same way). Tokens are mean-pooled and layer-normed (as V-JEPA 2-AC
    normalises). A checkpoint of a `task: pretrain` run holds the sin-cos table of its whole clip; a frame
    takes its first tubelet's slice, the positions the encoder saw for frames 0..tubelet_size-1.
    """

    def __init__(self, cfg: EncoderConfig, img_size: int):
        super().__init__()
        self.vit = build_encoder(cfg.vit, img_size=img_size, num_frames=cfg.tubelet_size,
                                 patch_size=cfg.patch_size, tubelet_size=cfg.tubelet_size)
        self.dim = self.vit.embed_dim
        aug = DataAugConfig()
        mean, std = aug.mean, aug.std
        if cfg.checkpoint:
            weights, mean, std = pretrained_weights(ckpt.load(cfg.checkpoint), cfg, img_size, self.vit)
            try:
                ckpt.load_state_strict(self.vit, weights, f"{cfg.checkpoint}")
            except ckpt.CheckpointMismatch as e:
                raise ckpt.CheckpointMismatch(f"{cfg.checkpoint}: its ViT does not fit encoder.vit / encoder.patch_size"
                                              f" / encoder.tubelet_size / data.env.img_size ({_first_shape(e)})") from e
        # not persistent: the statistics come with the pretraining config, not with world-model checkpoints
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # Output standardisation, identity until `standardize_` fixes it (saved with the world model). The pooled
        # feature of a frame is mostly walls and floor, the same in every frame: the agent moves a few of 64
        # tokens, so across states each dimension varies by ~0.003 of its scale (two_rooms, vit_micro) and a
        # predictor reading it sees a near-constant input. Standardised, the same features vary by 1 (it did not
        # make the frozen two_rooms model plan, README: the pooled feature is no map of the position).
        self.register_buffer("out_mean", torch.zeros(self.dim))
        self.register_buffer("out_std", torch.ones(self.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.vit((x - self.mean) / self.std)  # [B, N, D], N = (S / patch)^2 tokens of one tubelet
        return (F.layer_norm(h.mean(1), (self.dim,)) - self.out_mean) / self.out_std

    @torch.no_grad()
    def standardize_(self, z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Fix the output map so that features `z [..., D]` (this encoder's current outputs on training
        frames) get zero mean and unit std per dimension; -> `z` under the new map. A frozen encoder stays
        frozen: this is a fixed affine map, fitted once, like a BatchNorm's running statistics."""
        raw = z.reshape(-1, self.dim).double() * self.out_std.double() + self.out_mean.double()  # undo the old map
        self.out_mean.copy_(raw.mean(0).to(self.out_mean.dtype))
        self.out_std.copy_((raw.std(0) + eps).to(self.out_std.dtype))
        return ((raw - self.out_mean.double()) / self.out_std.double()).to(z.dtype).view_as(z)


def _first_shape(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines[1:]) if len(lines) > 1 else lines[0]


def pretrained_weights(state: dict, cfg: EncoderConfig, img_size: int, vit: nn.Module):
    """A `task: pretrain` checkpoint -> (ViT weights for one-tubelet frames, mean, std).

    Checks the pretraining config against the encoder's keys first, so a mismatch is one line naming the
    keys to change, not a list of tensor shapes."""
    path = cfg.checkpoint
    key = next((k for k in ("target_encoder", "encoder") if k in state), None)
    if key is None:
        raise ckpt.CheckpointMismatch(f"{path} holds no V-JEPA encoder (keys: {sorted(state)[:6]}); encoder.checkpoint "
                                      f"must be a `task: pretrain` checkpoint (<run>/jepa-latest.pt)")
    aug = DataAugConfig()
    mean, std = aug.mean, aug.std
    pre = state.get("config")
    if isinstance(pre, dict) and isinstance(pre.get("model"), dict) and isinstance(pre.get("data"), dict):
        pairs = [("encoder.vit.model_name", cfg.vit.model_name, "model.model_name", pre["model"].get("model_name")),
                 ("encoder.vit.use_rope", cfg.vit.use_rope, "model.use_rope", pre["model"].get("use_rope")),
                 ("encoder.vit.uniform_power", cfg.vit.uniform_power, "model.uniform_power",
                  pre["model"].get("uniform_power")),
                 ("encoder.patch_size", cfg.patch_size, "data.patch_size", pre["data"].get("patch_size")),
                 ("encoder.tubelet_size", cfg.tubelet_size, "data.tubelet_size", pre["data"].get("tubelet_size")),
                 ("data.env.img_size", img_size, "data.crop_size", pre["data"].get("crop_size"))]
        bad = [f"{ours}={mine} vs {theirs}={its}" for ours, mine, theirs, its in pairs if its is not None and mine != its]
        if bad:
            raise ckpt.CheckpointMismatch(f"{path} was pretrained with another ViT: {', '.join(bad)}; set the world "
                                          f"model's keys to the pretraining config's")
        aug_cfg = pre.get("data_aug") if isinstance(pre.get("data_aug"), dict) else {}
        mean, std = aug_cfg.get("mean", mean), aug_cfg.get("std", std)
    weights = dict(state[key])
    own = vit.state_dict().get("pos_embed")
    pos = weights.get("pos_embed")
    if own is not None and pos is not None and pos.shape != own.shape and pos.shape[0] == 1 \
            and pos.shape[2] == own.shape[2] and pos.shape[1] % own.shape[1] == 0:
        weights["pos_embed"] = pos[:, :own.shape[1]]  # [1, T*H*W, D] -> the t = 0 slice [1, H*W, D]
    return weights, list(mean), list(std)


def build_frame_encoder(cfg: EncoderConfig, img_size: int) -> nn.Module:
    if cfg.type == "conv":
        if img_size % 16:
            raise ValueError(f"conv encoder needs img_size divisible by 16, got {img_size}")
        return ConvEncoder(3, cfg.dim, cfg.width, img_size)
    if cfg.type == "vjepa":
        return VJEPAEncoder(cfg, img_size)
    raise ValueError(f"encoder.type {cfg.type!r} unknown; valid: ['conv', 'vjepa']")
