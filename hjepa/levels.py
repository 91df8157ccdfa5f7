"""H-JEPA levels above the V-JEPA video encoder: temporal transformers over pooled sequences.

Level 0 turns each window of a long video into one vector (`encode_windows`). Level k+1 reads level k's
sequence pooled with stride s_k (`pool_steps`), so one level-(k+1) step spans prod(s_0..s_k) windows.
Each level has an online encoder, an EMA target encoder and a predictor, and is trained JEPA-style
(`level_loss`): the encoder sees context steps only, the predictor fills in masked and future steps, the
loss is |pred - layer_norm(target)|^p / p.

The same `Level` is a level of the action-conditioned world model (`actions: true`, hjepa/world_model):
its input is the level below's state every `stride` steps, its "actions" are macro-actions (a code of the
chunk of `stride` actions of the level below, `hjepa.blocks.MacroActionEncoder`), and its predictor is the
block-causal `ACPredictor` (`action_level_loss`: teacher forcing plus rollout, L1 to the target states).
Its encoder reads each step alone, because a planner encodes single observations (the current one and
the goal); `encoder: identity` makes the level's state the level below's state itself (no encoder, no
target, no regulariser), so that the level only learns dynamics at its time scale. Pooled slow sequences are easy to predict, so a level can
collapse; `regularizer` adds a VICReg variance/covariance term (Bardes et al. 2022) or SIGReg (LeJEPA,
Balestriero & LeCun 2025) on the online encoder's outputs, and `monitor` reports std and effective rank.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import trunc_normal_

from hjepa.blocks import ACPredictor, MacroActionEncoder, MaskedBlock
from vjepa.models import VisionTransformer, gather_tokens
from vjepa.pos_embed import sincos_1d
from vjepa.regularizers import sigreg, vicreg_terms

logger = logging.getLogger(__name__)

POOLS = ("mean", "max", "concat")
WINDOW_POOLS = ("mean", "max", "meanmax")
REGULARIZERS = ("none", "vicreg", "sigreg")
LEVEL_ENCODERS = ("transformer", "identity")


@dataclass
class LevelConfig:
    """One level above level 0 (an entry of `levels:`).

    Args:
        stride: one step of this level = `stride` consecutive steps of the level below.
        pool: how those steps become one input: `mean`, `max`, or `concat` (keeps their order).
        embed_dim, depth, num_heads, mlp_ratio: temporal transformer shape.
        causal: a step attends only to itself and earlier steps, so its representation never sees the future.
        encoder_pos: add sin-cos step positions in the encoders. Off by default: an absolute position is a
            free, perfectly predictable "slow feature" the level can satisfy its loss with; the causal
            mask already tells the encoder the order. The predictor always gets positions.
        pred_embed_dim, pred_depth, pred_num_heads: predictor shape (heads default to the encoder's).
        max_future: the future objective predicts up to this many steps after a random context prefix.
        mask_ratio: the masked objective hides one contiguous block of this fraction of the steps.
        future_weight: loss = w * future + (1 - w) * masked.
        loss_exp: p of |pred - target|^p / p (1 = L1 as V-JEPA).
        ema: EMA momentum of the target goes linearly from ema[0] to ema[1] over the level's training.
        regularizer: `none` (EMA only), `vicreg` (variance hinge + covariance) or `sigreg`.
        var_coeff / var_target / cov_coeff: VICReg weights and the per-channel std the hinge asks for.
        sigreg_coeff / sigreg_slices / sigreg_knots: SIGReg weight, random 1-D projections, and points of
            the characteristic-function grid on [-3, 3].
        collapse_std_floor: warn when the target features' std across steps falls below this.
        input_grad: end-to-end mode only: read the level below's *online* encoder, so this level's loss
            trains the level below too (default: its EMA target, with no gradient).
        actions: an action-conditioned (world-model) level: macro-action encoder + block-causal predictor
            (`pred_embed_dim`, `pred_depth`, `pred_num_heads`, `max_frames`); `pool`, `causal`, `max_future`,
            `mask_ratio` and `future_weight` do not apply.
        macro_dim: width of the macro-action code (actions only). max_frames: longest predictor context.
        encoder: `transformer` (the level's own encoder and EMA target) or `identity` (actions only: the
            level's state is the level below's state).
    """

    stride: int = 2
    pool: str = "mean"
    embed_dim: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = True
    encoder_pos: bool = False
    pred_embed_dim: int = 64
    pred_depth: int = 2
    pred_num_heads: Optional[int] = None
    max_future: int = 2
    mask_ratio: float = 0.4
    future_weight: float = 0.5
    loss_exp: float = 1.0
    ema: List[float] = field(default_factory=lambda: [0.99, 1.0])
    regularizer: str = "vicreg"
    var_coeff: float = 1.0
    var_target: float = 1.0
    cov_coeff: float = 0.04
    sigreg_coeff: float = 1.0
    sigreg_slices: int = 64
    sigreg_knots: int = 17
    collapse_std_floor: float = 0.05
    input_grad: bool = False
    actions: bool = False
    macro_dim: int = 2
    max_frames: int = 16
    encoder: str = "transformer"


def validate_level(cfg: LevelConfig, k: int) -> None:
    where = f"levels[{k - 1}] (level {k})"
    if cfg.stride < 1:
        raise ValueError(f"{where}: stride must be >= 1, got {cfg.stride}")
    if cfg.pool not in POOLS:
        raise ValueError(f"{where}: pool {cfg.pool!r} unknown; valid: {list(POOLS)}")
    if cfg.regularizer not in REGULARIZERS:
        raise ValueError(f"{where}: regularizer {cfg.regularizer!r} unknown; valid: {list(REGULARIZERS)}")
    if cfg.embed_dim % cfg.num_heads or cfg.pred_embed_dim % (cfg.pred_num_heads or cfg.num_heads):
        raise ValueError(f"{where}: embed_dim / pred_embed_dim must be divisible by their head counts")
    if not 0.0 < cfg.mask_ratio < 1.0 or not 0.0 <= cfg.future_weight <= 1.0 or cfg.max_future < 1:
        raise ValueError(f"{where}: need 0 < mask_ratio < 1, 0 <= future_weight <= 1, max_future >= 1")
    if len(cfg.ema) != 2:
        raise ValueError(f"{where}: ema must be [start, end], got {cfg.ema}")
    if cfg.encoder not in LEVEL_ENCODERS:
        raise ValueError(f"{where}: encoder {cfg.encoder!r} unknown; valid: {list(LEVEL_ENCODERS)}")
    if cfg.encoder == "identity" and not cfg.actions:
        raise ValueError(f"{where}: encoder identity needs actions: true (a masked-prediction level must encode)")
    if cfg.actions and (cfg.macro_dim < 1 or cfg.max_frames < 2):
        raise ValueError(f"{where}: an action level needs macro_dim >= 1 and max_frames >= 2")


def pool_steps(x: torch.Tensor, stride: int, mode: str) -> torch.Tensor:
    """x `[B, S, D]` -> `[B, S / stride, D]` (mean, max) or `[B, S / stride, stride * D]` (concat)."""
    B, S, D = x.shape
    if S % stride:
        raise ValueError(f"sequence of {S} steps is not divisible by the pooling stride {stride}; make the "
                         "number of windows a multiple of the product of the strides")
    x = rearrange(x, "b (n s) d -> b n s d", s=stride)
    if mode == "mean":
        return x.mean(2)
    if mode == "max":
        return x.amax(2)
    if mode == "concat":
        return rearrange(x, "b n s d -> b n (s d)")
    raise ValueError(f"unknown pool {mode!r}; valid: {list(POOLS)}")


def encode_windows(encoder: VisionTransformer, windows: torch.Tensor, pool: str = "max") -> torch.Tensor:
    """Level 0: windows `[B, W, C, T, H, W]` -> one vector per window `[B, W, D]` (`[B, W, 2D]` for
    `meanmax`), pooled over the layer-normed tokens (the V-JEPA target normalisation). The mean over all
    tokens is dominated by the static background when the moving content is small; max keeps it (on the
    generated long videos a linear probe reads the motion direction at ~0.8 from max, ~0.5 from mean)."""
    B = windows.shape[0]
    tokens = encoder(rearrange(windows, "b w c t h x -> (b w) c t h x"))  # [B*W, N, D]
    tokens = F.layer_norm(tokens, (tokens.shape[-1],))
    if pool == "mean":
        z = tokens.mean(1)  # [B*W, D]
    elif pool == "max":
        z = tokens.amax(1)
    elif pool == "meanmax":
        z = torch.cat([tokens.mean(1), tokens.amax(1)], -1)  # [B*W, 2D]
    else:
        raise ValueError(f"unknown level-0 pool {pool!r}; valid: {list(WINDOW_POOLS)}")
    return rearrange(z, "(b w) d -> b w d", b=B)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


class TemporalEncoder(nn.Module):
    """Input projection + sin-cos step positions + transformer blocks + LayerNorm.

    Args:
        in_dim: width of one pooled input step. embed_dim, depth, num_heads, mlp_ratio: transformer shape.
        causal: step i attends to steps j <= i only (by position, so gathered context subsets work too).
        use_pos: add sin-cos step positions to the inputs.
    """

    def __init__(self, in_dim: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, causal: bool,
                 use_pos: bool = True):
        super().__init__()
        self.embed_dim, self.causal, self.use_pos = embed_dim, causal, use_pos
        self.input_proj = nn.Linear(in_dim, embed_dim)
        self.blocks = nn.ModuleList(MaskedBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        _init(self)

    def forward(self, u: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """u `[B, S, in_dim]`; idx `[B, K]` (sorted step indices, None = all) -> `[B, K, embed_dim]`."""
        if idx is None:
            idx = torch.arange(u.shape[1], device=u.device).expand(u.shape[0], -1)
        else:
            u = gather_tokens(u, idx)
        x = self.input_proj(u)
        if self.use_pos:
            x = x + sincos_1d(self.embed_dim, idx).to(u.dtype)
        mask = (idx.unsqueeze(2) >= idx.unsqueeze(1)).unsqueeze(1) if self.causal else None  # [B, 1, K, K]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x)


class TemporalPredictor(nn.Module):
    """Narrow transformer: context encodings plus one learnable query per target step (with its position)
    attend jointly; the query outputs are projected back to the encoder width (as the V-JEPA predictor)."""

    def __init__(self, embed_dim: int, pred_embed_dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.pred_embed_dim = pred_embed_dim
        self.embed = nn.Linear(embed_dim, pred_embed_dim)
        self.query = nn.Parameter(torch.zeros(1, 1, pred_embed_dim))
        self.blocks = nn.ModuleList(MaskedBlock(pred_embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(pred_embed_dim, eps=1e-6)
        self.proj = nn.Linear(pred_embed_dim, embed_dim)
        _init(self)

    def forward(self, z: torch.Tensor, idx_ctx: torch.Tensor, idx_tgt: torch.Tensor) -> torch.Tensor:
        """z `[B, K_ctx, D]` at steps idx_ctx `[B, K_ctx]` -> predictions `[B, K_tgt, D]` at idx_tgt."""
        B, K_ctx, _ = z.shape
        x = self.embed(z) + sincos_1d(self.pred_embed_dim, idx_ctx).to(z.dtype)
        q = self.query.to(z.dtype).expand(B, idx_tgt.shape[1], -1) + sincos_1d(self.pred_embed_dim, idx_tgt).to(z.dtype)
        x = torch.cat([x, q], 1)  # [B, K_ctx + K_tgt, d]
        for blk in self.blocks:
            x = blk(x)
        return self.proj(self.norm(x[:, K_ctx:]))


class Level(nn.Module):
    """One H-JEPA level: online encoder, predictor, and EMA target encoder (no gradient).

    Args:
        cfg: the level's config. in_dim: width of one step of the level below.
        action_dim: width of one action of the level below (action levels only: raw actions under
            level 1, macro-actions of level k under level k+1).
    """

    def __init__(self, cfg: LevelConfig, in_dim: int, action_dim: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        heads = cfg.pred_num_heads or cfg.num_heads
        if cfg.actions:
            if action_dim is None:
                raise ValueError("an action level needs the action width of the level below")
            self.macro = MacroActionEncoder(cfg.stride, action_dim, cfg.macro_dim)
            pooled_dim = in_dim
        else:
            pooled_dim = in_dim * cfg.stride if cfg.pool == "concat" else in_dim
        self._embed_dim = in_dim if cfg.encoder == "identity" else cfg.embed_dim
        if cfg.encoder == "identity":
            self.encoder = self.target = None
        else:
            self.encoder = TemporalEncoder(pooled_dim, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio,
                                           cfg.causal, cfg.encoder_pos)
            self.target = copy.deepcopy(self.encoder).requires_grad_(False)
        if cfg.actions:
            self.predictor = ACPredictor(self._embed_dim, cfg.macro_dim, cfg.pred_embed_dim, cfg.pred_depth, heads,
                                         cfg.max_frames)
        else:
            self.predictor = TemporalPredictor(cfg.embed_dim, cfg.pred_embed_dim, cfg.pred_depth, heads, cfg.mlp_ratio)

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return pool_steps(x, self.cfg.stride, self.cfg.pool)

    @torch.no_grad()
    def targets(self, u: torch.Tensor) -> torch.Tensor:
        """Pooled input `[B, S, D_in]` -> layer-normed target features `[B, S, D]`."""
        h = self.target(u)
        return F.layer_norm(h, (h.shape[-1],))

    def predict(self, u: torch.Tensor, idx_ctx: torch.Tensor, idx_tgt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(predictions `[B, K_tgt, D]`, context encodings `[B, K_ctx, D]`)."""
        z = self.encoder(u, idx_ctx)
        return self.predictor(z, idx_ctx, idx_tgt), z

    def step_states(self, u: torch.Tensor, online: bool = False) -> torch.Tensor:
        """Action levels: states of steps `[..., D_in]` -> `[..., D]`, each step encoded alone and layer-normed
        (the EMA target's unless `online`); the input itself under `encoder: identity`."""
        if self.encoder is None:
            return u
        enc = self.encoder if online else self.target
        h = enc(u.reshape(-1, 1, u.shape[-1])).view(*u.shape[:-1], -1)
        return F.layer_norm(h, (h.shape[-1],))


def sample_level_masks(num_steps: int, batch: int, cfg: LevelConfig, g: torch.Generator,
                       device: torch.device) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Index masks `[B, K]` shared by the batch: `future` (a prefix predicts the next <= max_future steps)
    and `masked` (one contiguous block is predicted from the steps around it)."""
    if num_steps < 2:
        raise ValueError(f"a level needs at least 2 steps to predict anything, got {num_steps}; use fewer or "
                         "smaller strides, or longer videos")
    ar = torch.arange(num_steps)
    c = int(torch.randint(1, num_steps, (1,), generator=g))
    fut = (ar[:c], ar[c:min(num_steps, c + cfg.max_future)])
    length = min(num_steps - 1, max(1, round(cfg.mask_ratio * num_steps)))
    s = int(torch.randint(0, num_steps - length + 1, (1,), generator=g))
    keep = (ar < s) | (ar >= s + length)
    out = {"future": fut, "masked": (ar[keep], ar[~keep])}
    return {k: (a.to(device).expand(batch, -1), b.to(device).expand(batch, -1)) for k, (a, b) in out.items()}


def level_loss(level: Level, u: torch.Tensor, g: torch.Generator) -> Tuple[torch.Tensor, Dict[str, float], torch.Tensor]:
    """JEPA loss of one level on its pooled input `u [B, S, D_in]`.

    Returns (loss, scalar metrics, layer-normed target features `[B, S, D]` for the monitors).
    """
    cfg = level.cfg
    B, S, _ = u.shape
    h = level.targets(u)  # no gradient
    masks = sample_level_masks(S, B, cfg, g, u.device)
    weights = {"future": cfg.future_weight, "masked": 1.0 - cfg.future_weight}
    loss, metrics, ctx = u.new_zeros(()), {}, []
    for name, (idx_ctx, idx_tgt) in masks.items():
        pred, z = level.predict(u, idx_ctx, idx_tgt)
        term = (pred.float() - gather_tokens(h, idx_tgt).float()).abs().pow(cfg.loss_exp).mean() / cfg.loss_exp
        loss = loss + weights[name] * term
        metrics[f"loss_{name}"] = term.item()
        ctx.append(z.reshape(-1, z.shape[-1]))
    metrics["jepa"] = loss.item()
    z = torch.cat(ctx)  # every context encoding of this step `[N, D]`
    reg, parts = regularize(cfg, z)
    metrics.update({n: v.item() for n, v in parts.items()})
    return loss + reg, metrics, h


def regularize(cfg: LevelConfig, z: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The level's anti-collapse term on online encodings `z [N, D]`: (weighted total, its parts)."""
    if cfg.regularizer == "vicreg":
        var, cov = vicreg_terms(z, cfg.var_target)
        return cfg.var_coeff * var + cfg.cov_coeff * cov, {"var": var, "cov": cov}
    if cfg.regularizer == "sigreg":
        sr = sigreg(z, cfg.sigreg_slices, cfg.sigreg_knots)
        return cfg.sigreg_coeff * sr, {"sigreg": sr}
    return z.new_zeros(()), {}


def action_level_loss(level: Level, u: torch.Tensor, codes: torch.Tensor, rollout_steps: int,
                      rollout_weight: float) -> Dict[str, torch.Tensor]:
    """Loss of an action level on input states `u [B, T+1, D_in]` (one per level step) and macro-actions
    `codes [B, T, m]`: teacher forcing (predict state t+1 from states <= t) plus `rollout_steps` of
    autoregressive rollout from the first state, L1 to the target states; plus the regulariser on the
    online states when the level has an encoder. -> dict of scalars ("loss" is the total) and the online
    states "z" (detached, for the monitors)."""
    cfg = level.cfg
    z = level.step_states(u, online=True)  # [B, T+1, D]
    h = level.step_states(u)  # the EMA target's states (the input itself under `encoder: identity`)
    T = codes.shape[1]
    target = h[:, 1:]
    out = {"teacher_forcing": (level.predictor(z[:, :T], codes) - target).abs().mean()}
    total = out["teacher_forcing"]
    k = min(rollout_steps, T)
    if k > 0 and rollout_weight > 0:
        out["rollout"] = (level.predictor.rollout(z[:, :1], codes[:, :k]) - target[:, :k]).abs().mean()
        total = total + rollout_weight * out["rollout"]
    if level.encoder is not None:
        reg, parts = regularize(cfg, z.reshape(-1, z.shape[-1]))
        total = total + reg
        out.update(parts)
    out["macro_std"] = codes.detach().std(dim=(0, 1)).mean()
    out["loss"] = total
    out["z"] = z.detach()
    return out
