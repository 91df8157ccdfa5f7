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

Levels 1..K (hierarchy): H-JEPA levels (hjepa/levels.py, `actions: true`): the same block-causal
predictor over strided time, whose "actions" are macro-actions, codes in [-1, 1]^m of the chunk of
`stride` actions of the level below; with `encoder: identity` a level's state is level 0's state (today's
CPU default: the planners compare subgoals in one space), with `encoder: transformer` it has its own
encoder, EMA target and regulariser, as the video H-JEPA levels.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp

from hjepa.blocks import ACPredictor, MacroActionEncoder, block_causal_mask  # noqa: F401 (re-exported for users)
from hjepa.levels import Level, LevelConfig, action_level_loss, validate_level
from hjepa.world_model.encoders import EncoderConfig, build_frame_encoder, from_features
from hjepa.world_model.goal_distance import DistanceConfig, GoalDistance
from hjepa.world_model.spatial import ConvPredictor, channel_features
from vjepa.regularizers import vicreg_terms

logger = logging.getLogger(__name__)


@dataclass
class PredictorConfig:
    """Args:
        type: "transformer" (block-causal `ACPredictor`) or "conv" (`spatial.ConvPredictor`, Markov, on the map
        of `encoder.type: conv_map`). dim / depth / num_heads: the transformer's shape; for "conv", dim is
        the hidden channels and depth the residual blocks (num_heads unused). max_frames: longest context.
        padding: "conv" only, how its convolutions pad the map ("zeros" | "replicate", see `ConvPredictor`).
        ensemble: level-0 predictors in all. Members beyond the first are the same network from their own
            initialisation, trained on the same batches with the same losses, on the encoder's states with no
            gradient into the encoder (it learns from the first alone). A planner with `ensemble: true` scores a
            candidate by its goal distance averaged over the members' rollouts, so that a state one predictor
            gets wrong counts for less. 1 = the single predictor.
    """

    type: str = "transformer"
    dim: int = 32
    depth: int = 2
    num_heads: int = 2
    max_frames: int = 16
    padding: str = "zeros"
    ensemble: int = 1

    def __post_init__(self):
        if self.type not in PREDICTORS:
            raise ValueError(f"predictor.type {self.type!r} unknown; valid: {list(PREDICTORS)}")
        if self.padding != "zeros" and self.type != "conv":
            raise ValueError(f"predictor.padding {self.padding!r} is for predictor.type conv only")
        if self.ensemble < 1:
            raise ValueError(f"predictor.ensemble {self.ensemble}: the number of level-0 predictors, >= 1")


PREDICTORS = ("transformer", "conv")


@dataclass
class LossWeights:
    """Args:
        rollout_steps: autoregressive steps of the rollout loss (0 = teacher forcing only).
        rollout: weight of the rollout loss. var / cov: VICReg variance hinge and covariance weights.
        idm: inverse-dynamics weight. smooth: weight of mean ||z_{t+1} - z_t||^2 (PLDM's time
        similarity): consecutive states close, so that with the variance term the representation spreads
        like a slow feature of the dynamics and latent distance grows with distance travelled instead of
        saturating beyond a few steps. All regularisers apply only when the encoder trains.
        var_within_window: centre the state on each training window's mean before the variance and
        covariance terms, so that only change within an episode meets them. Needed when scenes vary
        (layouts drawn per episode): with batch statistics the walls alone meet the hinge and the agent
        never enters the state (position R^2 0.00 on Two-Rooms with varied layouts; 0.99 centred).
        static: weight of the drift of the scene channels (`encoder.static_dim`) within a window; those
        channels get the variance/covariance terms on their window means instead (spread across scenes).
    """

    rollout_steps: int = 4
    rollout: float = 1.0
    var: float = 5.0
    cov: float = 0.1
    idm: float = 1.0
    smooth: float = 1.0
    var_within_window: bool = False
    static: float = 1.0


def prediction_losses(predictor: nn.Module, z: torch.Tensor, actions: torch.Tensor, k: int,
                      rollout: Optional[torch.Tensor] = None):
    """L1 losses of a level-0 predictor on states `[B, T+1, D]` under actions `[B, T, A]`: teacher forcing
    (z_{t+1} from the true z_t) and, for k > 0, the k-step rollout from z_0 fed back (else None). `rollout`:
    that rollout's first k predictions `[B, >=k, D]`, when the caller has computed them already."""
    T = actions.shape[1]
    target = z[:, 1:]  # one slice for both terms: its gradient reaches z in one piece
    tf = (predictor(z[:, :T], actions) - target).abs().mean()
    if k == 0:
        return tf, None
    if rollout is None:
        rollout = predictor.rollout(z[:, :1], actions[:, :k])
    return tf, (rollout[:, :k] - target[:, :k]).abs().mean()


