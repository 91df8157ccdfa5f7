"""Varied layouts: maps as pure functions of their parameters, a train / held-out split disjoint by
construction, sane sampler statistics, connected rooms, training data that never sees a held-out map,
old (fixed-map) seeds unchanged, and the plan job's held-out and seen tables."""
import csv
from collections import Counter

import numpy as np
import pytest

from data.generated.envs import (EnvConfig, Layout, distance_field, draw_walls, is_heldout, make_layout, sample_layout,
                                 sample_maps)
from data.generated.trajectories import TrajectoryConfig, generate, make_layouts
from data.seeding import derive_seed
from hjepa.world_model.evaluate import TaskConfig, check_tasks, task_maps
from vjepa.engine.config import ConfigError

TWO = EnvConfig(name="two_rooms", wall_shift=6, door_cells=4, door_cells_max=8)
FOUR = EnvConfig(name="four_rooms", closed_door_prob=0.3)


def as_set(maps):
    return {m.tobytes() for m in maps}


@pytest.mark.parametrize("env", [TWO, FOUR], ids=["two", "four"])
def test_train_and_heldout_maps_are_disjoint_and_both_nonempty(env):
    train, held = sample_maps(env, 300, 0, "train"), sample_maps(env, 60, 1, "heldout")
    assert len(as_set(train)) > 10 and len(as_set(held)) > 3
    assert not as_set(train) & as_set(held)  # compared as boolean maps, not parameters
    assert not is_heldout(train, env.heldout_every).any() and is_heldout(held, env.heldout_every).all()
    # about one map in heldout_every is held out among unrestricted draws
    everything = sample_maps(env, 400, 2, "all")
    frac = is_heldout(np.stack([np.frombuffer(b, bool).reshape(env.grid, env.grid) for b in as_set(everything)]),
                      env.heldout_every).mean()
    assert 0.05 < frac < 0.4


def test_map_is_a_pure_function_of_its_parameters():
    for env in (TWO, FOUR):
        for seed in range(20):
            lay = sample_layout(env, np.random.default_rng(seed))
            assert lay == sample_layout(env, np.random.default_rng(seed))
            np.testing.assert_array_equal(draw_walls(env, lay), make_layout(env, np.random.default_rng(seed)))
    # the parameters mean what they say: wall column, door rows and width
    walls = draw_walls(TWO, Layout(wall=10, doors=((5, 7),)))
    assert walls[1:5, 10:12].all() and not walls[5:12, 10:12].any() and walls[12:-1, 10:12].all()
    assert not walls[1:-1, 1:10].any() and not walls[1:-1, 12:-1].any()
    # a closed door's position is not a parameter: one map, one tuple
    closed = [sample_layout(FOUR, np.random.default_rng(s)) for s in range(200)]
    assert all(lay.doors[lay.closed] == (0, 0) for lay in closed if lay.closed >= 0)


def test_sampler_statistics_spread_over_their_ranges():
    lays = [sample_layout(TWO, np.random.default_rng(s)) for s in range(3000)]
    lo = TWO.grid // 2 - TWO.wall_cells // 2
    cols = Counter(lay.wall for lay in lays)
    widths = Counter(lay.doors[0][1] for lay in lays)
    assert set(cols) == set(range(lo - 6, lo + 7)) and set(widths) == set(range(4, 9))
    assert min(cols.values()) > 3000 / 13 * 0.7 and min(widths.values()) > 3000 / 5 * 0.8  # roughly uniform
    tops = np.array([lay.doors[0][0] for lay in lays])
    bottoms = tops + np.array([lay.doors[0][1] for lay in lays])
    assert tops.min() == 1 and bottoms.max() == TWO.grid - 1  # doors reach both ends of the wall
    four = [sample_layout(FOUR, np.random.default_rng(s)) for s in range(2000)]
    closed = np.array([lay.closed for lay in four])
    assert abs((closed >= 0).mean() - FOUR.closed_door_prob) < 0.05
    assert set(closed[closed >= 0]) == {0, 1, 2, 3}
    for i in range(4):  # every door's offset spreads over its half-wall
        offs = [lay.doors[i][0] for lay in four if lay.closed != i]
        assert max(offs) - min(offs) >= 7


