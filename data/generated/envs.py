"""Point-mass navigation worlds with walls, vectorised over many environments (numpy, no simulator).

The world is the unit square, x to the right and y downwards. Walls live on a `grid x grid` occupancy
map (a one-cell border plus the room walls); the agent is a point whose position is the whole state.
An action `a` in [-1, 1]^2 moves the agent by `a * max_step`, in `substeps` sub-moves; each sub-move
is tried axis by axis and a component that would land in a wall is dropped, so the agent slides
along walls and never crosses them (walls are >= 2 cells thick, thicker than one sub-move).

Layouts:
- two_rooms: a vertical wall in the middle with one door whose height is random per layout.
- four_rooms: a vertical and a horizontal wall crossing at the centre, one door on each of the four
  wall halves at a random position; with probability `closed_door_prob` one door is closed (never
  more, so the four rooms stay connected).
Optional distractors (four_rooms experiments) are dots that bounce around the square, ignore walls
and carry no information about the agent; their positions and velocities are part of the state.

`render` draws 64x64 (img_size) images from the state alone: channel 0 walls, 1 the agent (an
anti-aliased disc), 2 distractors. `geodesic_distance` gives shortest-path lengths on the grid
(8-connected), used to bin start/goal tasks by difficulty.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

LAYOUTS = ("two_rooms", "four_rooms")


@dataclass
class EnvConfig:
    """Args:
        name: a `LAYOUTS` key. grid: occupancy-map cells per side. img_size: rendered pixels per side.
        max_step: displacement of a unit action (world units; the square is 1 wide).
        substeps: collision sub-moves per step. wall_cells / door_cells: wall thickness / door width.
        closed_door_prob: four_rooms only, chance that one of the doors is closed.
        num_distractors / distractor_speed: moving dots drawn in channel 2.
        agent_radius: drawn disc radius (world units; the agent itself is a point).
    """

    name: str = "two_rooms"
    grid: int = 32
    img_size: int = 64
    max_step: float = 0.05
    substeps: int = 4
    wall_cells: int = 2
    door_cells: int = 6
    closed_door_prob: float = 0.0
    num_distractors: int = 0
    distractor_speed: float = 0.03
    agent_radius: float = 0.04


def check_env_config(cfg: EnvConfig) -> None:
    if cfg.name not in LAYOUTS:
        raise ValueError(f"env.name {cfg.name!r} unknown; valid: {list(LAYOUTS)}")
    if cfg.img_size % cfg.grid:
        raise ValueError(f"env.img_size {cfg.img_size} must be a multiple of env.grid {cfg.grid}")
    if cfg.max_step / cfg.substeps >= cfg.wall_cells / cfg.grid:
        raise ValueError("a sub-move must be shorter than a wall is thick; raise env.substeps or env.wall_cells")
    if not 0 < cfg.door_cells < cfg.grid // 2 - cfg.wall_cells:
        raise ValueError(f"env.door_cells {cfg.door_cells} does not fit in a wall half of {cfg.grid // 2} cells")


def make_layout(cfg: EnvConfig, rng: np.random.Generator) -> np.ndarray:
    """One occupancy map, bool `[grid, grid]` indexed [row=y, col=x], True = wall."""
    check_env_config(cfg)
    g, w, d = cfg.grid, cfg.wall_cells, cfg.door_cells
    walls = np.zeros((g, g), dtype=bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
    lo = g // 2 - w // 2  # first cell of the central walls
    if cfg.name == "two_rooms":
        walls[1:-1, lo:lo + w] = True
        top = int(rng.integers(1, g - 1 - d + 1))
        walls[top:top + d, lo:lo + w] = False
        return walls
    walls[1:-1, lo:lo + w] = True
    walls[lo:lo + w, 1:-1] = True
    # door spans on each half-wall: (rows, cols) slices; a door's offset is random inside its half
    spans = []
    for half in (0, 1):  # vertical wall: upper and lower halves
        start = 1 if half == 0 else lo + w
        stop = lo if half == 0 else g - 1
        o = int(rng.integers(start, stop - d + 1))
        spans.append((slice(o, o + d), slice(lo, lo + w)))
    for half in (0, 1):  # horizontal wall: left and right halves
        start = 1 if half == 0 else lo + w
        stop = lo if half == 0 else g - 1
        o = int(rng.integers(start, stop - d + 1))
        spans.append((slice(lo, lo + w), slice(o, o + d)))
    closed = int(rng.integers(4)) if rng.random() < cfg.closed_door_prob else -1
    for i, (rows, cols) in enumerate(spans):
        if i != closed:
            walls[rows, cols] = False
    return walls


def is_wall(walls: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """walls `[B, G, G]`, pos `[B, 2]` -> bool `[B]` (outside the square counts as wall)."""
    g = walls.shape[-1]
    inside = np.all((pos >= 0) & (pos < 1), axis=-1)
    cell = np.clip(np.floor(pos * g).astype(np.int64), 0, g - 1)
    return ~inside | walls[np.arange(len(pos)), cell[:, 1], cell[:, 0]]


def step_positions(walls: np.ndarray, pos: np.ndarray, actions: np.ndarray, cfg: EnvConfig) -> np.ndarray:
    """Pure dynamics: pos `[B, 2]`, actions `[B, 2]` (clipped to [-1, 1]) -> next pos `[B, 2]`."""
    delta = np.clip(actions, -1.0, 1.0) * (cfg.max_step / cfg.substeps)
    pos = pos.copy()
    for _ in range(cfg.substeps):
        for axis in (0, 1):
            trial = pos.copy()
            trial[:, axis] += delta[:, axis]
            ok = ~is_wall(walls, trial)
            pos[ok] = trial[ok]
    return pos


def sample_free(walls: np.ndarray, rng: np.random.Generator, margin: float = 0.0) -> np.ndarray:
    """One free position per map in walls `[B, G, G]` -> `[B, 2]`, at least `margin` from any wall cell."""
    out = np.empty((len(walls), 2))
    todo = np.arange(len(walls))
    while len(todo):
        p = rng.random((len(todo), 2))
        ok = ~is_wall(walls[todo], p)
        for dx in (-margin, margin):
            for dy in (-margin, margin):
                ok &= ~is_wall(walls[todo], p + np.array([dx, dy]))
        out[todo[ok]] = p[ok]
        todo = todo[~ok]
    return out


_NEIGHBOURS = [(dy, dx, float(np.hypot(dy, dx))) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def distance_field(walls: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Shortest-path length (world units, 8-connected grid) from every cell to the goal's cell.

    walls `[B, G, G]`, goal `[B, 2]` -> `[B, G, G]` float, inf in walls and unreachable cells. Vectorised
    Bellman-Ford relaxation: a few dozen whole-map numpy sweeps instead of a Python queue per map.
    """
    B, g, _ = walls.shape
    cell = np.clip(np.floor(goal * g).astype(np.int64), 0, g - 1)
    dist = np.full((B, g + 2, g + 2), np.inf)  # one padding cell on each side
    dist[np.arange(B), cell[:, 1] + 1, cell[:, 0] + 1] = 0.0
    free = np.pad(~walls, ((0, 0), (1, 1), (1, 1)))
    while True:
        best = dist.copy()
        for dy, dx, c in _NEIGHBOURS:
            shifted = np.full_like(dist, np.inf)
            shifted[:, max(dy, 0):g + 2 + min(dy, 0), max(dx, 0):g + 2 + min(dx, 0)] = \
                dist[:, max(-dy, 0):g + 2 + min(-dy, 0), max(-dx, 0):g + 2 + min(-dx, 0)] + c
            best = np.minimum(best, shifted)
        best[~free] = np.inf
        if np.array_equal(best, dist):
            return dist[:, 1:-1, 1:-1] / g
        dist = best