class FrameLevel(nn.Module):
    """Level 0: frame encoder, block-causal predictor and inverse-dynamics head.

    Args:
        enc: encoder config. pred: predictor config. img_size: frame size. action_dim: 2 for the point mass.
    """

    def __init__(self, enc: EncoderConfig, pred: PredictorConfig, img_size: int = 64, action_dim: int = 2):
        super().__init__()
        self.encoder = build_frame_encoder(enc, img_size)
        self.frozen_encoder = enc.frozen and enc.head == "none"  # with a head, the head trains (regularised)
        self.cacheable = enc.frozen  # `frozen_part(encoder)`'s outputs never change: training may read them cached
        if self.frozen_encoder:
            self.encoder.requires_grad_(False).eval()
        D = self.encoder.dim
        self.static_dim = enc.static_dim
        if not 0 <= enc.static_dim < D:
            raise ValueError(f"encoder.static_dim {enc.static_dim} must be in [0, encoder width {D})")
        self.embed_dim, self.action_dim = D, action_dim
        self.map_shape = getattr(self.encoder, "map_shape", None)  # (C, h, w) of a spatial state, else None
        if pred.type == "conv" and self.map_shape is None:
            raise ValueError("predictor.type conv needs a feature-map state: set encoder.type: conv_map")

        def predictor() -> nn.Module:
            if pred.type == "conv":
                return ConvPredictor(self.map_shape, action_dim, pred.dim, pred.depth, pred.max_frames, pred.padding)
            return ACPredictor(D, action_dim, pred.dim, pred.depth, pred.num_heads, pred.max_frames)

        self.predictor = predictor()
        self.idm = Mlp(2 * D, 64, action_dim, act_layer=nn.GELU)
        # the other ensemble members, drawn from a side stream: every other module starts as with one predictor
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + 1)
            self.members = nn.ModuleList(predictor() for _ in range(pred.ensemble - 1))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames `[B, T, C, H, W]` or `[B, C, H, W]` -> `[B, T, D]` or `[B, D]`."""
        if frames.ndim == 4:
            return self.encoder(frames)
        B = frames.shape[0]
        return rearrange(self.encoder(rearrange(frames, "b t c h w -> (b t) c h w")), "(b t) d -> b t d", b=B)

    def train(self, mode: bool = True) -> "FrameLevel":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # frozen: its outputs (BatchNorm, dropout) never depend on the mode
        return self

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        """Cached outputs of the frozen encoder (`frozen_part`) `[..., F]` -> states `[..., D]` (the head, if any)."""
        return from_features(self.encoder, f)

    def forward(self, frames: torch.Tensor, actions: torch.Tensor, w: LossWeights) -> Dict[str, torch.Tensor]:
        """The training loss (through `forward`, so a DDP wrapper sees the call and syncs gradients)."""
        return self.loss(frames, actions, w)

    def loss(self, frames: torch.Tensor, actions: torch.Tensor, w: LossWeights) -> Dict[str, torch.Tensor]:
        """frames `[B, T+1, C, H, W]` (or, with a frozen encoder, its cached outputs `[B, T+1, F]`, see
        feature_cache.py), actions `[B, T, A]` -> dict of scalar losses ("loss" is the total)."""
        if frames.ndim == 3 and not self.cacheable:
            raise ValueError(f"cached features {tuple(frames.shape)} given to a trainable encoder; pass frames")
        enc = self.from_features if frames.ndim == 3 else self.encode
        if self.frozen_encoder:
            with torch.no_grad():
                z = enc(frames)
        else:
            z = enc(frames)  # [B, T+1, D]
        k = min(w.rollout_steps, actions.shape[1]) if w.rollout > 0 else 0  # rollout steps (0 = none)
        tf, ro = prediction_losses(self.predictor, z, actions, k)
        out = {"teacher_forcing": tf}
        total = tf
        if ro is not None:
            out["rollout"] = ro
            total = total + w.rollout * ro
        if len(self.members):  # the other predictors: the same losses on states they cannot move
            terms = []
            for p in self.members:
                tf_p, ro_p = prediction_losses(p, z.detach(), actions, k)
                terms.append(tf_p if ro_p is None else tf_p + w.rollout * ro_p)
            out["members"] = torch.stack(terms).mean()  # logged per member; each trains on its own term at weight 1
            total = total + torch.stack(terms).sum()
        if not self.frozen_encoder:
            dyn, sta = z[..., :z.shape[-1] - self.static_dim], z[..., z.shape[-1] - self.static_dim:]
            # within-window centring: only change over time can meet the variance hinge (the scene cannot)
            reg = dyn - dyn.mean(1, keepdim=True) if w.var_within_window else dyn
            var, cov = vicreg_terms(reg if self.map_shape is None else channel_features(reg, self.map_shape))
            a_hat = self.idm(torch.cat([z[:, :-1], z[:, 1:]], -1))  # [B, T, A]
            out["var"], out["cov"] = var, cov
            out["idm"] = F.mse_loss(a_hat, actions)
            out["smooth"] = (dyn[:, 1:] - dyn[:, :-1]).pow(2).sum(-1).mean()
            total = total + w.var * var + w.cov * cov + w.idm * out["idm"] + w.smooth * out["smooth"]
            if self.static_dim:  # scene channels: spread across windows, constant within one
                var_s, cov_s = vicreg_terms(sta.mean(1))
                out["static_var"], out["static_cov"] = var_s, cov_s
                out["static_drift"] = (sta - sta.mean(1, keepdim=True)).pow(2).sum(-1).mean()
                total = total + w.var * var_s + w.cov * cov_s + w.static * out["static_drift"]
        out["loss"] = total
        out["z"] = z.detach()
        return out


class ActionLevelObjective(nn.Module):
    """Training view of an action level k >= 1: (input states, action chunks of the level below) -> its
    loss. The macro-actions are computed inside, so the level's macro encoder trains with its predictor;
    through `forward`, so a DDP wrapper sees the call."""

    def __init__(self, level: Level, w: LossWeights):
        super().__init__()
        self.level, self.w = level, w

    def forward(self, u: torch.Tensor, sub_actions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """u `[B, T+1, D_in]` level k-1 states `stride` steps apart; sub_actions `[B, T, stride, A_in]`."""
        return action_level_loss(self.level, u, self.level.macro(sub_actions), self.w.rollout_steps, self.w.rollout)


class WorldModel(nn.Module):
    """The hierarchical world model: `levels[0]` a `FrameLevel` (frames and actions), `levels[k]` (k >= 1) an
    H-JEPA `Level` with `actions: true` over level k-1's states `stride_k` steps apart, whose actions are
    codes of chunks of level k-1's actions. Levels are trained bottom-up, each on its frozen predecessors.

    Args:
        enc / pred: level 0's encoder and predictor. levels: configs of levels 1..K. img_size / action_dim: world.
        distance: the learned goal distance's config (`goal_distance.py`; built when its `steps` > 0).
    """

    def __init__(self, enc: EncoderConfig, pred: PredictorConfig, levels: Sequence[LevelConfig] = (),
                 img_size: int = 64, action_dim: int = 2, distance: Optional[DistanceConfig] = None):
        super().__init__()
        mods: List[nn.Module] = [FrameLevel(enc, pred, img_size, action_dim)]
        for k, cfg in enumerate(levels, start=1):
            if not cfg.actions:
                raise ValueError(f"world-model levels[{k - 1}] (level {k}) needs actions: true")
            validate_level(cfg, k)
            below = mods[-1]
            mods.append(Level(cfg, below.embed_dim, below.action_dim if k == 1 else below.cfg.macro_dim))
        self.levels = nn.ModuleList(mods)
        # learned goal distance on level-0 states (goal_distance.py); None unless `distance.steps` > 0
        self.distance = (GoalDistance(mods[0].embed_dim, mods[0].map_shape, distance)
                         if distance is not None and distance.steps > 0 else None)

    # level 0's parts, under the names the planners and evaluations use
    @property
    def encoder(self) -> nn.Module:
        return self.levels[0].encoder

    @property
    def predictor(self) -> ACPredictor:
        return self.levels[0].predictor

    @property
    def predictors(self) -> List[nn.Module]:
        """Level 0's predictor and the other members of its ensemble (`predictor.ensemble`)."""
        return [self.levels[0].predictor, *self.levels[0].members]

    @property
    def repr_dim(self) -> int:
        return self.levels[0].embed_dim

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.levels[0].encode(frames)

    def strides(self) -> List[int]:
        """Level-(k-1) steps per level-k step, k = 1..K."""
        return [lv.cfg.stride for lv in self.levels[1:]]

    def span(self, k: int) -> int:
        """Low-level (level-0) steps per level-k step."""
        return int(math.prod(self.strides()[:k]))

    def state(self, z0: torch.Tensor, k: int, frm: int = 0) -> torch.Tensor:
        """Level-`frm` states `[..., D_frm]` -> level-k states `[..., D_k]` (target encoders, each step alone)."""
        z = z0
        for level in self.levels[frm + 1:k + 1]:
            z = level.step_states(z)
        return z

    def macro(self, actions: torch.Tensor, k: int) -> torch.Tensor:
        """Low-level action chunks `[..., span_k, A]` -> level-k actions `[..., A_k]` (k = 0: the action itself,
        `[..., 1, A]` -> `[..., A]`)."""
        a = actions
        for level in self.levels[1:k + 1]:
            a = level.macro(a.reshape(*a.shape[:-2], -1, level.cfg.stride, a.shape[-1]))
        return a.squeeze(-2)

    def predictor_of(self, k: int) -> ACPredictor:
        return self.levels[k].predictor

    def action_dim_of(self, k: int) -> int:
        return self.levels[0].action_dim if k == 0 else self.levels[k].cfg.macro_dim
