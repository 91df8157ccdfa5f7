"""Action-conditioned JEPA world model: encoder -> representation, block-causal predictor over time.

Predictor (as V-JEPA 2-AC, arXiv 2506.09985): each time step t contributes a block of two tokens,
[action a_t, state z_t]; a token attends to every token of its own and earlier blocks (block-causal);
the output at the state token of block t predicts z_{t+1}. Here the state is one vector per frame
(pooled), which keeps planning rollouts of thousands of candidates cheap on CPU.

Losses (all L1 as V-JEPA 2-AC): teacher forcing (predict z_{t+1} from true z_{<=t}) plus a rollout
loss (feed predictions back for `rollout_steps` steps). Anti-collapse when the encoder is trained
jointly (PLDM, arXiv 2502.14819, shows joint training without it collapses): a variance/covariance
(VICReg) penalty on the representations and an inverse-dynamics head that must recover a_t from
(z_t, z_{t+1}), which ties the representation to what the agent controls. With a frozen pretrained
encoder neither is needed.

Level 1 (hierarchy): the same predictor over strided time, whose "actions" are macro-actions: a small
encoder maps the chunk of `stride` low-level actions to a low-dimensional code in [-1, 1]^m.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp

from hjepa.blocks import MaskedBlock
from hjepa.world_model.encoders import EncoderConfig, build_frame_encoder
from vjepa.regularizers import vicreg_terms

logger = logging.getLogger(__name__)


@dataclass
class PredictorConfig:
    """Block-causal transformer. dim/depth/num_heads: its shape. max_frames: longest context (blocks)."""

    dim: int = 32
    depth: int = 2
    num_heads: int = 2
    max_frames: int = 16


@dataclass
class LossWeights:
    """Args:
        rollout_steps: autoregressive steps of the rollout loss (0 = teacher forcing only).
        rollout: weight of the rollout loss. var / cov: VICReg variance hinge and covariance weights.
        idm: inverse-dynamics weight. smooth: weight of mean ||z_{t+1} - z_t||^2 (PLDM's time
        similarity): consecutive states close, so that with the variance term the representation spreads
        like a slow feature of the dynamics and latent distance grows with distance travelled instead of
        saturating beyond a few steps. All regularisers apply only when the encoder trains.
    """

    rollout_steps: int = 4
    rollout: float = 1.0
    var: float = 5.0
    cov: float = 0.1
    idm: float = 1.0
    smooth: float = 1.0


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


class WorldModel(nn.Module):
    """Level 0: frame encoder, block-causal predictor and inverse-dynamics head.

    Args:
        enc: encoder config. pred: predictor config. img_size: frame size. action_dim: 2 for the point mass.
    """

    def __init__(self, enc: EncoderConfig, pred: PredictorConfig, img_size: int = 64, action_dim: int = 2):
        super().__init__()
        self.encoder = build_frame_encoder(enc, img_size)
        self.frozen_encoder = enc.frozen
        if enc.frozen:
            self.encoder.requires_grad_(False).eval()
        D = self.encoder.dim
        self.repr_dim, self.action_dim = D, action_dim
        self.predictor = ACPredictor(D, action_dim, pred.dim, pred.depth, pred.num_heads, pred.max_frames)
        self.idm = Mlp(2 * D, 64, action_dim, act_layer=nn.GELU)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames `[B, T, C, H, W]` or `[B, C, H, W]` -> `[B, T, D]` or `[B, D]`."""
        if frames.ndim == 4:
            return self.encoder(frames)
        B = frames.shape[0]
        return rearrange(self.encoder(rearrange(frames, "b t c h w -> (b t) c h w")), "(b t) d -> b t d", b=B)

    def forward(self, frames: torch.Tensor, actions: torch.Tensor, w: LossWeights) -> Dict[str, torch.Tensor]:
        """The training loss (through `forward`, so a DDP wrapper sees the call and syncs gradients)."""
        return self.loss(frames, actions, w)

    def loss(self, frames: torch.Tensor, actions: torch.Tensor, w: LossWeights) -> Dict[str, torch.Tensor]:
        """frames `[B, T+1, C, H, W]`, actions `[B, T, A]` -> dict of scalar losses ("loss" is the total)."""
        if self.frozen_encoder:
            with torch.no_grad():
                z = self.encode(frames)
        else:
            z = self.encode(frames)  # [B, T+1, D]
        T = actions.shape[1]
        target = z[:, 1:]
        tf = (self.predictor(z[:, :T], actions) - target).abs().mean()
        out = {"teacher_forcing": tf}
        total = tf
        k = min(w.rollout_steps, T)
        if k > 0 and w.rollout > 0:
            pred = self.predictor.rollout(z[:, :1], actions[:, :k])  # [B, k, D]
            out["rollout"] = (pred - target[:, :k]).abs().mean()
            total = total + w.rollout * out["rollout"]
        if not self.frozen_encoder:
            var, cov = vicreg_terms(z)
            a_hat = self.idm(torch.cat([z[:, :-1], z[:, 1:]], -1))  # [B, T, A]
            out["var"], out["cov"] = var, cov
            out["idm"] = F.mse_loss(a_hat, actions)
            out["smooth"] = (z[:, 1:] - z[:, :-1]).pow(2).sum(-1).mean()
            total = total + w.var * var + w.cov * cov + w.idm * out["idm"] + w.smooth * out["smooth"]
        out["loss"] = total
        out["z"] = z.detach()
        return out


class MacroWorldModel(nn.Module):
    """Level 1: macro-action encoder and a block-causal predictor over every `stride`-th frame, on the
    (frozen) level-0 representation.

    Args:
        repr_dim: level-0 representation width. stride: low-level steps per level-1 step.
        macro_dim: macro-action width. pred: predictor config. action_dim: low-level action width.
    """

    def __init__(self, repr_dim: int, stride: int, macro_dim: int, pred: PredictorConfig, action_dim: int = 2):
        super().__init__()
        self.stride, self.macro_dim = stride, macro_dim
        self.macro = MacroActionEncoder(stride, action_dim, macro_dim)
        self.predictor = ACPredictor(repr_dim, macro_dim, pred.dim, pred.depth, pred.num_heads, pred.max_frames)

    def forward(self, z: torch.Tensor, chunks: torch.Tensor, w: LossWeights) -> Dict[str, torch.Tensor]:
        return self.loss(z, chunks, w)

    def loss(self, z: torch.Tensor, chunks: torch.Tensor, w: LossWeights) -> Dict[str, torch.Tensor]:
        """z `[B, T+1, D]` level-0 representations `stride` steps apart, chunks `[B, T, stride, A]`."""
        m = self.macro(chunks)  # [B, T, m]
        T = m.shape[1]
        tf = (self.predictor(z[:, :T], m) - z[:, 1:]).abs().mean()
        out = {"teacher_forcing": tf, "macro_std": m.detach().std(dim=(0, 1)).mean()}
        total = tf
        k = min(w.rollout_steps, T)
        if k > 0 and w.rollout > 0:
            out["rollout"] = (self.predictor.rollout(z[:, :1], m[:, :k]) - z[:, 1:k + 1]).abs().mean()
            total = total + w.rollout * out["rollout"]
        out["loss"] = total
        return out
