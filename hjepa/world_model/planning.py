"""Planning in representation space: batched CEM and MPPI, receding-horizon MPC, hierarchical planning.

Every planner works on B problems at once with N candidate action sequences each: a cost function
maps candidates `[B, N, H, A]` to costs `[B, N]`. With a world model the cost of a candidate is the
distance between the predicted and the goal representation, summed over the horizon. Compute is
counted as predictor steps: samples x iterations x horizon per plan (per problem), the measure public
planning papers report.

Hierarchical (H-JEPA style, LeCun 2022; kevinghst/H-JEPA): the level-1 model plans over macro-actions
(codes of `stride`-step action chunks) and its first predicted representation becomes the subgoal that
the level-0 planner pursues for `stride` steps before level 1 replans. Level-1 candidates are snapped
to their nearest neighbour in a bank of macro codes of training chunks, so level 1 only imagines
moves the data has shown (its predictor is unreliable off that support).
"""
from __future__ import annotations

import copy
import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from vjepa.engine.config import ConfigError

logger = logging.getLogger(__name__)

CostFn = Callable[[torch.Tensor], torch.Tensor]  # [B, N, H, A] -> [B, N]


@dataclass
class PlannerConfig:
    """Args:
        method: "cem" or "mppi". horizon: planned steps. samples: candidates per iteration.
        iterations: refinement rounds. elite_frac: CEM elite share. temperature: MPPI softmax temperature
        (relative to the cost spread of each iteration). init_std / min_std: sampling std (action units).
        replan_every: execute this many planned actions before replanning (MPC). low / high: action bounds.
        context: frames of history the predictor sees in rollouts (1 = Markov; cheaper).
        cost: how a candidate's distances to the goal over the horizon become its cost: `sum` (every step),
        `final` (the last predicted state) or `min` (the closest state).
        distance: what a distance to the goal is: `l2`, the Euclidean distance between representations, or
        `learned`, the world model's learned goal distance in steps (`goal_distance.py`; the checkpoint must
        hold one: `distance.steps` > 0 in the world-model config). Any level of the hierarchical planner
        whose states are level 0's (identity level encoders).
        ensemble: score a candidate by its cost averaged over the rollouts of every level-0 predictor of the
        world model's ensemble (`predictor.ensemble` > 1 in the world-model config) instead of the first one's:
        a state that one predictor gets wrong then looks less attractive. Each member's rollouts count as
        compute. Level 0 only.
        precision: number format of this planner's predictor rollouts: `float32`, `bfloat16` (a copy of the
        predictor's weights in bfloat16; states and actions are cast in, predictions come back as float32, so
        the goal distance and the candidates' costs stay float32) or `auto` (bfloat16 on a CPU with bfloat16
        matrix units, AMX; float32 elsewhere). With AMX the rollouts ran 1.3-1.8x faster; with AVX512-BF16
        alone 0.7-1.0x, emulated (AVX2) 5-14x slower (an explicit `bfloat16` without AMX warns).
        `benchmarks/planner_precision.py` measures both on the machine at hand.
    """

    method: str = "cem"
    horizon: int = 10
    samples: int = 128
    iterations: int = 3
    elite_frac: float = 0.1
    temperature: float = 0.05
    init_std: float = 1.0
    min_std: float = 0.05
    replan_every: int = 2
    low: float = -1.0
    high: float = 1.0
    context: int = 1
    cost: str = "sum"
    distance: str = "l2"
    ensemble: bool = False
    precision: str = "float32"

    def compute(self, predictors: int = 1) -> int:
        """Predictor steps per plan and problem: samples x iterations x horizon, times the world model's
        `predictors` when this planner scores with the whole ensemble (`ensemble`)."""
        return self.samples * self.iterations * self.horizon * (predictors if self.ensemble else 1)


