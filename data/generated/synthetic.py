"""Generated motion videos: the built-in dataset of the quickstart (no download).

Each clip shows one asymmetric shape that translates in one of 4 directions, rotates clockwise or
counter-clockwise, at one of `num_speeds` speeds, over a random dark background, with an optional
distractor shape that drifts in a random direction. The label is (direction, rotation sense, speed):
a single frame cannot tell it, only motion can. Appearance (shape, colour, size, start position) is
random per clip; clip `i` of a given seed is always the same video.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

DIRECTIONS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))  # (dx, dy): right, left, down, up
DIRECTION_NAMES = ("right", "left", "down", "up")
ROTATIONS = (1.0, -1.0)  # clockwise, counter-clockwise in image coordinates (y down)


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the shape's own frame (unit radius); every shape shows its rotation."""
    if kind == 0:  # L
        return ((u >= -1) & (u <= -0.3) & (np.abs(v) <= 1)) | ((np.abs(u) <= 1) & (v >= 0.3) & (v <= 1))
    if kind == 1:  # T
        return ((np.abs(u) <= 1) & (v >= -1) & (v <= -0.4)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1))
    # right triangle
    return (u >= -1) & (v <= 1) & (v >= u)


def render_motion_clip(rng: np.random.Generator, label: int, num_frames: int, size: int, num_speeds: int,
                       distractor: bool, extra_objects: int = 0, pan: float = 0.0,
                       object_scale: float = 1.0) -> np.ndarray:
    """One clip, uint8 `[T, H, W, 3]`, whose motion encodes `label`. `extra_objects` / `pan` add unlabelled
    moving shapes and camera drift (pretraining variety); at 0 the clip is drawn exactly as before, and
    their random draws come after all others, so they never change the rest of a clip. `object_scale`
    multiplies the labelled shape's radius (same random draws; 1.0 = the benchmark's shapes)."""
    speed_idx = label % num_speeds
    sense = ROTATIONS[(label // num_speeds) % 2]
    dx, dy = DIRECTIONS[label // (2 * num_speeds)]
    T = num_frames
    steps = np.arange(T, dtype=np.float32)[:, None, None]  # [T, 1, 1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # [H, W]

    bg = rng.uniform(0, 60, size=3).astype(np.float32)
    frames = np.empty((T, size, size, 3), dtype=np.float32)
    frames[:] = bg + rng.normal(0, 6, size=(1, size, size, 3)).astype(np.float32)  # static texture

    def draw(kind, radius, start, velocity, theta0, omega, color):
        cx = start[0] + velocity[0] * steps
        cy = start[1] + velocity[1] * steps
        theta = theta0 + omega * steps
        ox, oy = xx - cx, yy - cy  # [T, H, W]
        u = (ox * np.cos(theta) + oy * np.sin(theta)) / radius
        v = (-ox * np.sin(theta) + oy * np.cos(theta)) / radius
        frames[_shape_mask(kind, u, v)] = color

    # Total displacement over the clip is a fixed fraction of the frame, whatever the clip length.
    travel = size * (0.15 + 0.35 * speed_idx / max(1, num_speeds - 1))
    radius = size * rng.uniform(0.11, 0.16) * object_scale
    margin = radius * 1.2
    lo = np.array([margin, margin]) + np.minimum(0, -np.array([dx, dy]) * travel)
    hi = np.array([size - margin, size - margin]) - np.maximum(0, np.array([dx, dy]) * travel)
    start = rng.uniform(lo, np.maximum(lo, hi))
    per_step = travel / max(1, T - 1)
    omega = sense * rng.uniform(0.5, 1.0) * math.pi / max(1, T - 1)  # a 90-180 degree turn per clip

    if distractor:
        angle = rng.uniform(0, 2 * math.pi)
        d_speed = size * rng.uniform(0.05, 0.4) / max(1, T - 1)
        draw(3, size * rng.uniform(0.06, 0.1), rng.uniform(0.2 * size, 0.8 * size, size=2),
             (d_speed * math.cos(angle), d_speed * math.sin(angle)), 0.0, 0.0, rng.uniform(60, 160, size=3))
    draw(int(rng.integers(3)), radius, start, (dx * per_step, dy * per_step), rng.uniform(0, 2 * math.pi),
         omega, rng.uniform(120, 255, size=3))
    for _ in range(int(rng.integers(extra_objects + 1)) if extra_objects > 0 else 0):
        angle, r = rng.uniform(0, 2 * math.pi), size * rng.uniform(0.08, 0.14)
        speed = size * rng.uniform(0.1, 0.5) / max(1, T - 1)
        draw(int(rng.integers(3)), r, rng.uniform(0.15 * size, 0.85 * size, size=2),
             (speed * math.cos(angle), speed * math.sin(angle)), rng.uniform(0, 2 * math.pi),
             rng.choice(ROTATIONS) * rng.uniform(0.0, 1.0) * math.pi / max(1, T - 1), rng.uniform(60, 255, size=3))
    if pan > 0:
        angle, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0, pan)
        for t in range(T):
            shift = (int(round(speed * t * math.sin(angle))), int(round(speed * t * math.cos(angle))))
            frames[t] = np.roll(frames[t], shift, axis=(0, 1))
    return np.clip(frames, 0, 255).astype(np.uint8)


class MotionVideos(Dataset):
    """Labelled generated motion clips.

    Args:
        num_videos: dataset length. num_frames / size: clip length and square frame size.
        num_speeds: speed classes (num_classes = 4 directions x 2 senses x num_speeds).
        distractor: add a drifting distractor shape. seed: which videos (use different seeds per split).
        extra_objects / pan / object_scale: unlabelled extra moving shapes, camera drift and a larger
            labelled shape (pretraining variety; see `render_motion_clip`).
        transform: uint8 `[T, H, W, C]` -> model input (e.g. `data.transforms.to_float_clip`).
    """

    def __init__(self, num_videos: int, num_frames: int, size: int, num_speeds: int = 2, distractor: bool = True,
                 seed: int = 0, transform: Optional[Callable] = None, extra_objects: int = 0, pan: float = 0.0,
                 object_scale: float = 1.0):
        self.num_videos, self.num_frames, self.size = num_videos, num_frames, size
        self.num_speeds, self.distractor, self.seed = num_speeds, distractor, seed
        self.extra_objects, self.pan, self.object_scale = extra_objects, pan, object_scale
        self.num_classes = 4 * 2 * num_speeds
        self.transform = transform

    def __len__(self) -> int:
        return self.num_videos

    def label_of(self, index: int) -> int:
        return int(np.random.default_rng([self.seed, index, 0]).integers(self.num_classes))

    def clip(self, index: int) -> torch.Tensor:
        """The raw uint8 clip `[T, H, W, 3]` of video `index`."""
        rng = np.random.default_rng([self.seed, index, 1])
        frames = render_motion_clip(rng, self.label_of(index), self.num_frames, self.size, self.num_speeds,
                                    self.distractor, self.extra_objects, self.pan,
                                    self.object_scale)
        return torch.from_numpy(frames)

    def __getitem__(self, index: int) -> dict:
        clip = self.clip(index)
        if self.transform is not None:
            clip = self.transform(clip)
        return {"clip": clip, "label": self.label_of(index), "skipped": 0}
