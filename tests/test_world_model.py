"""Action-conditioned world model: block-causality, shapes, frozen encoder, the loss falls."""
import numpy as np
import pytest
import torch

from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, generate
from hjepa.world_model.model import (ACPredictor, EncoderConfig, LossWeights, MacroWorldModel, PredictorConfig,
                               WorldModel, block_causal_mask)
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
    wm = WorldModel(EncoderConfig(dim=16, width=16), PredictorConfig(dim=16, depth=1, num_heads=2))
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
    wm = WorldModel(EncoderConfig(dim=16, width=16, frozen=True), PredictorConfig(dim=32, depth=1, num_heads=2))
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
    wm = WorldModel(EncoderConfig(dim=8, width=8, frozen=True), PredictorConfig(dim=16, depth=1, num_heads=2))
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


def test_macro_world_model_loss_and_bounds():
    torch.manual_seed(0)
    m = MacroWorldModel(repr_dim=8, stride=4, macro_dim=2, pred=PredictorConfig(dim=16, depth=1, num_heads=2))
    z, chunks = torch.randn(3, 4, 8), torch.randn(3, 3, 4, 2)
    out = m.loss(z, chunks, LossWeights(rollout_steps=2))
    out["loss"].backward()
    codes = m.macro(chunks * 100)
    assert codes.shape == (3, 3, 2) and codes.abs().max() <= 1


@pytest.mark.parametrize("kill_level", [0, 1])
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch, kill_level):
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    def cfg_for(folder, resume=False):
        return load_config(wm_train.WorldModelConfig, overrides=[
            "data.num_trajectories=48", "data.length=8", "data.cache_dir=null", "encoder.dim=8", "encoder.width=8",
            "predictor.dim=16", "predictor.depth=1", "stage.steps=6", "stage.batch_size=8", "stage.window=3",
            "stage.warmup=1", "level1.stride=2", "level1.predictor.dim=16", "level1.predictor.depth=1",
            "level1.stage.steps=6", "level1.stage.batch_size=8", "level1.stage.window=3", "level1.stage.warmup=1",
            "level1.bank_size=16", "meta.save_every_steps=3", "logging.progress_bar=false",
            "logging.tensorboard=false", f"logging.folder={folder}", f"meta.load_checkpoint={str(resume).lower()}"])

    wm_train.train(cfg_for(tmp_path / "whole"))
    real_save = wm_train.save

    def save_then_die(accelerator, path, wm, macro, opt0, opt1, steps, data, cfg):
        real_save(accelerator, path, wm, macro, opt0, opt1, steps, data, cfg)
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
    for part in ("model", "macro"):
        for k, v in whole[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    assert torch.equal(whole["macro_bank"], resumed["macro_bank"])
