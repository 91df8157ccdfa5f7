"""A learned goal distance for the planners' cost: D(z, z_goal) ~ the number of steps from state z to the goal.

The Euclidean distance between two representations says how far apart two frames are, not how far apart
two places are for an agent that must walk around walls: its minimum lies against the wall whenever the
goal is behind it (the perfect-dynamics ceiling of flat CEM with it is 68.5 % on held-out Two-Rooms maps,
100 % with the true shortest-path distance; docs/world_model.md). This module learns a distance that follows paths, from
the world model's own training trajectories and nothing else: for two states of one episode, t and u, the
episode itself shows that |u - t| steps suffice, so |u - t| is an upper bound on the shortest path between
them, tight when the episode went straight (the noisy experts and greedy episodes) and loose for random
walks. A low expectile of these step counts, regressed from the two frozen representations, estimates the
shortest path (the expectile-regression trick of IQL / HIQL for goal-conditioned values, here on step
counts directly). Because the walls are in both representations, the estimate transfers to maps never seen.

    z (frozen level-0 representation) --embed--> e   \
                                                      +-> head([e, e_g, e * e_g]) -> softplus -> D (steps)
    z_goal ---------------------------embed--> e_g   /

The embedding of each state is computed once per state (the goal's once per episode), so the planner pays
one embedding per imagined state. Spatial (map) representations are embedded by two 3x3 convolutions (the
second with stride 2: half the multiply-adds of full resolution, and the planner pays them per imagined state), flat ones by an MLP. Inputs are standardised with the training features' per-dimension mean and std (buffers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.seeding import derive_seed


@dataclass
class DistanceConfig:
    """`distance:` of a world-model config: the learned goal distance (trained after the levels, on the
    frozen level-0 representations of the training episodes).

    Args:
        steps: training steps (0 = no learned distance; the planners' `distance: learned` then fails).
        batch_size: state pairs per step. lr: AdamW peak learning rate (cosine to 0). weight_decay.
        expectile: tau of the expectile regression on the step counts between two states of an episode
            (an upper bound on their shortest path): small tau fits the lower envelope, i.e. the shortest
            path the data shows; 0.5 = least squares (the mean walk length). width: convolution channels
            (map representations) or hidden units (flat ones) of the embedding. embed_dim: embedding size.
        hidden: hidden units of the pair head.
        length: steps per episode of the distance's own training episodes (0 = the world model's episodes).
            Pairs span at most one episode, so episodes shorter than the longest paths planned leave D to
            extrapolate there. episodes: how many (0 = as many as the world model's). Both are drawn like the
            world model's data (same maps, same policy mix) from another seed.
        imagined: share of the pairs whose first state is the level-0 predictor's rollout (`imagine`) instead
            of the encoded frame: the planner evaluates D on imagined states, which read closer to the goal
            than the frames they stand for (the predictor's drift). imagined_steps: longest such rollout.
        bootstrap: weight in [0, 1] of a second, Bellman term (0 = off, the step counts alone). A pair (t, u)
            also has the bound 1 + D(z_t', z_u), t' = the episode's next state towards u: one step, then what
            D itself says is left. Its target, min(|u - t|, 1 + D(z_t', z_u)) (D without gradient), lets one
            episode's detour be shortened by what D learnt from the others (as goal-conditioned value
            learning does, e.g. HIQL), where a random walk alone leaves D flat. bootstrap_expectile: its tau.
    """

    steps: int = 0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    expectile: float = 0.1
    width: int = 32
    embed_dim: int = 128
    hidden: int = 256
    length: int = 0
    episodes: int = 0
    imagined: float = 0.0
    imagined_steps: int = 8
    bootstrap: float = 0.0
    bootstrap_expectile: float = 0.1


def check_distance(cfg: DistanceConfig) -> None:
    if cfg.steps < 0 or cfg.batch_size < 1:
        raise ValueError(f"distance.steps must be >= 0 and distance.batch_size >= 1, got {cfg.steps}, {cfg.batch_size}")
    if cfg.length < 0 or cfg.episodes < 0:
        raise ValueError(f"distance.length and distance.episodes must be >= 0, got {cfg.length}, {cfg.episodes}")
    if not 0.0 <= cfg.imagined <= 1.0 or cfg.imagined_steps < 1:
        raise ValueError(f"distance.imagined must lie in [0, 1] and distance.imagined_steps be >= 1, got "
                         f"{cfg.imagined}, {cfg.imagined_steps}")
    if not (0.0 < cfg.expectile < 1.0 and 0.0 < cfg.bootstrap_expectile < 1.0):
        raise ValueError(f"distance.expectile and distance.bootstrap_expectile must lie in (0, 1), got "
                         f"{cfg.expectile}, {cfg.bootstrap_expectile}")
    if not 0.0 <= cfg.bootstrap <= 1.0:
        raise ValueError(f"distance.bootstrap must lie in [0, 1], got {cfg.bootstrap}")


class GoalDistance(nn.Module):
    """D(z, z_goal) >= 0 in environment steps.

    Args:
        repr_dim: level-0 representation size. map_shape: (C, h, w) when the representation is a flattened
        feature map (convolutional embedding), None for a flat vector (MLP embedding). cfg: sizes.
    """

    def __init__(self, repr_dim: int, map_shape: Optional[Tuple[int, int, int]], cfg: DistanceConfig):
        super().__init__()
        self.map_shape = tuple(map_shape) if map_shape is not None else None
        w, e = cfg.width, cfg.embed_dim
        if self.map_shape is not None:
            C, h, ww = self.map_shape
            if C * h * ww != repr_dim:
                raise ValueError(f"map_shape {self.map_shape} does not hold a {repr_dim}-d representation")
            self.embed_net = nn.Sequential(nn.Unflatten(-1, self.map_shape), nn.Conv2d(C, w, 3, padding=1), nn.GELU(),
                                           nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(),
                                           nn.Linear(w * ((h + 1) // 2) * ((ww + 1) // 2), e))
        else:
            self.embed_net = nn.Sequential(nn.Linear(repr_dim, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, e))
        self.head = nn.Sequential(nn.Linear(3 * e, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1))
        self.register_buffer("mean", torch.zeros(repr_dim))
        self.register_buffer("std", torch.ones(repr_dim))

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """`[..., D]` -> `[..., E]`."""
        lead = z.shape[:-1]
        x = ((z - self.mean) / self.std).reshape(-1, z.shape[-1])
        return self.embed_net(x).view(*lead, -1)

    def pair(self, e: torch.Tensor, e_goal: torch.Tensor) -> torch.Tensor:
        """Embeddings `[..., E]` (broadcastable) -> distances `[...]`."""
        e, e_goal = torch.broadcast_tensors(e, e_goal)
        return F.softplus(self.head(torch.cat([e, e_goal, e * e_goal], -1))).squeeze(-1)

    def forward(self, z: torch.Tensor, z_goal: torch.Tensor, z_next: Optional[torch.Tensor] = None):
        """D(z, z_goal) `[...]`; with `z_next` also D(z_next, z_goal) without gradient (the Bellman bound's
        input), as a pair: the goals are embedded once for both (in `forward`, so a DDP wrapper sees it)."""
        e_goal = self.embed(z_goal)
        d = self.pair(self.embed(z), e_goal)
        if z_next is None:
            return d
        with torch.no_grad():
            return d, self.pair(self.embed(z_next), e_goal)

    @torch.no_grad()
    def to_goal(self, z_goal: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The planners' `Distance` to each problem's goal `[B, D]`: states `[B, ...,  D]` -> `[B, ...]`."""
        e_goal = self.embed(z_goal)

        def dist(z: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.pair(self.embed(z), e_goal.view(len(e_goal), *([1] * (z.ndim - 2)), -1))
        return dist


def set_normalisation(net: GoalDistance, z: torch.Tensor, chunk: int = 32768) -> None:
    """Per-dimension mean and std of the features `[N, T+1, D]` into the module's buffers. Sums in float64
    over row chunks: a column reduction of the whole [N(T+1), D] matrix took ~3x longer (390k x 1,024)."""
    flat = z.reshape(-1, z.shape[-1])
    n, s1, s2 = len(flat), 0.0, 0.0
    for c in flat.split(chunk):
        c = c.double()
        s1, s2 = s1 + c.sum(0), s2 + (c * c).sum(0)
    mean = s1 / n
    var = (s2 - n * mean * mean).clamp_min(0.0) / max(n - 1, 1)
    net.mean.copy_(mean.float())
    net.std.copy_(var.sqrt().float().clamp_min(1e-6))


def pair_batch(z: torch.Tensor, batch: int, seed: int, step: int, with_next: bool = False) -> Dict[str, torch.Tensor]:
    """Step `step`'s training pairs from features `[N, T+1, D]`: two states of one episode each (u and t
    uniform and independent, so u == t and both orders occur) and their step count |u - t|; `with_next`
    (the Bellman term's input) adds `z_next`, the state one step from t towards u (t itself when u == t).
    Drawn from (seed, step) alone: a resumed run sees the same pairs."""
    rng = np.random.default_rng(derive_seed(seed, 100, step))
    N, T1 = z.shape[:2]
    n, t, u = rng.integers(N, size=batch), rng.integers(T1, size=batch), rng.integers(T1, size=batch)
    b = {"z": z[n, t], "z_goal": z[n, u], "steps": torch.from_numpy(np.abs(u - t).astype(np.float32)),
         "episode": torch.from_numpy(n), "t": torch.from_numpy(t)}
    if with_next:
        b["z_next"] = z[n, t + np.sign(u - t)]
    return b


@torch.no_grad()
def imagine(b: Dict[str, torch.Tensor], z: torch.Tensor, actions: torch.Tensor, predictor, share: float,
            max_steps: int, seed: int, step: int) -> Dict[str, torch.Tensor]:
    """Replace a `share` of a `pair_batch`'s first states by what the planner would see there: the predictor's
    k-step rollout (one k ~ U{1..max_steps} per step) from state t - k of the same episode under its recorded
    actions `[N, T, A]`. The step count to the goal stays |u - t|. Pairs with t < k keep the true state."""
    rng = np.random.default_rng(derive_seed(seed, 101, step))
    k = int(rng.integers(1, max_steps + 1))
    pick = torch.from_numpy(rng.random(len(b["t"])) < share) & (b["t"] >= k)
    if not pick.any():
        return b
    n, t = b["episode"][pick], b["t"][pick]
    acts = torch.stack([actions[n, t - k + j] for j in range(k)], 1)
    out = dict(b, z=b["z"].clone())
    dev = next(predictor.parameters()).device
    out["z"][pick] = predictor.rollout(z[n, t - k][:, None].to(dev), acts.to(dev))[:, -1].to(out["z"].device)
    return out


def distance_loss(net: GoalDistance, b: Dict[str, torch.Tensor], cfg: DistanceConfig) -> Tuple[torch.Tensor, dict]:
    """The distance's objective on a `pair_batch` (drawn `with_next` when `cfg.bootstrap` > 0): the expectile
    regression on the step counts, blended with the Bellman term when `cfg.bootstrap` > 0 (`DistanceConfig`)."""
    if cfg.bootstrap:
        d, d_next = net(b["z"], b["z_goal"], b["z_next"])
    else:
        d = net(b["z"], b["z_goal"])
    loss = expectile_loss(d, b["steps"], cfg.expectile)
    logs = {"mean_distance": d.detach().mean()}
    if cfg.bootstrap:
        bound = torch.minimum(b["steps"], 1.0 + d_next) * (b["steps"] > 0)
        loss = (1.0 - cfg.bootstrap) * loss + cfg.bootstrap * expectile_loss(d, bound, cfg.bootstrap_expectile)
        logs["bootstrap_gain"] = (b["steps"] - bound).mean()  # steps the bound takes off the episodes' counts
    return loss, logs


def expectile_loss(pred: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric squared error: an over-estimate (pred > target) weighs 1 - tau, an under-estimate tau."""
    diff = target - pred
    return (torch.where(diff < 0, 1.0 - tau, tau) * diff ** 2).mean()
