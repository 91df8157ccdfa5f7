"""The one masked transformer block of the H-JEPA levels and the world model's predictors."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp


class MaskedBlock(nn.Module):
    """Pre-norm transformer block whose attention takes an optional boolean mask (True = may attend),
    broadcast over batch and heads: `[N, N]` (block-causal) or `[B, 1, N, N]` (per-sample).

    Args:
        dim / num_heads / mlp_ratio: width, heads, MLP hidden = mlp_ratio x dim.
        norm_eps: LayerNorm epsilon (levels use 1e-6 as the ViT; the world model's predictor 1e-5).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"block width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b n (three h e) -> three b h n e", three=3, h=self.num_heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, heads, N, head_dim]
        x = x + self.proj(rearrange(a, "b h n e -> b n (h e)"))
        return x + self.mlp(self.norm2(x))
