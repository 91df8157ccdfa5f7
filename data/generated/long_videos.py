"""Generated long videos with structure at two time scales (the H-JEPA long-horizon data; no download).

A long video is `num_windows` consecutive windows of `window_frames` frames. One shape moves across a
textured background along a continuous path (it wraps around the frame edges):
- fast scale: in each window the shape translates in one of 4 directions (the *primitive*, fast label);
- slow scale: every `action_len` windows form one *compound action*, a fixed sequence of primitives
  (slow label). Compound actions follow a Markov chain: the next one is `successor[c]` with probability
  `p_successor`, otherwise uniform. Compounds share primitives, so a single window rarely tells which
  compound it belongs to: the slow label needs the order of several windows.
Appearance (shape, colour, size, background, rotation sense, start position) is random per video;
video `i` of a given seed is always the same. numpy only (plus torch tensors at the Dataset boundary).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from data.generated.synthetic import DIRECTIONS, _shape_mask

NUM_PRIMITIVES = len(DIRECTIONS)  # right, left, down, up


@dataclass
class LongVideoConfig:
    """Generated long videos.

    Args:
        num_videos: videos per split. num_windows: windows per video (a multiple of `action_len`).
        window_frames / size: frames per window and square frame size.
        num_actions: compound actions (slow classes). action_len: windows (primitives) per compound action.
        p_successor: probability that compound action c is followed by its fixed successor.
        step_px: shape displacement per frame, in pixels.
        noise: std of per-frame pixel noise (so identical windows never repeat exactly).
        table_seed: seed of the compound-action table (shared by all splits).
        seed: which videos (use different seeds per split).
    """

    num_videos: int = 512
    num_windows: int = 32
    window_frames: int = 8
    size: int = 32
    num_actions: int = 6
    action_len: int = 4
    p_successor: float = 0.8
    step_px: float = 1.5
    noise: float = 4.0
    table_seed: int = 0
    seed: int = 0


def validate(cfg: LongVideoConfig) -> None:
    if cfg.action_len < 1 or cfg.num_windows % cfg.action_len:
        raise ValueError(f"num_windows ({cfg.num_windows}) must be a positive multiple of action_len "
                         f"({cfg.action_len})")
    if cfg.num_actions < 2 or cfg.num_actions > NUM_PRIMITIVES ** cfg.action_len:
        raise ValueError(f"num_actions must be in [2, {NUM_PRIMITIVES ** cfg.action_len}], got {cfg.num_actions}")
    if not 0.0 <= cfg.p_successor <= 1.0:
        raise ValueError(f"p_successor must be in [0, 1], got {cfg.p_successor}")
    if cfg.window_frames < 1 or cfg.size < 8:
        raise ValueError(f"window_frames must be >= 1 and size >= 8, got {cfg.window_frames}, {cfg.size}")


def action_table(num_actions: int, action_len: int, table_seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(primitives `[A, L]` int, successor `[A]` int): distinct primitive sequences, no two adjacent windows
    alike (so every window boundary inside an action is visible), and a random successor permutation
    without fixed points."""
    rng = np.random.default_rng([table_seed, 7])
    seqs: list = []
    while len(seqs) < num_actions:
        s = [int(rng.integers(NUM_PRIMITIVES))]
        for _ in range(action_len - 1):
            s.append(int((s[-1] + 1 + rng.integers(NUM_PRIMITIVES - 1)) % NUM_PRIMITIVES))
        if s not in seqs or len(seqs) >= NUM_PRIMITIVES * (NUM_PRIMITIVES - 1) ** (action_len - 1):
            seqs.append(s)
    perm = rng.permutation(num_actions)
    successor = np.empty(num_actions, dtype=np.int64)
    successor[perm] = np.roll(perm, -1)  # one cycle through all actions: no fixed points
    return np.asarray(seqs, dtype=np.int64), successor


