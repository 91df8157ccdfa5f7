"""Point-mass navigation worlds with walls, vectorised over many environments (numpy, no simulator).

The world is the unit square, x to the right and y downwards. Walls live on a `grid x grid` occupancy
map (a one-cell border plus the room walls); the agent is a point whose position is the whole state.
An action `a` in [-1, 1]^2 moves the agent by `a * max_step`, in `substeps` sub-moves; each sub-move
is tried axis by axis and a component that would land in a wall is dropped, so the agent slides
along walls and never crosses them (walls are >= 2 cells thick, thicker than one sub-move).

Layouts: a map is a pure function of a few integers, `Layout` (`sample_layout` draws them, `draw_walls`
draws the map).
- two_rooms: a vertical wall with one door. The door's position is random per layout; with
  `wall_shift` > 0 the wall's column is random too (within `wall_shift` cells of the centre, so both
  rooms stay usable), with `door_cells_max` > 0 the door's width is random in [door_cells, door_cells_max].
- four_rooms: a vertical and a horizontal wall crossing at the centre, one door on each of the four
  wall halves at a random position (width random as above); with probability `closed_door_prob` one
  door is closed (never more, so the four rooms stay connected).
Split: every map belongs to the train or the held-out split by a hash of its own cells (`is_heldout`),
so two splits never share a map, whatever parameters drew it (a closed door's position does not matter).
Optional distractors (four_rooms experiments) are dots that bounce around the square, ignore walls
and carry no information about the agent; their positions and velocities are part of the state.

`render` draws 64x64 (img_size) images from the state alone: channel 0 walls, 1 the agent (an
anti-aliased disc), 2 distractors. `geodesic_distance` gives shortest-path lengths on the grid
(8-connected), used to bin start/goal tasks by difficulty.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from data.seeding import derive_seed

logger = logging.getLogger(__name__)

LAYOUTS = ("two_rooms", "four_rooms")


@dataclass
class EnvConfig:
    """Args:
        name: a `LAYOUTS` key. grid: occupancy-map cells per side. img_size: rendered pixels per side.
        max_step: displacement of a unit action (world units; the square is 1 wide).
        substeps: collision sub-moves per step. wall_cells / door_cells: wall thickness / door width.
        closed_door_prob: four_rooms only, chance that one of the doors is closed.
        wall_shift: two_rooms only, the wall's first column is drawn within this many cells of the centre
            (0 = always the centre). door_cells_max: door widths drawn in [door_cells, door_cells_max]
            (0 = always door_cells). heldout_every: one map in about this many is held out (`is_heldout`).
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
    wall_shift: int = 0
    door_cells_max: int = 0
    heldout_every: int = 5
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
    if cfg.door_cells_max and not cfg.door_cells <= cfg.door_cells_max < cfg.grid // 2 - cfg.wall_cells:
        raise ValueError(f"env.door_cells_max {cfg.door_cells_max} must be 0 (fixed width) or in "
                         f"[door_cells={cfg.door_cells}, {cfg.grid // 2 - cfg.wall_cells - 1}]")
    if not 0 <= cfg.wall_shift <= cfg.grid // 2 - cfg.wall_cells - 6:  # each room keeps >= 5 free columns
        raise ValueError(f"env.wall_shift {cfg.wall_shift} must be in [0, {cfg.grid // 2 - cfg.wall_cells - 6}]")
    if cfg.wall_shift and cfg.name != "two_rooms":
        raise ValueError("env.wall_shift applies to two_rooms only (four_rooms' walls cross at the centre)")
    if cfg.heldout_every < 2:
        raise ValueError(f"env.heldout_every {cfg.heldout_every} must be >= 2 (one map in k is held out)")


@dataclass(frozen=True)
class Layout:
    """The parameters of one wall map; `draw_walls(cfg, layout)` is the map.

    Args:
        wall: first column of the vertical wall (four_rooms: also the first row of the horizontal wall).
        doors: (first cell along its wall, width) per door. two_rooms: one door (rows); four_rooms: the
            upper and lower halves of the vertical wall (rows), then the left and right halves of the
            horizontal wall (columns).
        closed: four_rooms, index of the closed door (-1 = all open).
    """

    wall: int
    doors: Tuple[Tuple[int, int], ...]
    closed: int = -1


