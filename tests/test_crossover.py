import csv

import numpy as np
import pytest
import torch

from hjepa.world_model.crossover import (CrossoverConfig, RidgeProbe, bootstrap_bands, crossover_horizon,
                                         crossover_lines, run)
from vjepa.engine.config import ConfigError, load_config


def test_ridge_probe_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) * torch.tensor([1.0, 5.0, 0.1, 2.0, 1.0, 3.0])  # unequal scales
    w, b = torch.randn(6, 2, generator=g), torch.tensor([0.3, -0.7])
    probe = RidgeProbe(x, x @ w + b, ridge=1e-8)
    x_new = torch.randn(50, 6, generator=g)
    assert torch.allclose(probe(x_new).float(), x_new @ w + b, atol=1e-4)
    # a strong ridge shrinks the map towards predicting the mean
    shrunk = RidgeProbe(x, x @ w + b, ridge=1e4)
    assert shrunk(x_new).std(0).max() < 0.05 * (x_new @ w).std(0).min()
    with pytest.raises(ValueError, match="probe needs"):
        RidgeProbe(x, (x @ w)[:10])


def test_crossover_horizon_on_curves_with_known_answers():
    hs = [8, 16, 24, 32, 48, 64]
    low = [0.02, 0.05, 0.08, 0.11, 0.16, 0.20]  # level-0 error grows with h
    high = [0.06, 0.045, 0.05, 0.06, 0.07, 0.08]  # level 1: worse at 8, better from 16 on
    assert crossover_horizon(hs, low, high) == 16
    assert crossover_horizon(hs, low, [0.3] * 6) is None  # never better: no crossover
    # better at 8 only, then worse: no crossover "from some horizon on"
    assert crossover_horizon(hs, low, [0.01, 0.3, 0.3, 0.3, 0.3, 0.3]) is None
    # better at 8, worse at 16, better from 24: the crossover is 24
    assert crossover_horizon(hs, low, [0.01, 0.3, 0.07, 0.1, 0.1, 0.1]) == 24
    # horizons the level does not score (NaN) are skipped; order of the inputs does not matter
    nan = float("nan")
    assert crossover_horizon(hs[::-1], low[::-1], [0.05, 0.05, 0.05, 0.05, nan, 0.1][::-1]) == 24  # equal at 16 is not better


def test_crossover_lines_say_when_bands_overlap():
    class Two:  # the world model's span(k), as crossover_lines reads it
        def span(self, k):
            return 8 ** k

    hs = [8, 16]
    levels = {0: hs, 1: hs}
    bands = {"L0": np.array([[0.1, 0.09, 0.11], [0.2, 0.19, 0.21]]),
             "L1": np.array([[0.15, 0.14, 0.16], [0.1, 0.05, 0.18]]),
             "L1 - L0": np.array([[0.05, 0.04, 0.06], [-0.1, -0.15, -0.01]])}
    (line,) = crossover_lines(bands, levels, Two())
    assert "h = 16" in line and "do not overlap" in line and "excludes 0" in line
    assert "More accurate at h = 16*; less at h = 8*" in line
    bands["L1"][1] = [0.18, 0.15, 0.25]
    bands["L1 - L0"][1] = [-0.02, -0.06, 0.03]
    (line,) = crossover_lines(bands, levels, Two())
    assert "h = 16" in line and "bands overlap" in line and "includes 0" in line
    bands["L1"][1] = [0.3, 0.29, 0.31]
    (line,) = crossover_lines(bands, levels, Two())
    assert "crossover level 1 (span 8): none" in line and "More accurate at h = none" in line
    bands["L1"][:, 0] = [0.05, 0.3]  # better at the shortest horizon only: reported, but no crossover
    (line,) = crossover_lines(bands, levels, Two())
    assert ": none" in line and "More accurate at h = 8*; less at h = 16" in line


def test_bootstrap_band_covers_the_mean_and_shrinks_with_episodes():
    rng = np.random.default_rng(0)
    small, big = rng.normal(1.0, 0.5, (20, 1)), rng.normal(1.0, 0.5, (2000, 1))
    (m, lo, hi), = bootstrap_bands(small, 500, 0.95, 0)
    assert lo < m < hi and lo < 1.0 < hi
    (_, lo2, hi2), = bootstrap_bands(big, 500, 0.95, 0)
    assert hi2 - lo2 < 0.3 * (hi - lo)
    assert np.isnan(bootstrap_bands(np.full((5, 1), np.nan), 100, 0.95, 0)).all()