def check_planner(cfg: PlannerConfig) -> None:
    if cfg.method not in ("cem", "mppi"):
        raise ValueError(f"planner method {cfg.method!r} unknown; valid: ['cem', 'mppi']")
    if cfg.cost not in COSTS:
        raise ValueError(f"planner cost {cfg.cost!r} unknown; valid: {list(COSTS)}")
    if min(cfg.horizon, cfg.samples, cfg.iterations, cfg.replan_every) < 1:
        raise ValueError("horizon, samples, iterations and replan_every must be >= 1")
    if cfg.replan_every > cfg.horizon:
        raise ValueError(f"replan_every {cfg.replan_every} exceeds the horizon {cfg.horizon}")
    if cfg.distance not in DISTANCES:
        raise ValueError(f"planner distance {cfg.distance!r}; valid: {list(DISTANCES)}")
    if not cfg.low < cfg.high:
        raise ValueError(f"action bounds low {cfg.low} >= high {cfg.high}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"planner precision {cfg.precision!r} unknown; valid: {list(PRECISIONS)}")


PRECISIONS = ("float32", "bfloat16", "auto")


def amx_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix units (AMX), where bfloat16 rollouts pay off; the planners run on
    the CPU. AVX512-BF16 alone is not enough: there the level-0 rollouts ran 0.70x as fast as in float32
    (benchmarks/planner_precision.py), against 1.7-1.8x with AMX."""
    return bool(torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str) -> str:
    """`auto` -> `bfloat16` on a CPU with AMX, else `float32`; the others as they are."""
    if precision == "auto":
        return "bfloat16" if amx_bfloat16() else "float32"
    return precision


class CastRollout:
    """`predictor.rollout` in another precision: a copy of the predictor's weights in `dtype`; inputs are cast
    to it, predictions come back as float32. The copy is taken once: train the predictor, then plan."""

    def __init__(self, predictor, dtype: torch.dtype):
        self.net, self.dtype = copy.deepcopy(predictor).to(dtype).eval(), dtype

    def rollout(self, z_ctx: torch.Tensor, actions: torch.Tensor, context: Optional[int] = None) -> torch.Tensor:
        return self.net.rollout(z_ctx.to(self.dtype), actions.to(self.dtype), context).float()


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)


def in_precision(predictor, precision: str):
    """The predictor whose rollouts a planner with `precision` uses (itself for float32)."""
    if resolve_precision(precision) == "float32":
        return predictor
    if not amx_bfloat16():
        _warn_once("planner precision bfloat16 on a CPU without bfloat16 matrix units (AMX): rollouts run slower "
                   "than in float32 (set the planners' precision to auto or float32)")
    return CastRollout(predictor, torch.bfloat16)


def optimize(cost_fn: CostFn, mean: torch.Tensor, cfg: PlannerConfig, generator: torch.Generator,
             project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise `cost_fn` over action sequences by CEM or MPPI.

    mean `[B, H, A]`: initial mean (e.g. the previous plan shifted). `project` maps candidates onto an
    allowed set after clipping (the macro-action support). Returns (best sequence `[B, H, A]`, its cost
    `[B]`): the cheapest candidate seen in any iteration; the current mean is always a candidate, so
    a warm start is never lost.
    """
    check_planner(cfg)
    B, H, A = mean.shape
    N = cfg.samples
    std = torch.full_like(mean, cfg.init_std)
    best, best_cost = mean.clone(), torch.full((B,), float("inf"))
    n_elite = max(1, int(round(cfg.elite_frac * N)))
    for _ in range(cfg.iterations):
        noise = torch.randn((B, N, H, A), generator=generator)
        cand = (mean[:, None] + std[:, None] * noise).clamp(cfg.low, cfg.high)  # [B, N, H, A]
        cand[:, 0] = mean.clamp(cfg.low, cfg.high)
        if project is not None:
            cand = project(cand)
        cost = cost_fn(cand)  # [B, N]
        i = cost.argmin(1)
        improved = cost[torch.arange(B), i] < best_cost
        best[improved] = cand[torch.arange(B), i][improved]
        best_cost = torch.minimum(best_cost, cost[torch.arange(B), i])
        if cfg.method == "cem":
            idx = cost.topk(n_elite, dim=1, largest=False).indices  # [B, K]
            elites = torch.gather(cand, 1, idx[:, :, None, None].expand(-1, -1, H, A))  # [B, K, H, A]
            mean, std = elites.mean(1), elites.std(1, unbiased=False).clamp_min(cfg.min_std)
        else:  # MPPI: softmax-weighted mean; temperature relative to this round's cost spread
            spread = (cost.max(1, keepdim=True).values - cost.min(1, keepdim=True).values).clamp_min(1e-8)
            w = torch.softmax(-(cost - cost.min(1, keepdim=True).values) / (cfg.temperature * spread), dim=1)
            mean = (w[:, :, None, None] * cand).sum(1)
            var = (w[:, :, None, None] * (cand - mean[:, None]) ** 2).sum(1)
            std = var.sqrt().clamp_min(cfg.min_std)
    return best, best_cost


Distance = Callable[[torch.Tensor], torch.Tensor]  # predicted states [B, N, H, D] -> distances [B, N, H]
DISTANCES = ("l2", "learned")
NO_DISTANCE = ("planner distance: learned, but the world model has no learned goal distance: train it with "
               "distance.steps > 0 in the world-model config")
NO_ENSEMBLE = ("planner ensemble: true, but the world model has one level-0 predictor: train an ensemble with "
               "predictor.ensemble > 1 in the world-model config")
COSTS = {"sum": lambda d: d.sum(-1), "final": lambda d: d[..., -1], "min": lambda d: d.min(-1).values}


CHUNK_ROWS = 256  # rollouts per predictor call when scoring candidates. All B x N at once allocate ~100 MB per
# layer (200 tasks x 64 candidates x a 32 x 8 x 8 map): fresh pages every call, more time in page faults than in
# the convolutions. In chunks the allocator reuses memory: the Two-Rooms spatial plan job's flat CEM ran 3.8x
# faster at 1 thread (392 s -> 103 s for 200 episodes), with the same paths bit for bit.


class LatentGoalCost:
    """Cost of candidate action sequences: the distances of the predicted states to the goal,
    ||z_pred_h - z_goal||_2 (or `distance(z_pred)` when given: a goal in another level's space), summed over
    the horizon (`reduce="sum"`, the default), or the last one (`final`), or the smallest (`min`).

    Args:
        predictor: an `ACPredictor`. z_now `[B, D]`: current representation. z_goal `[B, D]` (unused when
        `distance` is given). context: see `PlannerConfig.context` (history beyond the current frame is not
        used here). distance: predicted states `[B, N, H, D]` -> `[B, N, H]`. members: other predictors of an
        ensemble; the cost is then the mean of the costs under each predictor's rollouts. active: bool `[B]`,
        the problems still running (None = all): only their candidates are rolled out and scored, the others
        cost 0 (an episode that has reached its goal plans nothing; its actions are not executed).
    """

    def __init__(self, predictor, z_now: torch.Tensor, z_goal: Optional[torch.Tensor], context: int = 1,
                 distance: Optional[Distance] = None, reduce: str = "sum", members: Sequence = (),
                 active: Optional[torch.Tensor] = None):
        self.predictor, self.z_now, self.z_goal, self.context = predictor, z_now, z_goal, context
        self.members = list(members)
        self.rows = None if active is None or bool(active.all()) else active.nonzero()[:, 0]
        self.idle = None if self.rows is None else ~active[:, None]  # [B, 1]
        self.distance = distance or (lambda z: (z - self.z_goal[:, None, None]).norm(dim=-1))
        self.reduce = COSTS[reduce]

    @torch.no_grad()
    def predict(self, actions: torch.Tensor, predictor=None, z_now: Optional[torch.Tensor] = None) -> torch.Tensor:
        """actions `[B, N, H, A]` -> predicted representations `[B, N, H, D]` (of the first predictor, or of
        `predictor`; from `z_now` `[B, D]`, by default the current states)."""
        B, N, H, A = actions.shape
        z_now = self.z_now if z_now is None else z_now
        z0 = z_now[:, None].expand(B, N, -1).reshape(B * N, 1, -1)
        return (predictor or self.predictor).rollout(z0, actions.reshape(B * N, H, A), self.context).view(B, N, H, -1)

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        B, N = actions.shape[:2]
        b = B if self.rows is None else len(self.rows)
        if b == 0:  # every problem has finished
            return actions.new_zeros(B, N)
        step = max(1, CHUNK_ROWS // b)  # candidates per chunk: b x step rollouts at a time
        return torch.cat([self._cost(actions[:, i:i + step]) for i in range(0, N, step)], 1)

    def _cost(self, actions: torch.Tensor) -> torch.Tensor:
        costs = []
        for p in [self.predictor, *self.members]:
            if self.rows is None:
                z = self.predict(actions, p)
            else:  # roll out the running problems only; the distance sees every problem (zeros elsewhere)
                part = self.predict(actions[self.rows], p, self.z_now[self.rows])
                z = part.new_zeros(actions.shape[:3] + part.shape[-1:])
                z[self.rows] = part
            if self.reduce is COSTS["final"]:
                z = z[:, :, -1:]  # only the last state counts: measure only it (a learned distance is not free)
            cost = self.reduce(self.distance(z))  # [B, n]
            costs.append(cost if self.idle is None else cost.masked_fill(self.idle, 0.0))
        return costs[0] if len(costs) == 1 else torch.stack(costs).mean(0)


def snap_to_bank(bank: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Projection of candidates `[..., m]` onto the nearest code of `bank` `[M, m]`."""
    def project(cand: torch.Tensor) -> torch.Tensor:
        flat = cand.reshape(-1, cand.shape[-1])
        return bank[torch.cdist(flat, bank).argmin(1)].view_as(cand)
    return project


class RandomPolicy:
    """Baseline: the random walk of the training data (AR(1) Gaussian actions, clipped)."""

    def __init__(self, batch: int, seed: int, persistence: float = 0.8, scale: float = 0.7):
        self.rng = np.random.default_rng(seed)
        self.noise = np.zeros((batch, 2))
        self.persistence, self.scale = persistence, scale
        self.compute, self.plan_time = 0, 0.0

    def reset(self, z_now: torch.Tensor, z_goal: torch.Tensor) -> None:
        pass

    def act(self, z_now: torch.Tensor, t: int, active: Optional[torch.Tensor] = None) -> np.ndarray:
        rho = self.persistence
        self.noise = rho * self.noise + np.sqrt(1 - rho ** 2) * self.rng.normal(0, self.scale, self.noise.shape)
        return np.clip(self.noise, -1, 1)


class FlatPlanner:
    """Receding-horizon MPC with CEM or MPPI on the level-0 world model.

    Args:
        predictor: level-0 `ACPredictor`. cfg: planner settings. seed: sampling seed.
        goal_distance: the world model's `GoalDistance` (required when `cfg.distance` is `learned`).
        members: the other level-0 predictors of the world model's ensemble (required when `cfg.ensemble`).
    """

    def __init__(self, predictor, cfg: PlannerConfig, seed: int, goal_distance=None, members: Sequence = ()):
        check_planner(cfg)
        if cfg.distance == "learned" and goal_distance is None:
            raise ValueError(NO_DISTANCE)
        if cfg.ensemble and not members:
            raise ValueError(NO_ENSEMBLE)
        self.predictor, self.cfg, self.goal_distance = in_precision(predictor, cfg.precision), cfg, goal_distance
        self.members = [in_precision(m, cfg.precision) for m in members] if cfg.ensemble else []
        self.to_goal: Optional[Distance] = None
        self.gen = torch.Generator().manual_seed(seed)
        self.compute, self.plan_time = 0, 0.0
        self.plan: Optional[torch.Tensor] = None
        self.planned_z: Optional[torch.Tensor] = None  # [B, H, D] imagined path of the latest plan
        self.first_planned_z: Optional[torch.Tensor] = None  # the episode's first imagined path (plots)

    def reset(self, z_now: torch.Tensor, z_goal: torch.Tensor) -> None:
        self.z_goal = z_goal
        learned = self.cfg.distance == "learned" and z_goal is not None
        self.to_goal = self.goal_distance.to_goal(z_goal) if learned else None
        self.plan = torch.zeros(len(z_now), self.cfg.horizon, 2)
        self.k = 0
        self.first_planned_z = None

    def replan(self, z_now: torch.Tensor, z_goal: Optional[torch.Tensor], distance: Optional[Distance] = None,
               active: Optional[torch.Tensor] = None) -> None:
        """Plan from `z_now` towards `z_goal` (or by `distance`); `active`: see `LatentGoalCost`."""
        t0 = time.perf_counter()
        if distance is None and self.to_goal is not None:
            distance = self.to_goal
        cost = LatentGoalCost(self.predictor, z_now, z_goal, self.cfg.context, distance, self.cfg.cost, self.members,
                              active)
        shifted = torch.cat([self.plan[:, self.k:], torch.zeros(len(z_now), self.k, 2)], 1)  # warm start
        self.plan, _ = optimize(cost, shifted, self.cfg, self.gen)
        self.planned_z = cost.predict(self.plan[:, None])[:, 0]
        if self.first_planned_z is None:
            self.first_planned_z = self.planned_z
        self.compute += self.cfg.compute(1 + len(self.members))
        self.plan_time += time.perf_counter() - t0
        self.k = 0

    def act(self, z_now: torch.Tensor, t: int, active: Optional[torch.Tensor] = None) -> np.ndarray:
        """The action of step `t` for every problem `[B, A]`; `active` (bool `[B]`, None = all): the problems
        still running, the only ones planned for."""
        if t % self.cfg.replan_every == 0:
            self.replan(z_now, self.z_goal, active=active)
        a = self.plan[:, self.k]
        self.k += 1
        return a.numpy()


@dataclass
class HierarchicalConfig:
    """Args:
        levels: one planner per level k = 1..K over its macro-actions (their `replan_every` is ignored: level
        k replans every `subgoal_every * span_k / span_1` low-level steps). level0: planner towards the
        current subgoal. subgoal_every: low-level steps per level-1 subgoal (the level-1 stride is natural).
    """

    levels: List[PlannerConfig]
    level0: PlannerConfig
    subgoal_every: int = 8

    @staticmethod
    def UPGRADE(raw: dict) -> None:
        """A plan config written for the two-level model named its one upper planner `level1`."""
        if "level1" in raw:
            if "levels" in raw:
                raise ConfigError("hierarchical: both `level1` (old name) and `levels` are set; keep `levels`")
            raw["levels"] = [raw.pop("level1")]


Target = List[Tuple[torch.Tensor, int, torch.Tensor]]  # parts (vector [B, D_s], level s of its space, rows [B])


class HierarchicalPlanner:
    """Top-down subgoals through the level stack of a `WorldModel`. Level K plans over its macro-actions
    (confined to the bank of training codes) from the current state towards the goal; the first state of
    its plan becomes the target of level K-1, which plans towards it (distance measured in level K's space,
    through level K's encoder), and so on down to level 0, which plans primitive actions by MPC towards
    level 1's subgoal. A level whose best plan brings no first step closer to its target than where the
    agent already is passes its own target down unchanged for that problem (the agent is within one of its
    steps). Level k replans every `subgoal_every * span_k / span_1` low-level steps. With identity level
    encoders (one space for all levels) and two levels this is the two-level planner of earlier versions,
    draw for draw.

    Args:
        wm: the `WorldModel` (levels, their predictors and state maps). banks: macro codes `[M, m_k]` per
        level k >= 1. cfg: planners. seed: sampling seed (level k samples with seed + k).
    """

    def __init__(self, wm, banks: Sequence[torch.Tensor], cfg: HierarchicalConfig, seed: int):
        K = wm.num_levels - 1
        if K < 1 or len(cfg.levels) != K or len(banks) != K:
            raise ValueError(f"hierarchical planning needs a planner and a bank per level above 0: the model has "
                             f"{K} such levels, the config {len(cfg.levels)} planners, the checkpoint {len(banks)} banks")
        for c in cfg.levels:
            check_planner(c)
            if c.ensemble:
                raise ValueError("hierarchical: ensemble is for level 0 (hierarchical.level0.ensemble), not levels >= 1")
        self.wm, self.banks, self.cfg, self.K = wm, list(banks), cfg, K
        self.learned = [c.distance == "learned" for c in (cfg.level0, *cfg.levels)]  # per level 0..K
        if any(self.learned) and any(lv.cfg.encoder != "identity" for lv in wm.levels[1:]):
            raise ValueError("hierarchical planning with distance: learned needs every level's states in level "
                             "0's space (identity level encoders)")
        if any(self.learned) and getattr(wm, "distance", None) is None:
            raise ValueError(NO_DISTANCE)
        self.low = FlatPlanner(wm.predictor, cfg.level0, seed, getattr(wm, "distance", None),
                               getattr(wm, "predictors", [wm.predictor])[1:])
        self.projects = [snap_to_bank(b) for b in banks]
        self.predictors = [in_precision(wm.predictor_of(k), c.precision) for k, c in enumerate(cfg.levels, 1)]
        self.gens = [torch.Generator().manual_seed(seed + k) for k in range(1, K + 1)]
        self.period = [max(1, cfg.subgoal_every * wm.span(k) // wm.span(1)) for k in range(1, K + 1)]
        self.compute, self.plan_time = 0, 0.0
        self.subgoals: list[torch.Tensor] = []  # level-0-space subgoals [B, D] per level-1 replan (plots)
        self.planned_z1: Optional[torch.Tensor] = None

    def reset(self, z_now: torch.Tensor, z_goal: torch.Tensor) -> None:
        B = len(z_now)
        self.low.reset(z_now, z_goal)
        self.plans = [torch.zeros(B, c.horizon, b.shape[1]) for c, b in zip(self.cfg.levels, self.banks)]
        top = self.K
        self.targets: List[Target] = [[] for _ in range(self.K + 1)]  # targets[k]: what level k pursues
        self.targets[top] = [(self.wm.state(z_goal, top), top, torch.ones(B, dtype=torch.bool))]
        self.subgoals = []
        self.planned_z1 = None

    def distance(self, k: int, target: Target) -> Distance:
        """Distance of level-k states `[B, ..., D_k]` to a target, each problem in its part's space (or, where
        level k's planner has `distance: learned`, the learned goal distance: every state is then a level-0
        state, identity level encoders)."""
        net = self.wm.distance if self.learned[k] else None
        with torch.no_grad():  # a learned distance embeds each goal once, not at every call
            parts = [(net.embed(g) if net is not None else g, s, rows) for g, s, rows in target]

        @torch.no_grad()
        def dist(z: torch.Tensor) -> torch.Tensor:
            out = z.new_zeros(z.shape[:-1])
            e = net.embed(z) if net is not None else None
            for g, s, rows in parts:
                g = g.view(g.shape[0], *([1] * (z.ndim - 2)), g.shape[-1])
                d = net.pair(e, g) if net is not None else (self.wm.state(z, s, k) - g).norm(dim=-1)
                out = out + d * rows.view(-1, *([1] * (z.ndim - 2)))
            return out
        return dist

    def propose_subgoal(self, z_now: torch.Tensor, k: int, active: Optional[torch.Tensor] = None) -> Target:
        """Level k plans towards its target (for the `active` problems; None = all); -> level k-1's target."""
        c = self.cfg.levels[k - 1]
        t0 = time.perf_counter()
        zk = self.wm.state(z_now, k)
        dist = self.distance(k, self.targets[k])
        cost = LatentGoalCost(self.predictors[k - 1], zk, None, c.context, dist, c.cost, active=active)
        plan = self.plans[k - 1]
        shifted = torch.cat([plan[:, 1:], plan[:, -1:]], 1)
        self.plans[k - 1], _ = optimize(cost, shifted, c, self.gens[k - 1], self.projects[k - 1])
        pred = cost.predict(self.plans[k - 1][:, None])[:, 0]  # [B, H_k, D_k]
        if k == 1 and self.planned_z1 is None:
            self.planned_z1 = pred  # the episode's first level-1 imagined path (plots)
        closer = dist(pred[:, :1])[:, 0] < dist(zk[:, None])[:, 0]
        self.compute += c.compute()
        self.plan_time += time.perf_counter() - t0
        return [(pred[:, 0], k, closer)] + [(g, s, rows & ~closer) for g, s, rows in self.targets[k]]

    def act(self, z_now: torch.Tensor, t: int, active: Optional[torch.Tensor] = None) -> np.ndarray:
        """As `FlatPlanner.act`, every level planning for the `active` problems only."""
        for k in range(self.K, 0, -1):
            if t % self.period[k - 1] == 0:
                self.targets[k - 1] = self.propose_subgoal(z_now, k, active)
                if k == 1 and all(g.shape[-1] == z_now.shape[-1] for g, _, _ in self.targets[0]):
                    self.subgoals.append(sum(g * rows[:, None] for g, _, rows in self.targets[0]))
        if t % self.cfg.level0.replan_every == 0 or t % self.period[0] == 0:
            c0, t0 = self.low.compute, self.low.plan_time
            self.low.replan(z_now, None, self.distance(0, self.targets[0]), active)
            self.compute += self.low.compute - c0
            self.plan_time += self.low.plan_time - t0
        a = self.low.plan[:, self.low.k]
        self.low.k += 1
        return a.numpy()