def sample_labels(rng: np.random.Generator, cfg: LongVideoConfig, table: np.ndarray,
                  successor: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(fast `[W]`, slow `[W]`) labels of one video: a Markov chain of compound actions, unrolled."""
    n = cfg.num_windows // cfg.action_len
    actions = [int(rng.integers(cfg.num_actions))]
    for _ in range(n - 1):
        keep = rng.random() < cfg.p_successor
        actions.append(int(successor[actions[-1]]) if keep else int(rng.integers(cfg.num_actions)))
    slow = np.repeat(np.asarray(actions, dtype=np.int64), cfg.action_len)
    fast = table[actions].reshape(-1)
    return fast, slow


def render_long_video(rng: np.random.Generator, fast: np.ndarray, window_frames: int, size: int,
                      step_px: float, noise: float, windows: Optional[Sequence[int]] = None) -> np.ndarray:
    """uint8 `[W, T, H, W, 3]`: one shape following the primitives in `fast`, continuously across windows.

    `windows`: render only these windows -> `[len(windows), T, H, W, 3]`, identical to the same windows of
    the full render (pixel noise is seeded per window, from `rng`'s first draw).
    """
    W, T = len(fast), window_frames
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # [H, W]
    bg = rng.uniform(0, 60, size=3).astype(np.float32) + rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
    kind, color = int(rng.integers(3)), rng.uniform(120, 255, size=3).astype(np.float32)
    radius = size * rng.uniform(0.12, 0.17)
    omega = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * math.pi / max(1, T - 1)
    theta0 = rng.uniform(0, 2 * math.pi)
    noise_seed = int(rng.integers(2**31))
    velocity = np.asarray(DIRECTIONS, dtype=np.float32)[fast] * step_px  # [W, 2]
    # Per-frame position: the path continues across windows; frame 0 of a window already moves.
    v = np.repeat(velocity, T, axis=0)  # [W*T, 2]
    pos = rng.uniform(0, size, size=2).astype(np.float32) + np.cumsum(v, axis=0)  # [W*T, 2]
    theta = theta0 + omega * np.arange(W * T, dtype=np.float32)
    windows = list(range(W)) if windows is None else list(windows)
    frames = np.empty((len(windows), T, size, size, 3), dtype=np.float32)
    frames[:] = bg
    for j, w in enumerate(windows):
        for f in range(T):
            i = w * T + f
            # Wrapped offsets: the shape leaving one edge re-enters on the other (a torus), so paths of
            # any length stay in frame.
            ox = (xx - pos[i, 0] + size / 2) % size - size / 2
            oy = (yy - pos[i, 1] + size / 2) % size - size / 2
            c, s = math.cos(theta[i]), math.sin(theta[i])
            frames[j, f][_shape_mask(kind, (ox * c + oy * s) / radius, (-ox * s + oy * c) / radius)] = color
        if noise > 0:
            frames[j] += np.random.default_rng([noise_seed, w]).normal(0, noise, size=frames[j].shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


class LongVideos(Dataset):
    """Long videos as windows, with per-window labels.

    `__getitem__(i)` -> {"clip": `[W, ...]` windows (uint8 `[W, T, H, W, C]`, or `transform` applied to each
    window and stacked), "fast": int64 `[W]`, "slow": int64 `[W]`, "label": slow label of window 0,
    "skipped": 0}.

    Args:
        cfg: generator settings. transform: uint8 window `[T, H, W, C]` -> model input (e.g.
            `data.transforms.to_float_clip`).
    """

    def __init__(self, cfg: LongVideoConfig, transform: Optional[Callable] = None):
        validate(cfg)
        self.cfg, self.transform = cfg, transform
        self.table, self.successor = action_table(cfg.num_actions, cfg.action_len, cfg.table_seed)
        self.num_fast, self.num_slow = NUM_PRIMITIVES, cfg.num_actions

    def __len__(self) -> int:
        return self.cfg.num_videos

    def labels(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return sample_labels(np.random.default_rng([self.cfg.seed, index, 0]), self.cfg, self.table, self.successor)

    def video(self, index: int, windows: Optional[Sequence[int]] = None) -> np.ndarray:
        """The raw uint8 windows `[W, T, H, W, 3]` of video `index` (or only `windows` of them)."""
        fast, _ = self.labels(index)
        rng = np.random.default_rng([self.cfg.seed, index, 1])
        return render_long_video(rng, fast, self.cfg.window_frames, self.cfg.size, self.cfg.step_px, self.cfg.noise,
                                 windows)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"video index {index} out of range [0, {len(self)})")
        fast, slow = self.labels(index)
        windows = torch.from_numpy(self.video(index))
        if self.transform is not None:
            windows = torch.stack([self.transform(w) for w in windows])
        return {"clip": windows, "fast": torch.from_numpy(fast), "slow": torch.from_numpy(slow),
                "label": int(slow[0]), "skipped": 0}


class LongVideoWindows(Dataset):
    """Every window of every long video as its own short clip (for training level 0 on short clips).

    `__getitem__(i)` -> {"clip": one window, "label": its fast label, "slow": its slow label, "skipped": 0}.
    """

    def __init__(self, videos: LongVideos):
        self.videos = videos
        self.per_video = videos.cfg.num_windows

    def __len__(self) -> int:
        return len(self.videos) * self.per_video

    def __getitem__(self, index: int) -> dict:
        v, w = divmod(index, self.per_video)
        fast, slow = self.videos.labels(v)
        window = torch.from_numpy(self.videos.video(v, [w])[0])
        if self.videos.transform is not None:
            window = self.videos.transform(window)
        return {"clip": window, "label": int(fast[w]), "slow": int(slow[w]), "skipped": 0}
