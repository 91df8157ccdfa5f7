"""Building blocks shared by the H-JEPA levels and the world model: the one masked transformer block, the
block-causal action-conditioned predictor (V-JEPA 2-AC style) and the macro-action encoder."""
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


def block_causal_mask(frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """bool `[n, n]`, n = frames x tokens_per_frame: token i may attend to j iff frame(j) <= frame(i)."""
    f = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
    return f[None, :] <= f[:, None]


class ACPredictor(nn.Module):
    """Block-causal action-conditioned predictor: (z `[B, T, D]`, a `[B, T, A]`) -> z_next `[B, T, D]`.

    Output t is a prediction of z_{t+1} from z_{<=t} and a_{<=t}; it is z_t plus a learned change,
    since most of a step's representation carries over.

    Args:
        repr_dim: D. action_dim: A. dim / depth / num_heads: transformer shape. max_frames: longest context.
    """

    def __init__(self, repr_dim: int, action_dim: int, dim: int = 64, depth: int = 2, num_heads: int = 4,
                 max_frames: int = 16):
        super().__init__()
        self.max_frames = max_frames
        self.state_in, self.action_in = nn.Linear(repr_dim, dim), nn.Linear(action_dim, dim)
        self.time_embed = nn.Parameter(torch.zeros(1, max_frames, 1, dim))
        self.type_embed = nn.Parameter(torch.zeros(1, 1, 2, dim))
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.blocks = nn.ModuleList(MaskedBlock(dim, num_heads, norm_eps=1e-5) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, repr_dim)
        nn.init.zeros_(self.out.weight)  # start as the identity dynamics z_{t+1} = z_t
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        B, T, _ = z.shape
        if T > self.max_frames:
            raise ValueError(f"context of {T} frames exceeds predictor max_frames {self.max_frames}")
        tok = torch.stack([self.action_in(a), self.state_in(z)], dim=2)  # [B, T, 2, d]
        tok = tok + self.time_embed[:, :T] + self.type_embed
        x = rearrange(tok, "b t k d -> b (t k) d")
        mask = block_causal_mask(T, 2, z.device)
        for blk in self.blocks:
            x = blk(x, mask)
        x = rearrange(self.norm(x), "b (t k) d -> b t k d", k=2)[:, :, 1]  # state tokens [B, T, d]
        return z + self.out(x)

    def rollout(self, z_ctx: torch.Tensor, actions: torch.Tensor, context: Optional[int] = None) -> torch.Tensor:
        """Imagine: z_ctx `[B, C, D]` observed, actions `[B, C-1+H, A]` (past ones, then H to come)
        -> predicted z `[B, H, D]` for the H steps after the last observed frame. Predictions are fed back;
        `context` caps the frames the predictor sees (the most recent ones) to bound the cost."""
        C = z_ctx.shape[1]
        H = actions.shape[1] - (C - 1)
        if H < 1:
            raise ValueError(f"rollout needs more actions ({actions.shape[1]}) than past frames ({C - 1})")
        context = min(context or self.max_frames, self.max_frames)
        zs, preds = list(z_ctx.unbind(1)), []
        for h in range(H):
            t = C - 1 + h  # index of the newest frame
            lo = max(0, t + 1 - context)
            z_next = self.forward(torch.stack(zs[lo:t + 1], 1), actions[:, lo:t + 1])[:, -1]
            zs.append(z_next)
            preds.append(z_next)
        return torch.stack(preds, 1)


class MacroActionEncoder(nn.Module):
    """Action chunk `[B, stride, A]` -> macro-action `[B, m]` in [-1, 1] (tanh keeps codes bounded,
    which gives the level-1 planner a box to search in)."""

    def __init__(self, stride: int, action_dim: int, macro_dim: int, hidden: int = 64):
        super().__init__()
        self.net = Mlp(stride * action_dim, hidden, macro_dim, act_layer=nn.GELU)

    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(chunk.flatten(-2)))