def sample_layout(cfg: EnvConfig, rng: np.random.Generator) -> Layout:
    """Draw a layout's parameters. With wall_shift = door_cells_max = 0 the draws (and so the maps of a
    seed) are those of the fixed-wall code before layouts varied."""
    check_env_config(cfg)
    g, w = cfg.grid, cfg.wall_cells
    lo = g // 2 - w // 2  # first cell of the central walls

    def width() -> int:
        return int(rng.integers(cfg.door_cells, cfg.door_cells_max + 1)) if cfg.door_cells_max else cfg.door_cells

    if cfg.name == "two_rooms":
        col = int(rng.integers(lo - cfg.wall_shift, lo + cfg.wall_shift + 1)) if cfg.wall_shift else lo
        d = width()
        return Layout(col, ((int(rng.integers(1, g - 1 - d + 1)), d),))
    doors = []
    for half in (0, 1, 0, 1):  # vertical wall's halves, then the horizontal wall's
        start, stop = (1, lo) if half == 0 else (lo + w, g - 1)
        d = width()
        doors.append((int(rng.integers(start, stop - d + 1)), d))
    closed = int(rng.integers(4)) if rng.random() < cfg.closed_door_prob else -1
    if closed >= 0:  # a closed door has no position: one map, one parameter tuple
        doors[closed] = (0, 0)
    return Layout(lo, tuple(doors), closed)


