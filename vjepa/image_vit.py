"""Image ViT and predictor for I-JEPA: the video modules of vjepa/models.py on a one-frame grid.

The blocks, masking, predictor and parameter names are those of the video ViT; what changes is the patch
embedding (a Conv2d over `[B, C, H, W]`, as I-JEPA's, so official I-JEPA weights load as they are) and the
fixed 2-D sin-cos tables, laid out as I-JEPA's (first half of the channels from the column index, second
half from the row index: the reference names the halves the other way round, but builds them so).
Token grids are (1, h, w), so masks, `gather_tokens` and the predictor's position lookups are unchanged.

A Conv3d with a (1, p, p) kernel over a one-frame clip gives the same numbers as this Conv2d (max
difference 0.0) at the same speed (CPU, one thread, 32 x 3 x 224 x 224, patch 16: 25 ms vs 22 ms); the
Conv2d is kept because official I-JEPA checkpoints store a 4-D kernel.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from vjepa.engine import checkpoint as ckpt
from vjepa.models import VIT_SIZES, Predictor, VisionTransformer, vit_size
from vjepa.pos_embed import sincos_1d


def reference_sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """I-JEPA's fixed table `[H*W, dim]`, rows flattened w-fastest: (column half | row half)."""
    h, w = (g.flatten() for g in torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij"))
    return torch.cat([sincos_1d(dim // 2, w), sincos_1d(dim // 2, h)], dim=1).float()


class ImageViT(VisionTransformer):
    """ViT over images `[B, C, H, W]` (I-JEPA encoder). Returns tokens `[B, N, D]`, N = (H/p) * (W/p).

    Args:
        img_size: height = width in pixels. patch_size: pixels per patch side.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate, init_std,
        use_activation_checkpointing: as `VisionTransformer`.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, init_std: float = 0.02, use_activation_checkpointing: bool = False):
        super().__init__(img_size=img_size, num_frames=1, patch_size=patch_size, tubelet_size=1, in_chans=in_chans,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         drop_path_rate=drop_path_rate, init_std=init_std, use_rope=False,
                         use_activation_checkpointing=use_activation_checkpointing)
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        trunc_normal_(self.patch_embed.proj.weight, std=init_std)
        nn.init.zeros_(self.patch_embed.proj.bias)
        self.pos_embed.data.copy_(reference_sincos_2d(embed_dim, *self.grid[1:]).unsqueeze(0))

    def patchify(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        if x.ndim == 5 and x.shape[2] == 1:  # a one-frame clip [B, C, 1, H, W]
            x = x.squeeze(2)
        if x.ndim != 4:
            raise ValueError(f"ImageViT takes images [B, C, H, W], got shape {tuple(x.shape)}")
        grid = (1, x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        return self.patch_embed.proj(x).flatten(2).transpose(1, 2), grid  # [B, N, D]


class ImagePredictor(Predictor):
    """I-JEPA predictor: one learnable mask token (trunc-normal init, as I-JEPA), I-JEPA's 2-D table.

    Args:
        grid: (h, w) patch grid. The rest as `Predictor`.
    """

    def __init__(self, grid: Tuple[int, int], embed_dim: int = 768, pred_embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 init_std: float = 0.02, use_activation_checkpointing: bool = False):
        super().__init__(grid=(1, *grid), embed_dim=embed_dim, pred_embed_dim=pred_embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=drop_path_rate,
                         init_std=init_std, num_mask_tokens=1, zero_init_mask_tokens=False,
                         use_activation_checkpointing=use_activation_checkpointing)
        self.predictor_pos_embed.data.copy_(reference_sincos_2d(pred_embed_dim, *grid).unsqueeze(0))


def build_image_models(model_name: str, img_size: int, patch_size: int, pred_depth: int, pred_emb_dim: int,
                       pred_num_heads: Optional[int] = None, drop_path_rate: float = 0.0,
                       use_activation_checkpointing: bool = False) -> Tuple[ImageViT, ImagePredictor]:
    """I-JEPA encoder + predictor. The predictor's heads default to the encoder's, as the reference."""
    size = vit_size(model_name)
    encoder = ImageViT(img_size=img_size, patch_size=patch_size, embed_dim=size.embed_dim, depth=size.depth,
                       num_heads=size.num_heads, mlp_ratio=size.mlp_ratio, drop_path_rate=drop_path_rate,
                       use_activation_checkpointing=use_activation_checkpointing)
    predictor = ImagePredictor(encoder.grid[1:], embed_dim=size.embed_dim, pred_embed_dim=pred_emb_dim,
                               depth=pred_depth, num_heads=pred_num_heads or size.num_heads,
                               use_activation_checkpointing=use_activation_checkpointing)
    return encoder, predictor


def image_geometry(state: Mapping[str, torch.Tensor], *, model_name: Optional[str] = None,
                   img_size: Optional[int] = None, patch_size: Optional[int] = None,
                   num_heads: Optional[int] = None) -> dict:
    """`ImageViT` keyword arguments that match an image encoder's state dict (Conv2d patch embedding and
    a stored 2-D table, as I-JEPA's). The table fixes the grid; other image sizes go through its resize."""
    w = state["patch_embed.proj.weight"]  # [D, C, p, p]
    D, C, p, _ = w.shape
    if patch_size is not None and patch_size != p:
        raise ckpt.CheckpointMismatch(f"patch_size={patch_size} but the checkpoint's patch embedding has {p}")
    if "pos_embed" not in state:
        raise ckpt.CheckpointMismatch("image encoder without a pos_embed table: not an I-JEPA encoder")
    depth = len({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    n = state["pos_embed"].shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ckpt.CheckpointMismatch(f"pos_embed has {n} tokens: not a square grid")
    if img_size is not None and img_size // p != side:
        raise ckpt.CheckpointMismatch(f"img_size={img_size} gives a {img_size // p}-patch side, the checkpoint's "
                                      f"table {side}")
    if model_name is not None:
        size = vit_size(model_name)
        if (size.embed_dim, size.depth) != (D, depth):
            raise ckpt.CheckpointMismatch(f"model_name {model_name} is {size.embed_dim} wide and {size.depth} deep, "
                                          f"the checkpoint {D} and {depth}")
    heads = num_heads or next((s.num_heads for n_, s in VIT_SIZES.items() if (s.embed_dim, s.depth) == (D, depth)
                               and (model_name is None or n_ == model_name)), None)
    if heads is None:
        raise ValueError(f"cannot tell the head count of a {D}-wide, {depth}-deep encoder: pass num_heads")
    return dict(img_size=side * p, patch_size=p, in_chans=C, embed_dim=D, depth=depth, num_heads=heads,
                mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / D if depth else 4.0)

