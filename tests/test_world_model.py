"""Action-conditioned world model: block-causality, shapes, frozen encoder, the loss falls, the level stack
(2 and 3 levels: macro-action composition, frozen levels below, EMA targets), exact resume."""
import numpy as np
import pytest
import torch

from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, generate
from hjepa.levels import LevelConfig
from hjepa.world_model.model import (ACPredictor, ActionLevelObjective, EncoderConfig, FrameLevel, LossWeights,
                                     PredictorConfig, WorldModel, block_causal_mask)
from vjepa.models import ModelConfig


def test_block_causal_mask():
    m = block_causal_mask(3, 2)
    assert m.shape == (6, 6)
    assert m[0, 1] and m[1, 0] and not m[1, 2] and m[5, 0] and not m[3, 4]


def test_predictor_is_block_causal():
    torch.manual_seed(0)
    p = ACPredictor(8, 2, dim=16, depth=2, num_heads=2, max_frames=6)
    torch.nn.init.normal_(p.out.weight)  # zero-initialised output would hide everything
    z, a = torch.randn(2, 5, 8), torch.randn(2, 5, 2)
    out = p(z, a)
    z2, a2 = z.clone(), a.clone()
    z2[:, 3:] += 1.0
    a2[:, 3:] -= 1.0
    out2 = p(z2, a2)
    torch.testing.assert_close(out[:, :3], out2[:, :3])  # the past does not see the future
    assert not torch.allclose(out[:, 3:], out2[:, 3:])
    a3 = a.clone()
    a3[:, 2] += 1.0  # the action at t changes the prediction of t + 1
    assert not torch.allclose(p(z, a3)[:, 2], out[:, 2])
    roll = p.rollout(z[:, :2], a[:, :4])
    assert roll.shape == (2, 3, 8)
    torch.testing.assert_close(roll[:, 0], out[:, 1])  # first rollout step = teacher-forced step
    with pytest.raises(ValueError, match="max_frames"):
        p(torch.randn(1, 7, 8), torch.randn(1, 7, 2))


def tiny_data():
    cfg = TrajectoryConfig(num_trajectories=48, length=8, cache_dir=None)
    return cfg, generate(cfg)


