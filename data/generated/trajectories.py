"""Trajectory datasets for world-model training: random-walk and noisy-expert point-mass episodes.

Only states and actions are stored (a few MB); frames are rendered on demand from the state, which
`data.generated.envs.render` does deterministically, so an image dataset of 100k frames never sits on disk.
A dataset is a pure function of its config: the cache file name is a hash of the config, and
regenerating with the same config gives the same arrays bit for bit.

Policies:
- random walk: temporally correlated Gaussian actions (AR(1) with `random_persistence`), so the agent
  wanders rather than jittering in place.
- noisy expert: descends the shortest-path field to a random goal (a new goal once reached), plus
  Gaussian action noise; it crosses doors, which random walks rarely do.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from data.seeding import derive_seed
from data.generated.envs import (EnvConfig, bounce, distance_field, expert_actions, render, sample_free, sample_maps,
                       step_positions)

logger = logging.getLogger(__name__)


@dataclass
class TrajectoryConfig:
    """Args:
        env: the world. num_trajectories / length: episodes and steps per episode (length + 1 states).
        expert_fraction: share of noisy-expert episodes (the rest are random walks).
        random_persistence: AR(1) coefficient of random-walk actions. random_scale: their std.
        expert_noise: std of the Gaussian noise added to expert actions.
        greedy_fraction: share of the non-expert episodes driven straight at a goal, walls ignored (unit
            actions towards it plus expert_noise): they press against the walls between them and their goal,
            the transitions a model needs to learn that walls block (random walks seldom meet the inner wall).
            0 = none (the dataset is then bit for bit the one of configs without this key).
        num_layouts: wall maps drawn from layout_seed (1 = one fixed map); every episode draws one of them,
            so num_layouts in the thousands (with env.wall_shift / door_cells_max) gives each episode its own.
        layout_split: "train" draws only train-split maps (`data.generated.envs.is_heldout`), the setting
            for a model evaluated on held-out maps; "all" draws any (the maps of configs before splits).
        seed: policy and start-state randomness. cache_dir: where generated datasets are kept (None = no cache).
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    num_trajectories: int = 2000
    length: int = 32
    expert_fraction: float = 0.5
    random_persistence: float = 0.8
    random_scale: float = 0.7
    expert_noise: float = 0.3
    greedy_fraction: float = 0.0
    num_layouts: int = 1
    layout_seed: int = 0
    layout_split: str = "all"
    seed: int = 0
    cache_dir: Optional[str] = "data_cache/trajectories"