def draw_walls(cfg: EnvConfig, layout: Layout) -> np.ndarray:
    """The occupancy map of a layout, bool `[grid, grid]` indexed [row=y, col=x], True = wall."""
    g, w, c = cfg.grid, cfg.wall_cells, layout.wall
    walls = np.zeros((g, g), dtype=bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
    walls[1:-1, c:c + w] = True
    if cfg.name == "four_rooms":
        walls[c:c + w, 1:-1] = True
    for i, (o, d) in enumerate(layout.doors):
        if i == layout.closed:
            continue
        if i < 2:  # a door in the vertical wall: rows o .. o + d
            walls[o:o + d, c:c + w] = False
        else:  # in the horizontal wall: columns o .. o + d
            walls[c:c + w, o:o + d] = False
    return walls


def make_layout(cfg: EnvConfig, rng: np.random.Generator) -> np.ndarray:
    """One occupancy map drawn from rng, bool `[grid, grid]` indexed [row=y, col=x], True = wall."""
    return draw_walls(cfg, sample_layout(cfg, rng))


def is_heldout(walls: np.ndarray, every: int) -> np.ndarray:
    """walls `[L, G, G]` -> bool `[L]`: the map's held-out bit, sha1 of its packed cells modulo `every` == 0.
    A function of the map itself, so train and held-out maps are disjoint by construction."""
    return np.array([int(hashlib.sha1(np.packbits(m).tobytes()).hexdigest()[:12], 16) % every == 0
                     for m in walls.reshape(-1, *walls.shape[-2:])], dtype=bool)


SPLITS = ("all", "train", "heldout")


def sample_maps(cfg: EnvConfig, num: int, seed: int, split: str = "all", exclude: Optional[set] = None,
                max_tries: int = 10_000) -> np.ndarray:
    """`num` maps `[num, G, G]` of one split: map i is drawn from rng (seed, i), redrawn from the same rng
    until it lies in `split` and its bytes are not in `exclude` (a set of `m.tobytes()`). split="all"
    without exclusions gives the maps `make_layout` drew before splits existed."""
    if split not in SPLITS:
        raise ValueError(f"layout split {split!r} unknown; valid: {list(SPLITS)}")
    out = []
    for i in range(num):
        rng = np.random.default_rng(derive_seed(seed, i))
        for _ in range(max_tries):
            m = make_layout(cfg, rng)
            held = bool(is_heldout(m, cfg.heldout_every)[0])
            if (split == "all" or held == (split == "heldout")) and (exclude is None or m.tobytes() not in exclude):
                break
        else:
            raise ValueError(f"no {split} map of {cfg.name} found in {max_tries} draws (excluding {len(exclude or ())} "
                             "maps): vary the layouts more (env.wall_shift, env.door_cells_max) or lower env.heldout_every")
        out.append(m)
    return np.stack(out)


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

    walls `[B, G, G]`, goal `[B, 2]` -> `[B, G, G]` float, inf in walls and unreachable cells. Vectorised over
    maps: rounds of four in-place line sweeps (rows down then up, columns right then left; each line relaxed
    from the one before it, diagonals included) until a round changes nothing. Every value is the goal's
    0 plus step costs added along one path, and a round keeps the smallest, so the result is the unique fixed
    point of the Bellman equations, the one a whole-map relaxation reaches, to the last bit; a path that
    turns a few times needs a few rounds, not one whole-map pass per cell of its length (~9x faster).
    """
    B, g, _ = walls.shape
    cell = np.clip(np.floor(goal * g).astype(np.int64), 0, g - 1)
    dist = np.full((B, g + 2, g + 2), np.inf)  # one padding cell on each side
    dist[np.arange(B), cell[:, 1] + 1, cell[:, 0] + 1] = 0.0
    wall = np.pad(walls, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    diagonal = float(np.hypot(1, 1))

    def sweep(lines: np.ndarray, wall_lines: np.ndarray, order: range, back: int) -> None:
        for i in order:  # line i from line i + back: straight neighbour 1, diagonal ones sqrt 2
            prev, cur = lines[i + back], lines[i][:, 1:-1]
            np.minimum(cur, np.minimum(prev[:, 1:-1] + 1.0, np.minimum(prev[:, :-2], prev[:, 2:]) + diagonal), out=cur)
            cur[wall_lines[i][:, 1:-1]] = np.inf

    rows, cols = np.moveaxis(dist, 1, 0), np.moveaxis(dist, 2, 0)  # views: rows[y] = dist[:, y]
    wall_rows, wall_cols = np.moveaxis(wall, 1, 0), np.moveaxis(wall, 2, 0)
    while True:
        before = dist.copy()
        for lines, wall_lines in ((rows, wall_rows), (cols, wall_cols)):
            sweep(lines, wall_lines, range(1, g + 1), -1)
            sweep(lines, wall_lines, range(g, 0, -1), 1)
        if np.array_equal(before, dist):
            return dist[:, 1:-1, 1:-1] / g


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
    """pos `[B, K, 2]` -> `[B, S, S]`: union of anti-aliased discs (one pixel of soft edge).

    A disc is non-zero only within radius + 1/(2S) of its centre, so each is computed on a w x w window of
    pixels around it (two pixels of margin each side) and the rest of the image stays 0: the values are those
    of the whole-image formula, bit for bit, at a fraction of the cost (the 64-px frames: 11 x 11 pixels of 64 x 64)."""
    B, K = pos.shape[:2]
    out = np.zeros((B, S, S))
    reach = (radius + 0.5 / S) * S  # pixels from the centre to the disc's last non-zero pixel centre
    w = min(S, int(np.ceil(2 * reach)) + 4)
    rows = np.arange(B)[:, None, None]
    for k in range(K):
        lo = np.clip(np.floor(pos[:, k] * S - 0.5 - reach).astype(np.int64) - 2, 0, S - w)  # [B, 2] (x, y)
        ix, iy = lo[:, 0, None] + np.arange(w), lo[:, 1, None] + np.arange(w)  # [B, w]
        dx = centres[ix][:, None, :] - pos[:, k, 0, None, None]  # [B, 1, w]
        dy = centres[iy][:, :, None] - pos[:, k, 1, None, None]  # [B, w, 1]
        d = np.sqrt(dx ** 2 + dy ** 2)
        disc = np.clip((radius - d) * S + 0.5, 0.0, 1.0)
        win = (rows, iy[:, :, None], ix[:, None, :])
        out[win] = np.maximum(out[win], disc)
    return out


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
