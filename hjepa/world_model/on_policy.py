"""Refine on the planner's own episodes: DAgger for the world model (Ross & Bagnell, 2012).

The refine stage (refine.py) fits the level-0 predictor to the goal distance D on the training data's
random and greedy walks. The plan job then runs CEM, which keeps the best of hundreds of candidate action
sequences by D of their imagined end states, and picks sequences unlike the data's wherever the predictor
errs in its favour. The remedy of model-based control: let the planner act in the environment, record what
really happened, and train the model on it. After the refine stage, the refined world model plans flat CEM
episodes (`planner`, the plan config's flat CEM) towards start/goal tasks on training maps; the executed
paths are rendered and encoded by the frozen level 0, and the predictor trains `steps` more steps on
batches whose `share` are windows of these episodes (their goal the task's goal) and the rest windows of
the distance's episodes, with the refine stage's loss. The maps are training maps from `first_map` on: the
plan job's seen table uses the first `tasks.num_layouts` (50) and its held-out maps are never touched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

from data.generated.envs import EnvConfig
from data.generated.trajectories import TrajectoryConfig
from data.seeding import derive_seed
from hjepa.world_model.episodes import TaskConfig, make_tasks, run_episodes
from hjepa.world_model.feature_cache import encode_dataset
from hjepa.world_model.planning import FlatPlanner, PlannerConfig, check_planner


def _cem() -> PlannerConfig:
    return PlannerConfig(horizon=8, samples=64, iterations=3, replan_every=4, distance="learned", cost="final")


@dataclass
class OnPolicyConfig:
    """`refine.on_policy:` (off by default: `episodes: 0`).

    Args:
        episodes: planner episodes collected on training maps after the refine stage (a multiple of the
            number of `bins`: as many tasks per bin). steps: refine steps on them afterwards (AdamW at `lr`,
            cosine, no warmup). share: fraction of each batch from these episodes (the rest: the distance's).
        first_map: the tasks use training maps `first_map`, `first_map + 1`, ... (one per episode at most).
        bins: shortest-path length bins of the tasks (the plan configs' four). max_steps / success_radius:
            as the plan job. planner: the collecting planner (`distance: learned`); its defaults repeat the
            shipped plan configs' flat CEM, since the world-model job does not read a plan config.
    """

    episodes: int = 0
    steps: int = 1500
    share: float = 0.5
    lr: float = 1e-4
    first_map: int = 50
    bins: List[List[float]] = field(default_factory=lambda: [[0.1, 0.4], [0.4, 0.7], [0.7, 1.0], [1.0, 1.6]])
    max_steps: int = 60
    success_radius: float = 0.07
    planner: PlannerConfig = field(default_factory=_cem)


def check_on_policy(cfg: OnPolicyConfig, refine_steps: int, data: TrajectoryConfig) -> None:
    if not cfg.episodes:
        return
    if not refine_steps:
        raise ValueError("refine.on_policy.episodes > 0 continues the refine stage: set refine.steps > 0 too")
    if cfg.episodes < 0 or cfg.episodes % len(cfg.bins) or cfg.steps < 1 or not 0.0 < cfg.share <= 1.0:
        raise ValueError(f"refine.on_policy: episodes must be a multiple of the {len(cfg.bins)} bins, steps >= 1 and "
                         f"share in (0, 1]; got {cfg.episodes}, {cfg.steps}, {cfg.share}")
    if cfg.first_map < 0 or cfg.first_map + 1 > data.num_layouts:
        raise ValueError(f"refine.on_policy.first_map {cfg.first_map} leaves no training map of data.num_layouts "
                         f"{data.num_layouts}")
    if data.env.num_distractors:
        raise ValueError("refine.on_policy needs data.env.num_distractors: 0 (the planner's episodes record the "
                         "agent's path, not the distractors', so their frames could not be rendered again)")
    check_planner(cfg.planner)
    if cfg.planner.distance != "learned":
        raise ValueError("refine.on_policy.planner.distance must be `learned`: the refine loss is about that cost")


@torch.no_grad()
def collect(wm, walls: np.ndarray, env: EnvConfig, cfg: OnPolicyConfig, seed: int) -> Dict[str, torch.Tensor]:
    """Flat-planner episodes of `wm` (a CPU copy is used) on the training maps `walls` `[L, G, G]` (the dataset's
    `walls`) -> positions `[B, T+1, 2]`, the executed `actions` `[B, T, 2]`, `goal` `[B, 2]`, the training
    map's index `layout` `[B]`, `steps` `[B]` (to success, else max_steps) and `success` `[B]`, as tensors
    (they go into the checkpoint). A function of (the model, `seed`)."""
    wm = copy.deepcopy(wm).cpu().eval()
    first = cfg.first_map
    maps = walls[first:first + cfg.episodes]
    tasks = make_tasks(maps, TaskConfig(per_bin=cfg.episodes // len(cfg.bins), bins=cfg.bins,
                                        seed=derive_seed(seed, 103)))
    planner = FlatPlanner(wm.predictor, cfg.planner, derive_seed(seed, 104), wm.distance, wm.predictors[1:])
    ep = run_episodes(planner, wm, env, maps[tasks["layout"]], tasks["start"], tasks["goal"], cfg.max_steps,
                      cfg.success_radius, derive_seed(seed, 105))
    return {"positions": torch.from_numpy(ep["path"]), "actions": torch.from_numpy(ep["actions"]).float(),
            "goal": torch.from_numpy(tasks["goal"]), "layout": torch.from_numpy(tasks["layout"] + first),
            "steps": torch.from_numpy(ep["steps"]), "success": torch.from_numpy(ep["success"])}


def encode_episodes(wm, walls: np.ndarray, env: EnvConfig, ep: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`collect`'s episodes as frozen level-0 states (CPU), the frames rendered and encoded as the dataset's
    (`feature_cache.encode_dataset` with level 0's encoder): `z` `[B, T+1, D]`, `actions` `[B, T, A]`,
    `z_goal` `[B, D]` and `last` `[B]`, the last step a window may start at while its episode runs."""
    layout, B = ep["layout"].numpy(), len(ep["layout"])

    def states(pos: torch.Tensor) -> dict:  # positions `[B, T+1, 2]` as an `encode_dataset` input
        return {"states": pos.numpy(), "walls": walls, "layout": layout,
                "distractors": np.zeros((B, pos.shape[1], 0, 4), np.float32)}

    return {"z": encode_dataset(wm.encoder, states(ep["positions"]), env), "actions": ep["actions"],
            "z_goal": encode_dataset(wm.encoder, states(ep["goal"][:, None]), env)[:, 0], "last": ep["steps"]}


def on_policy_batch(ep: Dict[str, torch.Tensor], batch: int, horizon: int, seed: int, step: int) -> Dict[str, torch.Tensor]:
    """Step `step`'s windows of the planner's episodes (`encode_episodes`), as `refine.refine_batch`'s: `z`
    `[B, horizon+1, D]`, `actions` `[B, horizon, A]`, `z_goal` `[B, D]` (the episode's goal). A window starts
    while its episode runs (at or before its success). Drawn from (seed, step) alone."""
    z, T = ep["z"], ep["actions"].shape[1]
    if T < horizon:
        raise ValueError(f"the planner's episodes lasted {T} steps, fewer than refine.horizon={horizon}")
    rng = np.random.default_rng(derive_seed(seed, 106, step))
    n = torch.from_numpy(rng.integers(len(z), size=batch))
    last = ep["last"][n].clamp(max=T - horizon)
    t = (torch.from_numpy(rng.random(batch)) * (last + 1)).long()
    idx = t[:, None] + torch.arange(horizon + 1)
    return {"z": z[n[:, None], idx], "actions": ep["actions"][n[:, None], idx[:, :-1]], "z_goal": ep["z_goal"][n]}