def test_every_four_rooms_map_keeps_all_rooms_connected():
    env = EnvConfig(name="four_rooms", closed_door_prob=0.5)
    maps = sample_maps(env, 200, 3, "all")
    free = ~maps
    start = np.tile([[0.1, 0.1]], (len(maps), 1))  # inside the top-left room
    reach = np.isfinite(distance_field(maps, start))
    np.testing.assert_array_equal(reach, free)
    # and a closed door does occur: some maps have exactly 3 openings
    lo = env.grid // 2 - env.wall_cells // 2
    openings = (~maps[:, 1:lo, lo]).any(1).astype(int) + (~maps[:, lo + 2:-1, lo]).any(1) + \
        (~maps[:, lo, 1:lo]).any(1) + (~maps[:, lo, lo + 2:-1]).any(1)
    assert set(openings) == {3, 4}


def test_default_config_draws_the_maps_of_the_fixed_wall_code():
    """Old checkpoints (num_layouts=1, no split) must be evaluated on the map they trained on."""
    g, w, d = 32, 2, 6
    lo = g // 2 - w // 2
    for i in range(5):  # the pre-split draw, written out: one rng per map, one integer for the door
        rng = np.random.default_rng(derive_seed(0, i))
        ref = np.zeros((g, g), bool)
        ref[0], ref[-1], ref[:, 0], ref[:, -1] = True, True, True, True
        ref[1:-1, lo:lo + w] = True
        top = int(rng.integers(1, g - 1 - d + 1))
        ref[top:top + d, lo:lo + w] = False
        np.testing.assert_array_equal(make_layouts(EnvConfig(name="two_rooms"), 5, 0)[i], ref)
    rng = np.random.default_rng(derive_seed(4, 0))
    offs = [int(rng.integers(a, b - d + 1)) for a, b in ((1, lo), (lo + w, g - 1), (1, lo), (lo + w, g - 1))]
    ref = np.zeros((g, g), bool)
    ref[0], ref[-1], ref[:, 0], ref[:, -1] = True, True, True, True
    ref[1:-1, lo:lo + w] = ref[lo:lo + w, 1:-1] = True
    ref[offs[0]:offs[0] + d, lo:lo + w] = ref[offs[1]:offs[1] + d, lo:lo + w] = False
    ref[lo:lo + w, offs[2]:offs[2] + d] = ref[lo:lo + w, offs[3]:offs[3] + d] = False
    np.testing.assert_array_equal(make_layouts(EnvConfig(name="four_rooms"), 1, 4)[0], ref)


@pytest.mark.parametrize("env", [TWO, FOUR], ids=["two", "four"])
def test_training_episodes_never_see_a_heldout_map(env):
    data_cfg = TrajectoryConfig(env=env, num_trajectories=400, length=2, num_layouts=400, layout_split="train",
                                cache_dir=None)
    data = generate(data_cfg)
    seen = as_set(data["walls"][data["layout"]])
    assert len(seen) > 100  # episodes draw many maps, not one
    held = task_maps(data_cfg, "heldout", TaskConfig(num_layouts=40))
    assert len(held) == 40 and not as_set(held) & seen
    np.testing.assert_array_equal(task_maps(data_cfg, "train", TaskConfig(num_layouts=40)), data["walls"][:40])


def test_heldout_tasks_exclude_training_maps_even_without_a_split():
    """A fixed-map model (num_layouts=1, layout_split=all) whose one map happens to hash into the held-out
    split still never meets it among its held-out tasks."""
    env = TWO
    seed = next(s for s in range(200) if is_heldout(make_layouts(env, 1, s), env.heldout_every)[0])
    data_cfg = TrajectoryConfig(env=env, num_layouts=1, layout_seed=seed, cache_dir=None)
    train = task_maps(data_cfg, "train", TaskConfig())
    held = task_maps(data_cfg, "heldout", TaskConfig(num_layouts=30))
    assert len(train) == 1 and is_heldout(train, env.heldout_every)[0]
    assert not as_set(train) & as_set(held)


