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
from einops import rearrange

from data.config import DataAugConfig
from hjepa.world_model.spatial import ConvMapEncoder
from vjepa.engine import checkpoint as ckpt
from vjepa.models import ModelConfig, build_encoder


@dataclass
class EncoderConfig:
    """Args:
        type: "conv" (small CNN, CPU runs), "conv_map" (a CNN that keeps a `map_size` x `map_size` feature map
        of `dim` channels per cell; the state is the map flattened, dim x map_size^2 wide: spatial.py) or
        "vjepa" (the V-JEPA video ViT of vjepa.models, mean-pooled).
        dim: representation width: the conv encoder's, or the trained head's on a frozen backbone (`head` not
        "none"; with no head the ViT gives its embed_dim). Small on purpose: the state is
        2-D, and with 32 dims the VICReg-spread features saturated (latent distance flat beyond ~0.2 of
        travel, correlation with position distance 0.67); 8 dims gave a near-metric map (0.94).
        width: conv channels. vit: ViT shape (model_name etc.). patch_size / tubelet_size: ViT tokenisation.
        checkpoint: V-JEPA checkpoint to load (its `target_encoder`, else `encoder`). frozen: no training.
        static_dim: the last `static_dim` of the `dim` channels are scene channels (walls): regularised to stay
            constant within an episode and to differ across scenes (`loss.static`); the rest is the agent's state.
        head: "none" | "linear" | "mlp": a head trained with the predictor on the frozen encoder's output
        (needs frozen: true); the state is the head's `dim`-d output, the backbone stays frozen in eval mode.
        grid: the ViT's patch tokens are average-pooled to grid x grid cells (each layer-normed, concatenated:
        grid^2 x embed_dim features); 1 = one mean-pooled vector.
        cache_dir: where a frozen encoder's outputs on the training dataset are cached (feature_cache.py;
        None = encode at every run, still once per run).
        map_size: conv_map only, the map's cells per side (must divide data.env.img_size).
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
    head: str = "none"
    grid: int = 1
    cache_dir: Optional[str] = "data_cache/features"
    map_size: int = 8

    def __post_init__(self):
        if self.type not in ENCODERS:
            raise ValueError(f"encoder.type {self.type!r} unknown; valid: {list(ENCODERS)}")
        if self.type == "conv_map" and (self.head != "none" or self.static_dim):
            raise ValueError("encoder.type conv_map keeps the map as the state: it takes no encoder.head and no "
                             "encoder.static_dim")
        if self.head not in HEADS:
            raise ValueError(f"encoder.head {self.head!r} unknown; valid: {list(HEADS)}")
        if self.head != "none" and not self.frozen:
            raise ValueError("encoder.head trains on a frozen encoder: set encoder.frozen: true (or head: none)")
        if self.grid < 1 or (self.grid > 1 and self.type != "vjepa"):
            raise ValueError(f"encoder.grid {self.grid}: must be >= 1, and 1 unless encoder.type is vjepa (token grid)")


HEADS = ("none", "linear", "mlp")
ENCODERS = ("conv", "conv_map", "vjepa")


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
        if (img_size // cfg.patch_size) % cfg.grid:
            raise ValueError(f"encoder.grid {cfg.grid} must divide the {img_size // cfg.patch_size} x "
                             f"{img_size // cfg.patch_size} token grid (data.env.img_size / encoder.patch_size)")
        self.grid, self.tokens = cfg.grid, img_size // cfg.patch_size
        self.embed_dim = self.vit.embed_dim
        self.dim = self.embed_dim * cfg.grid ** 2
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
        # make the frozen two_rooms model plan, docs/world_model.md: the pooled feature is no map of the position).
        self.register_buffer("out_mean", torch.zeros(self.dim))
        self.register_buffer("out_std", torch.ones(self.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.vit((x - self.mean) / self.std)  # [B, N, D], N = (S / patch)^2 tokens of one tubelet
        if self.grid == 1:
            pooled = F.layer_norm(h.mean(1), (self.embed_dim,))
        else:  # [B, H*W, D] -> [B, g*g, D] cell means, each layer-normed -> [B, g*g*D]
            cells = F.adaptive_avg_pool2d(rearrange(h, "b (y x) d -> b d y x", y=self.tokens), self.grid)
            pooled = F.layer_norm(rearrange(cells, "b d y x -> b (y x) d"), (self.embed_dim,)).flatten(1)
        return (pooled - self.out_mean) / self.out_std

    @torch.no_grad()
    def standardize_(self, z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Fix the output map so that features `z [..., D]` (this encoder's current outputs on training
        frames) get zero mean and unit std per dimension; -> `z` under the new map. A frozen encoder stays
        frozen: this is a fixed affine map, fitted once, like a BatchNorm's running statistics."""
        raw = z.reshape(-1, self.dim).double() * self.out_std.double() + self.out_mean.double()  # undo the old map
        self.out_mean.copy_(raw.mean(0).to(self.out_mean.dtype))
        self.out_std.copy_((raw.std(0) + eps).to(self.out_std.dtype))
        return ((raw - self.out_mean.double()) / self.out_std.double()).to(z.dtype).view_as(z)


class HeadedEncoder(nn.Module):
    """A frozen backbone (any frame encoder `[B, C, S, S]` -> `[B, F]`) and a trained head `[B, F]` -> `[B, D]`.

    The backbone gets no gradient and stays in eval mode whatever `train()` is called with (its dropout,
    BatchNorm statistics and outputs never change), so its outputs can be cached once per dataset
    (`feature_cache.encode_dataset(enc.backbone, ...)`) and the head run on them: `head(features)`.
    A BatchNorm first (running statistics in eval mode, as the conv encoder's): each frozen feature varies
    little across states (the agent moves a few tokens) around a large shared part; standardised per
    dimension, the variation is what the head sees.
    """

    def __init__(self, backbone: nn.Module, kind: str, dim: int):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        F_in = backbone.dim
        if kind == "linear":
            self.head = nn.Sequential(nn.BatchNorm1d(F_in), nn.Linear(F_in, dim))
        elif kind == "mlp":
            self.head = nn.Sequential(nn.BatchNorm1d(F_in), nn.Linear(F_in, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        else:
            raise ValueError(f"head {kind!r} unknown; valid: ['linear', 'mlp']")
        self.dim = dim

    def train(self, mode: bool = True) -> "HeadedEncoder":
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


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
        enc = ConvEncoder(3, cfg.dim, cfg.width, img_size)
    elif cfg.type == "conv_map":
        enc = ConvMapEncoder(3, cfg.dim, cfg.width, img_size, cfg.map_size)
    elif cfg.type == "vjepa":
        enc = VJEPAEncoder(cfg, img_size)
    else:
        raise ValueError(f"encoder.type {cfg.type!r} unknown; valid: {list(ENCODERS)}")
    return enc if cfg.head == "none" else HeadedEncoder(enc, cfg.head, cfg.dim)


def frozen_part(encoder: nn.Module) -> nn.Module:
    """The part of a frozen frame encoder whose outputs can be cached: a headed encoder's backbone, else all of it."""
    return encoder.backbone if isinstance(encoder, HeadedEncoder) else encoder


def from_features(encoder: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """The encoder's output from its `frozen_part`'s cached output `f [..., F]` -> `[..., D]`."""
    if not isinstance(encoder, HeadedEncoder):
        return f
    return encoder.head(f.reshape(-1, f.shape[-1])).view(*f.shape[:-1], encoder.dim)
