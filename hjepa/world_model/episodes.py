"""Planning episodes, shared by the plan job (evaluate.py) and the world-model job's on-policy refine stage
(on_policy.py): start/goal tasks binned by shortest-path distance, and B episodes run together by a policy
in the point-mass environment, with success judged on the true positions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from data.generated.envs import PointMassEnv, geodesic_distance, render, sample_free
from data.seeding import derive_seed


@dataclass
class TaskConfig:
    """per_bin: tasks per distance bin. bins: [low, high) shortest-path lengths (world units).
    seed: task (and held-out map) draw. margin: minimum clearance of start and goal from walls.
    layouts: map sets to evaluate on, a table each (`LAYOUT_SETS`; the first is plotted). num_layouts:
    maps per set (a world model trained on fewer maps gives its "train" set all of them). seen_seeds: the
    planner seeds of the "train" set (None = the run's `seeds`): fewer seeds there keep a job with both tables
    short while the held-out table keeps them all."""

    per_bin: int = 50
    bins: List[List[float]] = field(default_factory=lambda: [[0.1, 0.4], [0.4, 0.7], [0.7, 1.2]])
    seed: int = 0
    margin: float = 0.04
    layouts: List[str] = field(default_factory=lambda: ["heldout", "train"])
    num_layouts: int = 50
    seen_seeds: Optional[List[int]] = None


def make_tasks(walls_all: np.ndarray, cfg: TaskConfig) -> Dict[str, np.ndarray]:
    """-> start `[n, 2]`, goal `[n, 2]`, layout `[n]`, dist `[n]`, bin `[n]`, bins in order, per_bin each."""
    rng = np.random.default_rng(derive_seed(cfg.seed, 7))
    picked: Dict[int, list] = {b: [] for b in range(len(cfg.bins))}
    for _ in range(200):
        n = 512
        layout = rng.integers(len(walls_all), size=n)
        walls = walls_all[layout]
        s, g = sample_free(walls, rng, cfg.margin), sample_free(walls, rng, cfg.margin)
        d = geodesic_distance(walls, s, g)
        for i in range(n):
            for b, (lo, hi) in enumerate(cfg.bins):
                if lo <= d[i] < hi and len(picked[b]) < cfg.per_bin:
                    picked[b].append((s[i], g[i], layout[i], d[i], b))
        if all(len(v) == cfg.per_bin for v in picked.values()):
            rows = [r for b in range(len(cfg.bins)) for r in picked[b]]
            return {"start": np.stack([r[0] for r in rows]), "goal": np.stack([r[1] for r in rows]),
                    "layout": np.array([r[2] for r in rows]), "dist": np.array([r[3] for r in rows]),
                    "bin": np.array([r[4] for r in rows])}
    short = {tuple(cfg.bins[b]): len(v) for b, v in picked.items() if len(v) < cfg.per_bin}
    raise ValueError(f"could not fill the distance bins {short} with {cfg.per_bin} tasks: the map has too few "
                     "start/goal pairs that far apart; change tasks.bins")



@torch.no_grad()
def run_episodes(policy, wm, env_cfg, walls: np.ndarray, start: np.ndarray, goal: np.ndarray, max_steps: int,
                 radius: float, seed: int, skip_finished: bool = True) -> Dict[str, np.ndarray]:
    """Run B episodes together. -> success `[B]`, steps `[B]` (to success, else max_steps), path
    `[B, T+1, 2]`, the actions executed `[B, T, 2]` (0 once an episode has succeeded: the agent waits),
    compute `[B]` (predictor steps planned while the episode ran); T = max_steps, or fewer when every
    episode has succeeded before. With `skip_finished` the
    planners plan only for the episodes still running (a finished agent waits; its plan was never used);
    off, every problem is planned every step (for cost functions that index problems by row)."""
    env = PointMassEnv(env_cfg, walls, seed)
    obs = env.reset(start)
    z_goal = wm.encode(torch.from_numpy(render(walls, goal, env_cfg, env.distractors)))
    z = wm.encode(torch.from_numpy(obs))
    policy.reset(z, z_goal)
    done = np.linalg.norm(env.pos - goal, axis=-1) < radius
    steps = np.where(done, 0, max_steps)
    path, executed = [env.pos.copy()], []
    spent = np.zeros(len(start))  # predictor steps spent on each episode while it was still running
    for t in range(max_steps):
        c0 = policy.compute
        a = policy.act(z, t, torch.from_numpy(~done) if skip_finished else None)
        spent += (policy.compute - c0) * ~done
        a[done] = 0.0  # finished agents wait
        executed.append(a.copy())
        obs = env.step(a)
        z = wm.encode(torch.from_numpy(obs))
        path.append(env.pos.copy())
        now = np.linalg.norm(env.pos - goal, axis=-1) < radius
        steps = np.where(now & ~done, t + 1, steps)
        done |= now
        if done.all():
            break
    return {"success": done, "steps": steps, "path": np.stack(path, 1), "actions": np.stack(executed, 1),
            "compute": spent}