def test_one_step_loss_falls_on_tiny_dataset():
    torch.manual_seed(0)
    cfg, data = tiny_data()
    win = TrajectoryWindows(data, cfg.env, window=3)
    batch = win.batch(np.arange(0, len(win), max(1, len(win) // 32))[:32])
    wm = FrameLevel(EncoderConfig(dim=16, width=16), PredictorConfig(dim=16, depth=1, num_heads=2))
    w = LossWeights(rollout_steps=0, var=5.0)
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = wm.loss(batch["frames"], batch["actions"][:, :, 0], w)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.7 * first
    assert out["z"].std(0).mean() > 0.1  # not collapsed


def test_one_step_prediction_loss_falls_with_frozen_encoder():
    torch.manual_seed(0)
    cfg, data = tiny_data()
    win = TrajectoryWindows(data, cfg.env, window=2)
    batch = win.batch(np.arange(0, len(win), max(1, len(win) // 64))[:64])
    wm = FrameLevel(EncoderConfig(dim=16, width=16, frozen=True), PredictorConfig(dim=32, depth=1, num_heads=2))
    wm.encoder.train()  # batch statistics: a random encoder whose features move with the agent
    opt = torch.optim.Adam(wm.predictor.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        out = wm.loss(batch["frames"], batch["actions"][:, :, 0], LossWeights(rollout_steps=0))
        opt.zero_grad()
        out["teacher_forcing"].backward()
        opt.step()
        losses.append(out["teacher_forcing"].item())
    assert np.mean(losses[-5:]) < 0.6 * losses[0]


def test_frozen_encoder_gets_no_gradient():
    cfg, data = tiny_data()
    batch = TrajectoryWindows(data, cfg.env, window=3).batch(np.arange(4))
    wm = FrameLevel(EncoderConfig(dim=8, width=8, frozen=True), PredictorConfig(dim=16, depth=1, num_heads=2))
    out = wm.loss(batch["frames"], batch["actions"][:, :, 0], LossWeights(rollout_steps=2))
    out["loss"].backward()
    assert all(p.grad is None for p in wm.encoder.parameters())
    assert any(p.grad is not None for p in wm.predictor.parameters())
    assert "var" not in out and "idm" not in out


def test_vjepa_encoder_plugs_in():
    enc = EncoderConfig(type="vjepa", vit=ModelConfig(model_name="vit_micro"), patch_size=16, frozen=True)
    wm = WorldModel(enc, PredictorConfig(dim=16, depth=1, num_heads=2))
    z = wm.encode(torch.rand(2, 3, 3, 64, 64))
    assert z.shape == (2, 3, 96)
    with pytest.raises(ValueError, match="encoder.type"):
        WorldModel(EncoderConfig(type="resnet"), PredictorConfig())


def action_level(stride, encoder="identity", **kw):
    return LevelConfig(stride=stride, actions=True, encoder=encoder, embed_dim=16, depth=1, num_heads=2,
                       pred_embed_dim=16, pred_depth=1, **kw)


def tiny_stack(*levels):
    return WorldModel(EncoderConfig(dim=8, width=8), PredictorConfig(dim=16, depth=1, num_heads=2), list(levels))


def test_action_level_loss_and_macro_bounds():
    torch.manual_seed(0)
    wm = tiny_stack(action_level(4))
    level = wm.levels[1]
    z, chunks = torch.randn(3, 4, 8), torch.randn(3, 3, 4, 2)
    out = ActionLevelObjective(level, LossWeights(rollout_steps=2))(z, chunks)
    out["loss"].backward()
    assert set(out) >= {"teacher_forcing", "rollout", "loss", "z"} and "var" not in out  # identity: no regulariser
    assert all(p.grad is not None for p in level.macro.parameters())
    codes = level.macro(chunks * 100)
    assert codes.shape == (3, 3, 2) and codes.abs().max() <= 1
    assert level.encoder is None and torch.equal(wm.state(z, 1), z)  # identity level: level-0 space


def test_three_level_stack_composes_spans_macros_and_states():
    torch.manual_seed(0)
    wm = tiny_stack(action_level(2), action_level(3, encoder="transformer", macro_dim=3))
    assert wm.num_levels == 3 and wm.strides() == [2, 3] and [wm.span(k) for k in range(3)] == [1, 2, 6]
    acts = torch.randn(5, 6, 2)  # one level-2 step of primitive actions
    m2 = wm.macro(acts, 2)
    assert m2.shape == (5, 3) and m2.abs().max() <= 1
    # level 2's code is its encoder over level 1's codes of the three 2-step sub-chunks
    m1 = wm.levels[1].macro(acts.view(5, 3, 2, 2))
    torch.testing.assert_close(m2, wm.levels[2].macro(m1))
    z0 = torch.randn(5, 8)
    z2 = wm.state(z0, 2)
    assert z2.shape == (5, 16)
    torch.testing.assert_close(z2.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)  # layer-normed targets
    torch.testing.assert_close(wm.state(wm.state(z0, 1), 2, frm=1), z2)
    with pytest.raises(ValueError, match="actions: true"):
        tiny_stack(LevelConfig(stride=2))


def test_level_with_encoder_trains_online_not_target_and_regularises():
    torch.manual_seed(0)
    wm = tiny_stack(action_level(2), action_level(2, encoder="transformer", regularizer="vicreg"))
    level = wm.levels[2]
    u, sub = torch.randn(4, 3, 8), torch.randn(4, 2, 2, 2)  # level-1 states, level-1 macro codes
    out = ActionLevelObjective(level, LossWeights(rollout_steps=1))(u, sub)
    out["loss"].backward()
    assert "var" in out and "cov" in out
    assert all(p.grad is None for p in level.target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in level.encoder.parameters())
    assert all(p.grad is None for p in wm.levels[1].parameters())  # the levels below are not touched


@pytest.mark.parametrize("levels", [1, 2])
def test_n_level_run_from_yaml_trains_every_level(tmp_path, levels):
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    ups = [{"stride": 2, "encoder": "identity"}, {"stride": 2, "encoder": "transformer", "embed_dim": 16,
                                                   "depth": 1, "num_heads": 2, "ema": [0.9, 1.0]}][:levels]
    raw = {"data": {"num_trajectories": 24, "length": 8, "cache_dir": None},
           "encoder": {"dim": 8, "width": 8}, "predictor": {"dim": 16, "depth": 1},
           "stage": {"steps": 2, "batch_size": 4, "window": 3, "warmup": 1},
           "levels": [dict(u, pred_embed_dim=16, pred_depth=1, bank_size=8,
                           stage={"steps": 2, "batch_size": 4, "window": 2, "warmup": 1}) for u in ups],
           "logging": {"folder": str(tmp_path), "progress_bar": False, "tensorboard": False, "log_every": 1}}
    cfg = load_config(wm_train.WorldModelConfig, raw=raw)
    wm_train.train(cfg)
    state = torch.load(tmp_path / "wm-latest.pt", weights_only=True)
    assert state["steps"] == [2] * (levels + 1) and len(state["banks"]) == levels
    assert [b.shape[1] for b in state["banks"]] == [2] * levels
    for k in range(1, levels + 1):
        assert (tmp_path / f"level{k}" / "metrics.csv").is_file()
    _, wm, banks = wm_train.load_trained(tmp_path / "wm-latest.pt")
    assert wm.num_levels == levels + 1 and wm.span(levels) == 2 ** levels


def test_old_two_level_config_becomes_the_level_stack():
    from hjepa.world_model.train import WorldModelConfig
    from vjepa.engine.config import ConfigError, load_config

    cfg = load_config(WorldModelConfig, raw={"level1": {"stride": 4, "macro_dim": 3, "predictor": {"dim": 48, "depth": 3},
                                                        "stage": {"steps": 7}}})
    (lv,) = cfg.levels
    assert (lv.stride, lv.macro_dim, lv.pred_embed_dim, lv.pred_depth, lv.stage.steps, lv.encoder, lv.actions) == \
        (4, 3, 48, 3, 7, "identity", True)
    assert load_config(WorldModelConfig, raw={"level1": {"enabled": False}}).levels == []
    with pytest.raises(ConfigError, match="both"):
        load_config(WorldModelConfig, raw={"level1": {"stride": 4}, "levels": []})


# a world-model job small enough to train in a second: level 0 only (callers add levels and steps)
TINY_WM = ["data.num_trajectories=48", "data.length=8", "data.cache_dir=null", "encoder.dim=8", "encoder.width=8",
           "predictor.dim=16", "predictor.depth=1", "stage.batch_size=8", "stage.window=3", "stage.warmup=1",
           "logging.progress_bar=false", "logging.tensorboard=false"]


@pytest.mark.parametrize("kill_level", [0, 1])
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch, kill_level):
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    def cfg_for(folder, resume=False):
        return load_config(wm_train.WorldModelConfig, overrides=[
            *TINY_WM, "stage.steps=6", "levels.0.stride=2", "levels.0.pred_embed_dim=16", "levels.0.pred_depth=1",
            "levels.0.stage.steps=6", "levels.0.stage.batch_size=8", "levels.0.stage.window=3",
            "levels.0.stage.warmup=1", "levels.0.bank_size=16", "meta.save_every_steps=3",
            f"logging.folder={folder}", f"meta.load_checkpoint={str(resume).lower()}"])

    wm_train.train(cfg_for(tmp_path / "whole"))
    real_save = wm_train.save

    def save_then_die(accelerator, path, wm, opts, steps, data, cfg, extra=None):
        real_save(accelerator, path, wm, opts, steps, data, cfg, extra)
        if steps[kill_level] == 3:  # killed right after the checkpoint at step 3 of that level
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(wm_train, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        wm_train.train(cfg_for(tmp_path / "killed"))
    monkeypatch.setattr(wm_train, "save", real_save)
    wm_train.train(cfg_for(tmp_path / "killed", resume=True))

    whole = torch.load(tmp_path / "whole" / "wm-latest.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "wm-latest.pt", weights_only=True)
    assert resumed["steps"] == whole["steps"] == [6, 6]
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert all(torch.equal(a, b) for a, b in zip(whole["banks"], resumed["banks"]))


def test_resuming_a_world_model_with_another_seed_is_a_config_error(tmp_path):
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import ConfigError, load_config

    def cfg_for(*extra):
        return load_config(wm_train.WorldModelConfig, overrides=[
            *TINY_WM, "stage.steps=2", "levels=[]", f"logging.folder={tmp_path}", *extra])

    wm_train.train(cfg_for())
    before = (tmp_path / "wm-latest.pt").read_bytes()
    with pytest.raises(ConfigError, match="pass meta.seed=0"):
        wm_train.train(cfg_for("meta.load_checkpoint=true", "meta.seed=3", "stage.steps=4"))
    assert (tmp_path / "wm-latest.pt").read_bytes() == before
    wm_train.train(cfg_for("meta.load_checkpoint=true", "stage.steps=4"))  # the same seed resumes
    assert torch.load(tmp_path / "wm-latest.pt", weights_only=True)["steps"] == [4]


def test_within_window_variance_ignores_the_scene_and_static_channels_hold_it():
    """A state whose first channels move within a window and whose last channels only differ between
    windows (a scene): batch statistics count the scene as variance; within-window centring does not;
    scene channels (`static_dim`) are scored on their window means and their drift within a window."""
    torch.manual_seed(0)
    B, T = 64, 4
    moving = 3.0 * torch.randn(B, T + 1, 2)
    scene = 3.0 * torch.randn(B, 1, 2).expand(B, T + 1, 2)
    z = torch.cat([moving, scene], -1)
    frames, actions = torch.zeros(B, T + 1, 3, 16, 16), torch.zeros(B, T, 2)

    def var_of(static_dim, within):
        level = FrameLevel(EncoderConfig(dim=4, width=8, static_dim=static_dim), PredictorConfig(dim=16, depth=1, num_heads=2),
                           img_size=16)
        level.encode = lambda frames: z  # noqa: E731 (a fixed state instead of the encoder's)
        return level.loss(frames, actions, LossWeights(rollout_steps=0, var_within_window=within))

    assert var_of(0, False)["var"] < 0.05  # the scene meets the hinge over the batch
    assert var_of(0, True)["var"] > 0.45  # centred: the two scene channels miss it entirely (hinge 1 each)
    out = var_of(2, True)
    assert out["var"] < 0.05 and out["static_var"] < 0.05  # agent channels move, scene channels spread
    assert out["static_drift"] < 1e-10
    with pytest.raises(ValueError, match="static_dim"):
        FrameLevel(EncoderConfig(dim=4, width=8, static_dim=4), PredictorConfig(dim=16, depth=1, num_heads=2))


def test_a_level_can_roll_out_further_than_level_zero():
    from hjepa.world_model.train import WorldModelConfig, build_model, level_objectives
    from vjepa.engine.config import load_config

    cfg = load_config(WorldModelConfig, raw={"loss": {"rollout_steps": 2},
                                             "levels": [{"stride": 2, "rollout_steps": 5}, {"stride": 2}]})
    objs = level_objectives(build_model(cfg), cfg)
    assert [o.w.rollout_steps for o in objs[1:]] == [5, 2] and objs[0] is not objs[1].level
    torch.manual_seed(0)
    u, sub = torch.randn(2, 7, 8), torch.randn(2, 6, 2, 2)  # level-0 states (8-d), primitive actions
    assert "rollout" in objs[1](u, sub)
    cfg0 = load_config(WorldModelConfig, raw={"levels": [{"stride": 2, "rollout_steps": 0}]})
    assert "rollout" not in level_objectives(build_model(cfg0), cfg0)[1](u, sub)