def make_layouts(env: EnvConfig, num_layouts: int, layout_seed: int, split: str = "all") -> np.ndarray:
    """`num_layouts` wall maps `[L, G, G]` of `split`, map i drawn from (layout_seed, i)."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"data.layout_split {split!r} unknown; valid: ['all', 'train', 'heldout']")
    return sample_maps(env, num_layouts, layout_seed, split)


def generate(cfg: TrajectoryConfig) -> Dict[str, np.ndarray]:
    """-> states `[N, T+1, 2]`, actions `[N, T, 2]` in [-1, 1], layout `[N]`, walls `[L, G, G]`,
    distractors `[N, T+1, K, 4]`, expert `[N]` bool."""
    if cfg.num_trajectories < 1 or cfg.length < 1 or cfg.num_layouts < 1:
        raise ValueError("num_trajectories, length and num_layouts must be >= 1")
    if not 0.0 <= cfg.expert_fraction <= 1.0:
        raise ValueError(f"expert_fraction {cfg.expert_fraction} must be in [0, 1]")
    if not 0.0 <= cfg.greedy_fraction <= 1.0:
        raise ValueError(f"greedy_fraction {cfg.greedy_fraction} must be in [0, 1]")
    rng = np.random.default_rng(derive_seed(cfg.seed, 1))
    N, T, env = cfg.num_trajectories, cfg.length, cfg.env
    walls_all = make_layouts(env, cfg.num_layouts, cfg.layout_seed, cfg.layout_split)
    layout = rng.integers(cfg.num_layouts, size=N)
    walls = walls_all[layout]
    expert = rng.random(N) < cfg.expert_fraction
    greedy = np.zeros(N, dtype=bool)
    if cfg.greedy_fraction > 0:  # its own stream: the other draws stay those of a dataset without greedy episodes
        greedy = ~expert & (np.random.default_rng(derive_seed(cfg.seed, 2)).random(N) < cfg.greedy_fraction)
    states = np.zeros((N, T + 1, 2))
    actions = np.zeros((N, T, 2))
    K = env.num_distractors
    distractors = np.zeros((N, T + 1, K, 4))
    if K:
        ang = rng.uniform(0, 2 * np.pi, (N, K))
        distractors[:, 0] = np.concatenate([rng.uniform(0.05, 0.95, (N, K, 2)),
                                            env.distractor_speed * np.stack([np.cos(ang), np.sin(ang)], -1)], -1)
    pos = sample_free(walls, rng)
    goal = sample_free(walls, rng)
    field_ = distance_field(walls, goal)
    noise = np.zeros((N, 2))
    states[:, 0] = pos
    for t in range(T):
        rho = cfg.random_persistence
        noise = rho * noise + np.sqrt(1 - rho ** 2) * rng.normal(0, cfg.random_scale, (N, 2))
        a_exp = expert_actions(field_, pos, goal) + rng.normal(0, cfg.expert_noise, (N, 2))
        a = np.clip(np.where(expert[:, None], a_exp, noise), -1.0, 1.0)
        if greedy.any():
            to_goal = goal - pos
            a_greedy = to_goal / np.maximum(np.linalg.norm(to_goal, axis=-1, keepdims=True), 1e-9)
            a = np.where(greedy[:, None], np.clip(a_greedy + rng.normal(0, cfg.expert_noise, (N, 2)), -1.0, 1.0), a)
        pos = step_positions(walls, pos, a, env)
        actions[:, t], states[:, t + 1] = a, pos
        if K:
            distractors[:, t + 1] = bounce(distractors[:, t])
        reached = (expert | greedy) & (np.linalg.norm(pos - goal, axis=-1) < 2 * env.max_step)
        if reached.any():  # experts get a fresh goal and keep moving
            goal[reached] = sample_free(walls[reached], rng)
            field_[reached] = distance_field(walls[reached], goal[reached])
    return {"states": states.astype(np.float32), "actions": actions.astype(np.float32),
            "layout": layout, "walls": walls_all, "distractors": distractors.astype(np.float32), "expert": expert}


def config_hash(cfg: TrajectoryConfig) -> str:
    d = asdict(cfg)
    d.pop("cache_dir")
    if d["greedy_fraction"] == 0:  # datasets without greedy episodes keep their cache names
        d.pop("greedy_fraction")
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def load_or_generate(cfg: TrajectoryConfig) -> Dict[str, np.ndarray]:
    """The dataset of `cfg`, from the cache when present (generated and saved otherwise)."""
    path = Path(cfg.cache_dir) / f"{cfg.env.name}-{config_hash(cfg)}.npz" if cfg.cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    data = generate(cfg)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, **data)
        tmp.replace(path)  # atomic: a killed run never leaves half a cache file
        logger.info("saved %d trajectories to %s", cfg.num_trajectories, path)
    return data


class TrajectoryWindows:
    """Windows of `window` frames `stride` steps apart, with the action chunks between them.

    `batch(idx)` -> frames `[B, W, 3, S, S]` float32, actions `[B, W-1, stride, 2]`, states `[B, W, 2]`.
    Windows start anywhere in a trajectory such that they fit; index i is (trajectory, start) in
    row-major order.

    Args:
        data: `generate` output. env: the world (for rendering). window: frames per window.
        stride: steps between consecutive frames (1 for the level-0 model, k for a level-k model).
    """

    def __init__(self, data: Dict[str, np.ndarray], env: EnvConfig, window: int, stride: int = 1):
        T = data["actions"].shape[1]
        span = (window - 1) * stride
        if window < 2 or stride < 1 or span > T:
            raise ValueError(f"window {window} x stride {stride} does not fit trajectories of {T} steps")
        self.data, self.env, self.window, self.stride = data, env, window, stride
        self.starts_per_traj = T - span + 1

    def __len__(self) -> int:
        return len(self.data["states"]) * self.starts_per_traj

    def batch(self, idx: np.ndarray) -> Dict[str, torch.Tensor]:
        idx = np.asarray(idx)
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"window index out of range [0, {len(self)})")
        n, t0 = idx // self.starts_per_traj, idx % self.starts_per_traj
        W, s, B = self.window, self.stride, len(idx)
        t = t0[:, None] + s * np.arange(W)[None]  # [B, W]
        steps = t0[:, None] + np.arange((W - 1) * s)[None]  # [B, (W-1) s]
        actions = self.data["actions"][n[:, None], steps].reshape(B, W - 1, s, 2)
        out = self.observe(n, t)
        out.update({"actions": torch.from_numpy(actions), "states": torch.from_numpy(self.data["states"][n[:, None], t])})
        return out

    def observe(self, n: np.ndarray, t: np.ndarray) -> Dict[str, torch.Tensor]:
        """What the model sees at states (n `[B]`, t `[B, W]`): rendered frames `[B, W, 3, S, S]`."""
        B, W = t.shape
        states = self.data["states"][n[:, None], t]  # [B, W, 2]
        dis = self.data["distractors"][n[:, None], t]  # [B, W, K, 4]
        walls = self.data["walls"][self.data["layout"][n]]  # [B, G, G]
        frames = render(np.repeat(walls, W, axis=0), states.reshape(B * W, 2), self.env,
                        dis.reshape(B * W, *dis.shape[2:]))
        return {"frames": torch.from_numpy(frames).view(B, W, *frames.shape[1:])}
