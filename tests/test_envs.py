"""Point-mass environments and trajectory datasets: physics, rendering, distances, determinism."""
import heapq

import numpy as np
import pytest

from data.generated.envs import (EnvConfig, PointMassEnv, distance_field, expert_actions, geodesic_distance, is_wall,
                       make_layout, render, step_positions)
from data.generated.envs import _discs
from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, generate, load_or_generate


def two_rooms(seed=0):
    cfg = EnvConfig(name="two_rooms")
    return cfg, make_layout(cfg, np.random.default_rng(seed))[None]


def test_walls_block_motion_and_agent_slides():
    cfg, walls = two_rooms()
    lo = cfg.grid // 2 - cfg.wall_cells // 2  # first column of the middle wall
    rows = np.flatnonzero(walls[0, 1:-1, lo]) + 1
    row = rows[np.argmax(np.abs(rows - np.flatnonzero(~walls[0, :, lo])[1:-1].mean()))]  # far from the door
    pos = np.array([[0.3, (row + 0.5) / cfg.grid]])
    for _ in range(40):
        pos = step_positions(walls, pos, np.array([[1.0, 0.0]]), cfg)
    assert lo / cfg.grid - cfg.max_step < pos[0, 0] < lo / cfg.grid  # pressed against the wall, not through
    assert not is_wall(walls, pos).any()
    # pushing diagonally into the wall still slides along it
    y0 = pos[0, 1]
    pos2 = step_positions(walls, pos, np.array([[1.0, 1.0 if row < cfg.grid // 2 else -1.0]]), cfg)
    assert pos2[0, 1] != y0 and pos2[0, 0] < lo / cfg.grid


def test_walls_block_random_walks_everywhere():
    cfg = EnvConfig(name="four_rooms")
    walls = np.repeat(make_layout(cfg, np.random.default_rng(1))[None], 256, 0)
    rng = np.random.default_rng(0)
    env = PointMassEnv(cfg, walls)
    env.reset(np.full((256, 2), 0.2))
    for _ in range(100):
        env.step(rng.uniform(-3, 3, (256, 2)))
        assert not is_wall(walls, env.pos).any()


def test_actions_are_clipped():
    cfg, walls = two_rooms()
    p = np.array([[0.2, 0.5]])
    big = step_positions(walls, p, np.array([[5.0, -7.0]]), cfg)
    unit = step_positions(walls, p, np.array([[1.0, -1.0]]), cfg)
    np.testing.assert_allclose(big, unit)
    np.testing.assert_allclose(np.abs(unit - p), cfg.max_step, atol=1e-12)


def test_render_is_a_function_of_state():
    cfg, walls = two_rooms()
    pos = np.array([[0.21, 0.33], [0.7, 0.8]])
    a = render(np.repeat(walls, 2, 0), pos, cfg)
    b = render(np.repeat(walls, 2, 0), pos.copy(), cfg)
    assert a.shape == (2, 3, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0, 1], a[1, 1])
    c = render(np.repeat(walls, 2, 0), pos + 0.01, cfg)
    assert not np.array_equal(a, c)
    assert 0 <= a.min() and a.max() <= 1


@pytest.mark.parametrize("S,radius", [(64, 0.04), (32, 0.03), (16, 0.2), (64, 0.6)])
def test_discs_on_windows_equal_the_whole_image_formula(S, radius):
    """`_discs` computes each disc on a window around it; every pixel must equal the whole-image formula bit
    for bit: discs near and beyond the border, centres on pixel edges, overlapping discs, a disc wider than
    the image."""
    rng = np.random.default_rng(S)
    pos = rng.uniform(-0.05, 1.05, (300, 3, 2))
    pos[:30] = np.round(pos[:30] * S) / S  # centres on pixel edges
    pos[30:40, 1] = pos[30:40, 0] + 0.01  # overlapping discs
    centres = (np.arange(S, dtype=np.float64) + 0.5) / S
    d = np.sqrt((centres[None, None, None, :] - pos[..., 0, None, None]) ** 2
                + (centres[None, None, :, None] - pos[..., 1, None, None]) ** 2)
    whole = np.clip((radius - d) * S + 0.5, 0.0, 1.0).max(axis=1)
    out = _discs(pos, centres, radius, S)
    np.testing.assert_array_equal(out, whole)
    assert (out > 0).any() and (out == 0).any()


def test_geodesic_distance_goes_through_the_door():
    cfg, walls = two_rooms(3)
    s, g = np.array([[0.2, 0.5]]), np.array([[0.8, 0.5]])
    d = geodesic_distance(walls, s, g)
    assert d[0] >= np.linalg.norm(s - g) - 2 / cfg.grid
    same_room = geodesic_distance(walls, s, np.array([[0.2, 0.7]]))
    assert abs(same_room[0] - 0.2) < 3 / cfg.grid


def dijkstra_field(walls: np.ndarray, goal_cell: tuple) -> np.ndarray:
    """Reference shortest paths on one map `[G, G]` (8-connected, straight 1, diagonal sqrt 2) in cells."""
    g = walls.shape[0]
    dist = np.full((g, g), np.inf)
    if walls[goal_cell]:
        return dist
    dist[goal_cell] = 0.0
    heap = [(0.0, goal_cell)]
    while heap:
        d, (y, x) = heapq.heappop(heap)
        if d > dist[y, x]:
            continue
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                v = (y + dy, x + dx)
                if (dy or dx) and 0 <= v[0] < g and 0 <= v[1] < g and not walls[v]:
                    nd = d + float(np.hypot(dy, dx))
                    if nd < dist[v]:
                        dist[v] = nd
                        heapq.heappush(heap, (nd, v))
    return dist


def test_distance_field_equals_dijkstra_to_the_last_bit_and_is_inf_for_a_goal_in_a_wall():
    rng = np.random.default_rng(0)
    maps = np.stack([make_layout(EnvConfig(name=n, door_cells_max=6), rng) for n in ("two_rooms", "four_rooms")
                     for _ in range(3)])
    maps[0, 10:20, 5] = True  # an extra wall segment: paths that turn several times
    goals = np.array([[0.1, 0.9], [0.5, 0.5], [0.95, 0.05], [0.3, 0.7], [0.8, 0.2], [0.55, 0.45]])
    g = maps.shape[-1]
    y, x = np.argwhere(maps[1, 1:-1, 1:-1])[0] + 1  # an inner wall cell: map 1's goal lies in it
    goals[1] = (x + 0.5) / g, (y + 0.5) / g
    cells = [(int(y * g), int(x * g)) for x, y in goals]
    assert [bool(m[c]) for m, c in zip(maps, cells)] == [False, True, False, False, False, False]
    field = distance_field(maps, goals)
    for m, c, f in zip(maps, cells, field):
        ref = dijkstra_field(m, c) / g
        if m[c]:
            assert np.isinf(f).all()
        else:
            np.testing.assert_array_equal(f, ref)  # bit-identical: both keep the smallest sum along one path
            assert np.isfinite(f).sum() > g * g // 2


def test_expert_reaches_goal_across_rooms():
    cfg = EnvConfig(name="four_rooms")
    walls = make_layout(cfg, np.random.default_rng(2))[None]
    pos, goal = np.array([[0.2, 0.2]]), np.array([[0.8, 0.8]])
    field = distance_field(walls, goal)
    for _ in range(100):
        pos = step_positions(walls, pos, expert_actions(field, pos, goal), cfg)
    assert np.linalg.norm(pos - goal) < 0.05


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="env.name"):
        make_layout(EnvConfig(name="maze"), np.random.default_rng(0))
    cfg, walls = two_rooms()
    env = PointMassEnv(cfg, walls)
    with pytest.raises(ValueError, match="inside a wall"):
        env.reset(np.array([[0.0, 0.0]]))


def test_dataset_is_deterministic_from_seed(tmp_path):
    cfg = TrajectoryConfig(num_trajectories=16, length=10, cache_dir=str(tmp_path))
    a, b = generate(cfg), generate(cfg)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = generate(TrajectoryConfig(num_trajectories=16, length=10, seed=1, cache_dir=None))
    assert not np.array_equal(a["states"], c["states"])
    cached = load_or_generate(cfg)
    again = load_or_generate(cfg)  # from the cache file
    assert len(list(tmp_path.glob("*.npz"))) == 1
    for k in a:
        np.testing.assert_array_equal(cached[k], a[k])
        np.testing.assert_array_equal(again[k], a[k])
    assert np.abs(a["actions"]).max() <= 1.0


def test_windows_match_trajectory_states():
    cfg = TrajectoryConfig(num_trajectories=4, length=12, cache_dir=None)
    data = generate(cfg)
    win = TrajectoryWindows(data, cfg.env, window=3, stride=4)
    b = win.batch(np.array([0, len(win) - 1]))
    assert b["frames"].shape == (2, 3, 3, 64, 64) and b["actions"].shape == (2, 2, 4, 2)
    np.testing.assert_array_equal(b["states"][0].numpy(), data["states"][0, [0, 4, 8]])
    np.testing.assert_array_equal(b["actions"][0, 1].numpy(), data["actions"][0, 4:8])
    with pytest.raises(ValueError):
        TrajectoryWindows(data, cfg.env, window=5, stride=4)


def test_greedy_episodes_press_against_the_inner_wall_and_change_nothing_when_off():
    from data.generated.trajectories import config_hash

    env = EnvConfig(name="two_rooms", wall_shift=6, door_cells=4, door_cells_max=8)
    kw = dict(env=env, num_trajectories=200, length=24, num_layouts=200, cache_dir=None)
    base = generate(TrajectoryConfig(**kw))
    off = generate(TrajectoryConfig(**kw, greedy_fraction=0.0))
    on = generate(TrajectoryConfig(**kw, greedy_fraction=1.0))
    for k in base:  # off: the dataset (and its cache name) of a config without the key
        np.testing.assert_array_equal(base[k], off[k])
    assert config_hash(TrajectoryConfig(**kw)) == config_hash(TrajectoryConfig(**kw, greedy_fraction=0.0))
    np.testing.assert_array_equal(on["expert"], base["expert"])  # experts unchanged; every other episode greedy

    def inner_blocked(d):  # steps that moved < 60% of the command, away from the border
        s, a = d["states"], d["actions"]
        moved = np.linalg.norm(np.diff(s, axis=1), axis=-1)
        inner = ((s[:, 1:] > 0.1) & (s[:, 1:] < 0.9)).all(-1)
        return ((moved < 0.6 * np.linalg.norm(a, axis=-1) * env.max_step) & inner & ~d["expert"][:, None]).mean()

    assert inner_blocked(on) > 3 * inner_blocked(base)
    with pytest.raises(ValueError, match="greedy_fraction"):
        generate(TrajectoryConfig(**kw, greedy_fraction=1.5))
