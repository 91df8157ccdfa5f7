"""Fine-tune the level-0 predictor for the planner's cost: value equivalence with the learned goal distance.

The planners score a candidate by the learned distance D (goal_distance.py) of the predictor's imagined
end state. Trained on prediction error alone, the predictor makes errors that D reads as progress: after
standing against a wall or stepping away from the door, imagined states read 1-3 steps closer to the goal
than the true ones (docs/world_model.md, "Distance or dynamics"), and CEM, which keeps the best of
hundreds of candidates, picks exactly those. This stage, run after D is trained, keeps training the level-0
predictor(s) on their own prediction losses plus a term that asks the imagined states to be as far from a
goal, by D, as the true states they stand for (a value-equivalent model, Grimm et al. 2020, with D as the
value):

    | D(rollout_h(z_t, a_t..a_{t+h-1}), z_goal) - D(z_{t+h}, z_goal) |,   h = 1..horizon

on the frozen level-0 states of the distance's training episodes, the goal another state of the same
episode. D, the encoder and every other level stay frozen; only the level-0 predictor(s) move. Nothing
the planners do at test time changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch

from data.seeding import derive_seed
from hjepa.world_model.model import prediction_losses
from hjepa.world_model.on_policy import OnPolicyConfig


@dataclass
class RefineConfig:
    """`refine:` of a world-model config (off by default; needs the learned distance, `distance.steps` > 0).

    Args:
        steps: fine-tuning steps of the level-0 predictor(s) after the goal distance (0 = off).
        coeff: weight of the distance-matching term against the level-0 prediction losses (teacher forcing +
            `loss.rollout` x rollout on `stage.window`-state windows, as level 0 trains).
        horizon: rollout steps the distance is matched over (the planners imagine 8).
        batch_size: windows per step (per process). lr: AdamW peak learning rate (cosine to lr / 100, no
            warmup: the predictor is trained already). weight_decay.
        on_policy: then more steps on the refined planner's own episodes (on_policy.py; off by default).
    """

    steps: int = 0
    coeff: float = 0.3
    horizon: int = 8
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)


def check_refine(cfg: RefineConfig, distance_steps: int, window: int) -> None:
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.coeff < 0:
        raise ValueError(f"refine.steps and refine.coeff must be >= 0 and refine.batch_size >= 1, got {cfg.steps}, "
                         f"{cfg.coeff}, {cfg.batch_size}")
    if cfg.steps and not distance_steps:
        raise ValueError("refine.steps > 0 fine-tunes the predictor against the learned goal distance: set "
                         "distance.steps > 0 too")
    if cfg.steps and cfg.horizon < max(1, window - 1):
        raise ValueError(f"refine.horizon ({cfg.horizon}) must cover level 0's training window (stage.window - 1 = "
                         f"{window - 1} steps)")


def refine_batch(z: torch.Tensor, actions: torch.Tensor, batch: int, horizon: int, seed: int,
                 step: int) -> Dict[str, torch.Tensor]:
    """Step `step`'s windows from states `[N, T+1, D]` and actions `[N, T, A]`: `z` `[B, horizon+1, D]` (consecutive
    states of one episode), their `actions` `[B, horizon, A]` and a `z_goal` `[B, D]` (a uniform state of the
    same episode). Drawn from (seed, step) alone: a resumed run sees the same windows."""
    rng = np.random.default_rng(derive_seed(seed, 102, step))
    N, T1 = z.shape[:2]
    if T1 <= horizon:
        raise ValueError(f"episodes of {T1 - 1} steps are too short for refine.horizon={horizon}")
    n = torch.from_numpy(rng.integers(N, size=batch))
    t = torch.from_numpy(rng.integers(T1 - horizon, size=batch))
    u = torch.from_numpy(rng.integers(T1, size=batch))
    idx = t[:, None] + torch.arange(horizon + 1)  # [B, H+1]
    return {"z": z[n[:, None], idx], "actions": actions[n[:, None], idx[:, :-1]], "z_goal": z[n, u]}


def true_distances(distance, z: torch.Tensor, z_goal: torch.Tensor) -> tuple:
    """What `distance_gap` compares against, the same for every predictor: (the goal's embedding `[B, 1, E]`,
    D(true z_{t+h}, goal) `[B, H]` for the windows `z` `[B, H+1, D]`), the latter without gradient."""
    e_goal = distance.embed(z_goal)[:, None]
    with torch.no_grad():
        return e_goal, distance.pair(distance.embed(z[:, 1:]), e_goal)


def distance_gap(predictor, distance, z: torch.Tensor, actions: torch.Tensor, z_goal: torch.Tensor,
                 targets: Optional[tuple] = None, imagined: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean |D(imagined z_{t+h}, goal) - D(true z_{t+h}, goal)| over h = 1..H: the predictor's rollout from
    `z[:, 0]` under `actions` `[B, H, A]`, against `z[:, 1:]`. Gradients reach the predictor only.
    `targets`: `true_distances(distance, z, z_goal)`, `imagined`: that rollout `[B, H, D]`, when already computed."""
    e_goal, d_true = targets if targets is not None else true_distances(distance, z, z_goal)
    if imagined is None:
        imagined = predictor.rollout(z[:, :1], actions)  # [B, H, D]
    return (distance.pair(distance.embed(imagined), e_goal) - d_true).abs().mean()


def refine_loss(predictors, distance, b: Dict[str, torch.Tensor], window: int, rollout_steps: int,
                rollout_weight: float, coeff: float):
    """-> (total loss, terms): for each predictor, its level-0 prediction losses on the first `window` states
    of the batch's windows plus `coeff` x `distance_gap`; terms are the first predictor's."""
    k = min(rollout_steps, window - 1) if rollout_weight > 0 else 0
    targets = true_distances(distance, b["z"], b["z_goal"])  # shared by every ensemble member
    total, terms = 0.0, {}
    for i, p in enumerate(predictors):
        # one rollout over the whole horizon: rollouts are causal (step h reads steps < h only), so its first k
        # steps are the prediction losses' k-step rollout, value for value
        imagined = p.rollout(b["z"][:, :1], b["actions"])  # [B, H, D]
        tf, ro = prediction_losses(p, b["z"][:, :window], b["actions"][:, :window - 1], k, imagined)
        gap = distance_gap(p, distance, b["z"], b["actions"], b["z_goal"], targets, imagined)
        total = total + tf + (rollout_weight * ro if ro is not None else 0.0) + coeff * gap
        if i == 0:
            terms = {"teacher_forcing": tf.detach(), "distance_gap": gap.detach()}
            if ro is not None:
                terms["rollout"] = ro.detach()
    return total, terms