def test_bad_layout_settings_are_clear_errors():
    with pytest.raises(ValueError, match="wall_shift"):
        make_layout(EnvConfig(name="two_rooms", wall_shift=20), np.random.default_rng(0))
    with pytest.raises(ValueError, match="two_rooms only"):
        make_layout(EnvConfig(name="four_rooms", wall_shift=2), np.random.default_rng(0))
    with pytest.raises(ValueError, match="door_cells_max"):
        make_layout(EnvConfig(name="two_rooms", door_cells=6, door_cells_max=5), np.random.default_rng(0))
    with pytest.raises(ValueError, match="heldout_every"):
        make_layout(EnvConfig(heldout_every=1), np.random.default_rng(0))
    with pytest.raises(ValueError, match="layout_split"):
        generate(TrajectoryConfig(num_trajectories=2, length=2, layout_split="seen", cache_dir=None))
    # held-out episodes exist for evaluation (crossover study), on held-out maps only; training refuses them
    varied = EnvConfig(name="two_rooms", wall_shift=6, door_cells=4, door_cells_max=8)
    held = generate(TrajectoryConfig(env=varied, num_trajectories=4, length=2, num_layouts=4, layout_split="heldout",
                                     cache_dir=None))
    assert all(is_heldout(m, varied.heldout_every)[0] for m in held["walls"])
    from hjepa.world_model.train import WorldModelConfig, train
    from vjepa.engine.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="held-out maps are for evaluation"):
        train(load_config(WorldModelConfig, overrides=["data.layout_split=heldout"]))
    fixed = EnvConfig(name="two_rooms")  # a fixed wall: 25 maps, all of them excluded here
    with pytest.raises(ValueError, match="no heldout map"):
        sample_maps(fixed, 1, 0, "heldout", exclude=as_set(sample_maps(fixed, 300, 0)), max_tries=200)
    for bad in (["seen"], [], ["heldout", "heldout"]):
        with pytest.raises(ConfigError, match="tasks.layouts"):
            check_tasks(TaskConfig(layouts=bad))


def test_plan_job_writes_heldout_and_seen_tables(tmp_path, capsys):
    """A few steps of the world-model job on varied layouts, then the plan job: a table per map set,
    results.csv with a layouts column, the plots; `tasks.seen_seeds` runs the seen maps with fewer seeds."""
    from hjepa.world_model import train as wm_train
    from hjepa.world_model.evaluate import PlanConfig, run
    from vjepa.engine.config import load_config

    cfg = load_config(wm_train.WorldModelConfig, overrides=[
        "data.num_trajectories=32", "data.length=8", "data.cache_dir=null", "data.num_layouts=32",
        "data.layout_split=train", "data.env.wall_shift=4", "data.env.door_cells_max=8", "encoder.dim=8",
        "encoder.width=8", "predictor.dim=16", "predictor.depth=1", "stage.steps=2", "stage.batch_size=4",
        "stage.window=3", "stage.warmup=1", "levels.0.stride=2", "levels.0.pred_embed_dim=16", "levels.0.pred_depth=1",
        "levels.0.stage.steps=2", "levels.0.stage.batch_size=4", "levels.0.stage.window=3", "levels.0.stage.warmup=1",
        "levels.0.bank_size=16", "logging.progress_bar=false", "logging.tensorboard=false",
        f"logging.folder={tmp_path / 'wm'}"])
    wm_train.train(cfg)
    plan = load_config(PlanConfig, overrides=[
        f"checkpoint={tmp_path / 'wm' / 'wm-latest.pt'}", "tasks.per_bin=2", "tasks.bins=[[0.1,0.5],[0.5,1.2]]",
        "tasks.num_layouts=3", "methods=[random,cem]", "seeds=[0,1]", "tasks.seen_seeds=[1]", "max_steps=3", "cem.samples=8",
        "cem.iterations=1", "cem.horizon=2", "cem.replan_every=2", "cem.precision=bfloat16", "examples=1",
        f"folder={tmp_path / 'plan'}"])
    assert run(plan, dry_run=True) is None and not (tmp_path / "plan").exists()
    printed = capsys.readouterr().out
    assert "heldout: 4 tasks in 2 bins" in printed and "predictor rollouts on this machine: cem bfloat16" in printed
    out = run(plan)
    md = (out / "results.md").read_text()
    assert md.index("held-out layouts") < md.index("seen layouts")
    assert md.count("| cem |") == 2 and "all bins" in md
    assert md.count("predictor rollouts in cem bfloat16") == 2
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["layouts"], r["method"]) for r in rows} == {(x, m) for x in ("heldout", "train") for m in ("random", "cem")}
    assert all(int(r["episodes"]) == (4 if r["layouts"] == "heldout" else 2) for r in rows)  # 2 tasks x 2 or 1 seeds
    assert "2 tasks x 2 seeds" in md.split("seen layouts")[0] and "2 tasks x 1 seeds" in md.split("seen layouts")[1]
    with pytest.raises(ConfigError, match="seen_seeds"):
        check_tasks(TaskConfig(seen_seeds=[]))
    assert (out / "success_vs_distance.png").is_file() and (out / "episodes.png").is_file()