def tiny_world_model(folder, strides):
    """2 steps per level; level 1 `encoder: identity`, level 2 (if any) an own transformer encoder."""
    from hjepa.world_model import train as wm_train

    own = {"encoder": "transformer", "embed_dim": 16, "depth": 1, "num_heads": 2, "ema": [0.9, 1.0]}
    raw = {"data": {"num_trajectories": 24, "length": 8, "cache_dir": None, "env": {"img_size": 32}},
           "encoder": {"dim": 8, "width": 8}, "predictor": {"dim": 16, "depth": 1},
           "stage": {"steps": 2, "batch_size": 4, "window": 3, "warmup": 1},
           "levels": [{"stride": s, "pred_embed_dim": 16, "pred_depth": 1, "bank_size": 8, **(own if k else {}),
                       "stage": {"steps": 2, "batch_size": 4, "window": 2, "warmup": 1}} for k, s in enumerate(strides)],
           "logging": {"folder": str(folder), "progress_bar": False, "tensorboard": False, "log_every": 1}}
    wm_train.train(load_config(wm_train.WorldModelConfig, raw=raw))
    return folder / "wm-latest.pt"


def study_config(checkpoint, folder, horizons, length, **extra):
    raw = {"checkpoint": str(checkpoint), "folder": str(folder), "horizons": horizons, "starts_per_episode": 2,
           "episodes": {"num_trajectories": 6, "length": length, "seed": 5, "cache_dir": None,
                        "env": {"img_size": 32}},
           "probe": {"episodes": 8}, "bootstrap": 50, "batch_size": 5, **extra}
    return load_config(CrossoverConfig, raw=raw)


@pytest.mark.parametrize("strides", [[2], [2, 2]])
def test_study_runs_end_to_end_on_a_tiny_world_model(tmp_path, strides):
    ckpt = tiny_world_model(tmp_path / "wm", strides)
    horizons = [2, 3, 4] if len(strides) == 1 else [2, 4, 8]
    out = run(study_config(ckpt, tmp_path / "study", horizons, max(horizons)))
    for name in ("crossover.md", "crossover.csv", "probes.csv", "error_vs_horizon.png", "config.yaml"):
        assert (out / name).is_file(), name
    text = (out / "crossover.md").read_text()
    assert text.count("crossover level") == len(strides)
    # level 1 reads level 0's state (identity): one shared floor; level 2 has its own encoder and probe
    assert ("probe floor L0=L1 |" if len(strides) == 1 else "probe floor L0=L1 | probe floor L2 |") in text
    with open(out / "crossover.csv") as f:
        rows = list(csv.DictReader(f))
    got = {(r["method"], int(r["horizon"])) for r in rows}
    assert ("L0", max(horizons)) in got and ("copy", 2) in got and ("L1 floor", 2) in got
    assert ("L1", 3) not in got  # span 2 does not divide 3: level 1 is not scored there
    if len(strides) == 2:
        assert ("L2", 8) in got and ("L2", 2) not in got and ("L2 - L0", 4) in got
    for r in rows:
        if " - " not in r["method"]:  # errors are >= 0; differences may be negative
            assert 0 <= float(r["band_low"]) <= float(r["mean"]) <= float(r["band_high"])


def test_bad_study_configs_fail_with_a_clear_error(tmp_path):
    ckpt = tiny_world_model(tmp_path / "wm", [2])
    with pytest.raises(ConfigError, match="episodes.length"):
        run(study_config(ckpt, tmp_path / "s", [2, 16], 8))
    with pytest.raises(ConfigError, match="img_size"):
        run(load_config(CrossoverConfig, raw={"checkpoint": str(ckpt), "horizons": [2],
                                              "episodes": {"length": 8, "cache_dir": None}}))
    with pytest.raises(ConfigError, match="horizons"):
        run(study_config(ckpt, tmp_path / "s", [], 8))
    with pytest.raises(ConfigError, match="unknown|horizon_list"):
        load_config(CrossoverConfig, raw={"horizon_list": [2]})


def test_layout_note_counts_only_the_maps_the_model_trained_on():
    from data.generated.envs import EnvConfig
    from data.generated.trajectories import TrajectoryConfig, generate
    from hjepa.world_model.crossover import layout_note

    env = EnvConfig(name="two_rooms", wall_shift=6, door_cells=4, door_cells_max=8)
    trained = TrajectoryConfig(env=env, num_layouts=40, layout_split="train", cache_dir=None)
    held = generate(TrajectoryConfig(env=env, num_trajectories=6, length=2, num_layouts=6, layout_split="heldout",
                                     cache_dir=None))
    seen = generate(TrajectoryConfig(env=env, num_trajectories=6, length=2, num_layouts=40, layout_split="train",
                                     seed=3, cache_dir=None))
    assert layout_note(held, trained).startswith("0 of 6")
    assert layout_note(seen, trained).startswith("6 of 6")