def geodesic_distance(walls: np.ndarray, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Shortest-path length from start `[B, 2]` to goal `[B, 2]` in maps `[B, G, G]` -> `[B]`."""
    field = distance_field(walls, goal)
    g = walls.shape[-1]
    cell = np.clip(np.floor(start * g).astype(np.int64), 0, g - 1)
    return field[np.arange(len(start)), cell[:, 1], cell[:, 0]]


def expert_actions(field: np.ndarray, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Unit-speed actions that descend the distance field towards the goal: head for the centre of the
    neighbouring cell closest to the goal, or straight for the goal inside its cell. -> `[B, 2]`."""
    B, g, _ = field.shape
    cell = np.clip(np.floor(pos * g).astype(np.int64), 0, g - 1)
    padded = np.pad(field, ((0, 0), (1, 1), (1, 1)), constant_values=np.inf)
    best_val = field[np.arange(B), cell[:, 1], cell[:, 0]].copy()
    target = goal.copy()
    for dy, dx, _ in _NEIGHBOURS:
        v = padded[np.arange(B), cell[:, 1] + 1 + dy, cell[:, 0] + 1 + dx]
        better = v < best_val - 1e-9
        best_val = np.where(better, v, best_val)
        centre = (cell + np.array([dx, dy]) + 0.5) / g
        target[better] = centre[better]
    d = target - pos
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-8)


def render(walls: np.ndarray, pos: np.ndarray, cfg: EnvConfig,
           distractors: Optional[np.ndarray] = None) -> np.ndarray:
    """Images from state: walls `[B, G, G]`, pos `[B, 2]`, distractors `[B, K, 4]` (x, y, vx, vy) or None
    -> float32 `[B, 3, S, S]` in [0, 1], S = img_size. Same state, same image, bit for bit."""
    S = cfg.img_size
    r = S // walls.shape[-1]
    img = np.zeros((len(pos), 3, S, S), dtype=np.float32)
    img[:, 0] = walls.repeat(r, axis=1).repeat(r, axis=2)
    centres = (np.arange(S, dtype=np.float64) + 0.5) / S
    img[:, 1] = _discs(pos[:, None], centres, cfg.agent_radius, S)
    if distractors is not None and distractors.shape[1] > 0:
        img[:, 2] = _discs(distractors[..., :2], centres, cfg.agent_radius * 0.75, S)
    return img


def _discs(pos: np.ndarray, centres: np.ndarray, radius: float, S: int) -> np.ndarray:
    """pos `[B, K, 2]` -> `[B, S, S]`: union of anti-aliased discs (one pixel of soft edge)."""
    dx = centres[None, None, None, :] - pos[..., 0, None, None]  # [B, K, 1, S]
    dy = centres[None, None, :, None] - pos[..., 1, None, None]  # [B, K, S, 1]
    d = np.sqrt(dx ** 2 + dy ** 2)  # [B, K, S, S]
    return np.clip((radius - d) * S + 0.5, 0.0, 1.0).max(axis=1)


class PointMassEnv:
    """B point-mass environments stepped together; each has its own wall map.

    Args:
        cfg: the world. walls: bool `[B, G, G]` maps (see `make_layout`). seed: distractor start draws.
    """

    def __init__(self, cfg: EnvConfig, walls: np.ndarray, seed: int = 0):
        check_env_config(cfg)
        if walls.ndim != 3 or walls.shape[1:] != (cfg.grid, cfg.grid):
            raise ValueError(f"walls must be [B, {cfg.grid}, {cfg.grid}], got {walls.shape}")
        self.cfg, self.walls = cfg, walls.astype(bool)
        self.rng = np.random.default_rng(seed)
        self.pos = np.zeros((len(walls), 2))
        self.distractors = np.zeros((len(walls), cfg.num_distractors, 4))

    def reset(self, pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos, dtype=np.float64)
        if pos.shape != self.pos.shape:
            raise ValueError(f"reset positions must be {self.pos.shape}, got {pos.shape}")
        if is_wall(self.walls, pos).any():
            raise ValueError("a reset position lies inside a wall")
        self.pos = pos.copy()
        K = self.cfg.num_distractors
        if K:
            ang = self.rng.uniform(0, 2 * np.pi, (len(pos), K))
            speed = self.cfg.distractor_speed
            self.distractors = np.concatenate([self.rng.uniform(0.05, 0.95, (len(pos), K, 2)),
                                               speed * np.stack([np.cos(ang), np.sin(ang)], -1)], -1)
        return self.observe()

    def step(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != self.pos.shape:
            raise ValueError(f"actions must be {self.pos.shape}, got {actions.shape}")
        self.pos = step_positions(self.walls, self.pos, actions, self.cfg)
        self.distractors = bounce(self.distractors)
        return self.observe()

    def observe(self) -> np.ndarray:
        return render(self.walls, self.pos, self.cfg, self.distractors)


def bounce(distractors: np.ndarray) -> np.ndarray:
    """Move distractors `[B, K, 4]` one step, reflecting off the square's edges."""
    d = distractors.copy()
    d[..., :2] += d[..., 2:]
    for axis in (0, 1):
        out = (d[..., axis] < 0.02) | (d[..., axis] > 0.98)
        d[..., axis] = np.clip(d[..., axis], 0.02, 0.98)
        d[..., 2 + axis] = np.where(out, -d[..., 2 + axis], d[..., 2 + axis])
    return d
