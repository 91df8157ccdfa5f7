"""Environment videos for V-JEPA pretraining, and the world model's frozen V-JEPA frame encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data.config import DataAugConfig, DataConfig
from data.datasets import build_video_dataset
from data.generated.env_videos import episode_frames, write_env_videos
from data.generated.envs import EnvConfig
from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, generate
from data.video import decode_frames
from hjepa.world_model.encoders import EncoderConfig, VJEPAEncoder
from hjepa.world_model.model import FrameLevel, LossWeights, PredictorConfig
from vjepa.engine.checkpoint import CheckpointMismatch
from vjepa.engine.config import to_dict
from vjepa.engine.errors import MissingCheckpoint
from vjepa.models import ModelConfig, build_encoder
from vjepa.pretrain import PretrainConfig


def tiny_cfg(**kw) -> TrajectoryConfig:
    base = dict(env=EnvConfig(name="two_rooms"), num_trajectories=3, length=10, num_layouts=3, cache_dir=None)
    base.update(kw)
    return TrajectoryConfig(**base)


def test_clip_decodes_back_to_the_rendered_frames(tmp_path):
    cfg = tiny_cfg()
    listing = write_env_videos(cfg, tmp_path / "v")
    lines = listing.read_text().split("\n")[:-1]
    assert lines == [f"clips/{i:05d}.mp4 0" for i in range(3)]
    data = generate(cfg)
    for i in range(3):
        want = episode_frames(data, i, cfg.env)  # float [T+1, 3, S, S]
        got = decode_frames(str(tmp_path / "v" / f"clips/{i:05d}.mp4"), list(range(cfg.length + 1)))
        got = got.permute(0, 3, 1, 2).float().numpy() / 255  # [T+1, 3, S, S]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6  # lossless up to the uint8 rounding


def test_env_videos_are_idempotent_and_refuse_another_config(tmp_path):
    out = tmp_path / "v"
    listing = write_env_videos(tiny_cfg(), out)
    stamp = (out / "clips/00001.mp4").stat().st_mtime_ns
    assert write_env_videos(tiny_cfg(), out) == listing
    assert (out / "clips/00001.mp4").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another config"):
        write_env_videos(tiny_cfg(seed=5), out)


def test_pretraining_dataset_reads_the_list(tmp_path):
    cfg = tiny_cfg()
    listing = write_env_videos(cfg, tmp_path / "v")
    data_cfg = DataConfig(datasets=[str(listing)], num_frames=4, sampling_rate=2, crop_size=64, patch_size=8,
                          num_workers=0)
    aug = DataAugConfig(random_resize_scale=[1.0, 1.0], random_resize_aspect_ratio=[1.0, 1.0], horizontal_flip=False)
    ds = build_video_dataset(data_cfg, aug, train=True, uint8=True)
    assert len(ds) == 3
    data = generate(cfg)
    for i in range(3):
        clip = ds[i]["clip"]  # uint8 [C, T, H, W]
        assert clip.shape == (3, 4, 64, 64) and clip.dtype == torch.uint8
        walls = episode_frames(data, i, cfg.env)[0, 0]  # the wall channel, the same in every frame
        assert torch.equal(clip[0], torch.from_numpy(walls * 255).to(torch.uint8).expand(4, -1, -1))
        assert clip[1].amax() == 255  # the agent disc is there


def fake_pretrain_checkpoint(path, patch_size=8, model_name="vit_micro", num_frames=8):
    """A `task: pretrain`-shaped checkpoint: the target encoder's weights and the resolved config."""
    cfg = PretrainConfig()
    cfg.model.model_name = model_name
    cfg.data.crop_size, cfg.data.patch_size, cfg.data.num_frames, cfg.data.tubelet_size = 64, patch_size, num_frames, 2
    torch.manual_seed(3)
    vit = build_encoder(cfg.model, img_size=64, num_frames=num_frames, patch_size=patch_size, tubelet_size=2)
    torch.save({"target_encoder": vit.state_dict(), "config": to_dict(cfg), "step": 1}, path)
    return vit


def test_vjepa_encoder_loads_a_pretraining_checkpoint_and_encodes_single_frames(tmp_path):
    vit = fake_pretrain_checkpoint(tmp_path / "jepa-latest.pt")
    enc = VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=8, checkpoint=str(tmp_path / "jepa-latest.pt")), 64)
    own = enc.vit.state_dict()
    assert torch.equal(own["blocks.0.attn.qkv.weight"], vit.state_dict()["blocks.0.attn.qkv.weight"])
    assert torch.equal(own["pos_embed"], vit.state_dict()["pos_embed"][:, :64])  # the first tubelet's positions
    frames = torch.rand(5, 3, 64, 64)
    z = enc(frames)
    assert z.shape == (5, 96) and torch.isfinite(z).all()
    # a frame is a clip of one repeated tubelet: the same as the ViT on that clip (normalised), pooled
    clip = ((frames - enc.mean) / enc.std).unsqueeze(2).repeat(1, 1, 2, 1, 1)  # [B, C, 2, H, W]
    ref = torch.nn.functional.layer_norm(enc.vit(clip).mean(1), (96,))
    torch.testing.assert_close(z, ref)


def test_wrong_or_missing_checkpoint_is_a_one_line_error(tmp_path):
    fake_pretrain_checkpoint(tmp_path / "jepa-latest.pt", patch_size=16)
    with pytest.raises(CheckpointMismatch, match=r"encoder.patch_size=8 vs data.patch_size=16") as e:
        VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=8, checkpoint=str(tmp_path / "jepa-latest.pt")), 64)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointMismatch, match="model.model_name"):
        VJEPAEncoder(EncoderConfig(type="vjepa", vit=ModelConfig(model_name="vit_tiny"), patch_size=16,
                                   checkpoint=str(tmp_path / "jepa-latest.pt")), 64)
    torch.save({"model": {}, "macro": {}}, tmp_path / "wm-latest.pt")
    with pytest.raises(CheckpointMismatch, match="holds no V-JEPA encoder"):
        VJEPAEncoder(EncoderConfig(type="vjepa", checkpoint=str(tmp_path / "wm-latest.pt")), 64)
    with pytest.raises(MissingCheckpoint):
        VJEPAEncoder(EncoderConfig(type="vjepa", checkpoint=str(tmp_path / "nope" / "jepa-latest.pt")), 64)


def test_frozen_vjepa_world_model_trains_the_predictor_only(tmp_path):
    fake_pretrain_checkpoint(tmp_path / "jepa-latest.pt")
    cfg = tiny_cfg(num_trajectories=4, length=6)
    batch = TrajectoryWindows(generate(cfg), cfg.env, window=3).batch(np.arange(4))
    enc = EncoderConfig(type="vjepa", patch_size=8, checkpoint=str(tmp_path / "jepa-latest.pt"), frozen=True)
    wm = FrameLevel(enc, PredictorConfig(dim=16, depth=1, num_heads=2))
    out = wm.loss(batch["frames"], batch["actions"][:, :, 0], LossWeights(rollout_steps=2))
    out["loss"].backward()
    assert out["z"].shape == (4, 3, 96)
    assert all(p.grad is None for p in wm.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.predictor.parameters())
    assert "var" not in out and "idm" not in out


def test_feature_cache_is_exact_and_keyed_by_data_and_weights(tmp_path, monkeypatch):
    from hjepa.world_model import feature_cache
    from hjepa.world_model.feature_cache import encode_dataset

    torch.manual_seed(0)
    cfg = tiny_cfg(length=6)
    data = generate(cfg)
    enc = VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=16), 64).eval()
    z = encode_dataset(enc, data, cfg.env, batch=5, cache_dir=tmp_path)
    assert z.shape == (3, 7, 96)
    win = TrajectoryWindows(data, cfg.env, window=7).batch(np.arange(3))  # whole trajectories
    with torch.no_grad():
        ref = enc(win["frames"].flatten(0, 1)).view(3, 7, 96)
    torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def no_encoding(*args):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(feature_cache, "_encode", no_encoding)
    assert torch.equal(encode_dataset(enc, data, cfg.env, batch=5, cache_dir=tmp_path), z)
    monkeypatch.undo()
    with torch.no_grad():
        enc.vit.blocks[0].mlp.fc1.weight[0, 0] += 1.0  # another encoder: another key
    z2 = encode_dataset(enc, data, cfg.env, batch=5, cache_dir=tmp_path)
    other = generate(tiny_cfg(length=6, seed=7))  # another dataset: another key
    encode_dataset(enc, other, cfg.env, batch=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 3 and not torch.equal(z2, z)
    assert not list(tmp_path.glob(".*tmp"))


def test_standardized_frozen_features_have_unit_spread_and_survive_a_checkpoint():
    torch.manual_seed(0)
    cfg = tiny_cfg(num_trajectories=4, length=8)
    data = generate(cfg)
    frames = TrajectoryWindows(data, cfg.env, window=9).batch(np.arange(4))["frames"].flatten(0, 1)  # [36, 3, S, S]
    enc = VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=16), 64).eval()
    with torch.no_grad():
        raw = enc(frames)
    assert raw.std(0).mean() < 0.1  # pooled features of frames that differ by the agent only: small spread
    z = enc.standardize_(raw)
    with torch.no_grad():
        torch.testing.assert_close(enc(frames), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(z.mean(0), torch.zeros(96), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(96), atol=1e-3, rtol=0)
    torch.testing.assert_close(enc.standardize_(z), z, atol=1e-4, rtol=1e-4)  # refitting on its outputs: same map
    again = VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=16), 64)
    again.load_state_dict(enc.state_dict())  # the map is part of the world model's state
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(frames), z, atol=1e-4, rtol=1e-4)


def _frame_and_feature_batches(enc, data, env, window, idx, cache_dir=None):
    from hjepa.world_model.encoders import frozen_part
    from hjepa.world_model.feature_cache import FeatureWindows, encode_dataset

    z = encode_dataset(frozen_part(enc), data, env, batch=7, cache_dir=cache_dir)
    return (TrajectoryWindows(data, env, window).batch(idx), FeatureWindows(z, data, window).batch(idx))


@pytest.mark.parametrize("head", ["none", "linear", "mlp"])
def test_cached_features_give_the_frame_path_loss(head):
    torch.manual_seed(0)
    cfg = tiny_cfg(num_trajectories=4, length=6)
    data = generate(cfg)
    enc = EncoderConfig(type="vjepa", patch_size=16, frozen=True, head=head, dim=8)
    level = FrameLevel(enc, PredictorConfig(dim=16, depth=1, num_heads=2)).train()
    idx = np.array([0, 3, 5, 9, 12])
    frames, feats = _frame_and_feature_batches(level.encoder, data, cfg.env, 4, idx)
    assert feats["features"].shape == (5, 4, 96)
    assert torch.equal(frames["actions"], feats["actions"]) and torch.equal(frames["states"], feats["states"])
    w = LossWeights(rollout_steps=2)
    a = level.loss(frames["frames"], frames["actions"][:, :, 0], w)
    b = level.loss(feats["features"], feats["actions"][:, :, 0], w)
    assert a.keys() == b.keys() and (("var" in a) == (head != "none"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_head_trains_on_a_frozen_backbone_that_gets_no_gradient():
    from hjepa.world_model.encoders import HeadedEncoder, build_frame_encoder

    torch.manual_seed(0)
    cfg = tiny_cfg(num_trajectories=4, length=6)
    batch = TrajectoryWindows(generate(cfg), cfg.env, window=3).batch(np.arange(6))
    enc = EncoderConfig(type="vjepa", patch_size=16, frozen=True, head="mlp", dim=8)
    level = FrameLevel(enc, PredictorConfig(dim=16, depth=1, num_heads=2)).train()
    assert isinstance(level.encoder, HeadedEncoder) and not level.encoder.backbone.training
    before = {k: v.clone() for k, v in level.encoder.backbone.state_dict().items()}
    opt = torch.optim.AdamW([p for p in level.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = level.loss(batch["frames"], batch["actions"][:, :, 0], LossWeights(rollout_steps=1))
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for p in level.encoder.backbone.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in level.encoder.head.parameters())
        opt.step()
    assert out["z"].shape == (6, 3, 8) and {"var", "cov", "idm", "smooth"} <= out.keys()
    assert all(torch.equal(v, level.encoder.backbone.state_dict()[k]) for k, v in before.items())
    # head: none is today's frozen encoder (pooled ViT feature, no regularisers); a head needs frozen: true
    assert isinstance(build_frame_encoder(EncoderConfig(type="vjepa", patch_size=16), 64), VJEPAEncoder)
    with pytest.raises(ValueError, match="frozen"):
        EncoderConfig(type="vjepa", head="linear")
    with pytest.raises(ValueError, match="valid"):
        EncoderConfig(type="vjepa", frozen=True, head="deep")


def test_grid_pooling_keeps_cells_apart():
    torch.manual_seed(0)
    cfg = tiny_cfg(num_trajectories=2, length=3)
    frames = TrajectoryWindows(generate(cfg), cfg.env, window=4).batch(np.arange(2))["frames"].flatten(0, 1)
    one = VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=8), 64).eval()
    two = VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=8, grid=2), 64).eval()
    two.vit.load_state_dict(one.vit.state_dict())
    with torch.no_grad():
        h = one.vit((frames - one.mean) / one.std)  # [8, 64 tokens, 96]
        g = two(frames).view(8, 4, 96)
    top_left = h.view(8, 8, 8, 96)[:, :4, :4].mean((1, 2))
    torch.testing.assert_close(g[:, 0], torch.nn.functional.layer_norm(top_left, (96,)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        VJEPAEncoder(EncoderConfig(type="vjepa", patch_size=8, grid=3), 64)
    with pytest.raises(ValueError, match="grid"):
        EncoderConfig(type="conv", grid=2)


def test_world_model_run_caches_the_backbone_once_and_never_reads_a_stale_cache(tmp_path, monkeypatch):
    from hjepa.world_model import feature_cache
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    fake_pretrain_checkpoint(tmp_path / "jepa-latest.pt")

    def cfg_for(folder, head="linear"):
        return load_config(wm_train.WorldModelConfig, overrides=[
            "data.num_trajectories=6", "data.length=8", "data.cache_dir=null", "encoder.type=vjepa",
            "encoder.patch_size=8", f"encoder.checkpoint={tmp_path / 'jepa-latest.pt'}", "encoder.frozen=true",
            f"encoder.head={head}", "encoder.dim=8", f"encoder.cache_dir={tmp_path / 'features'}",
            "predictor.dim=16", "predictor.depth=1", "stage.steps=2", "stage.batch_size=4", "stage.window=3",
            "stage.warmup=1", "levels.0.stride=2", "levels.0.pred_embed_dim=16", "levels.0.pred_depth=1",
            "levels.0.stage.steps=2", "levels.0.stage.batch_size=4", "levels.0.stage.window=2",
            "levels.0.stage.warmup=1", "levels.0.bank_size=8", "logging.progress_bar=false",
            "logging.tensorboard=false", f"logging.folder={folder}"])

    rendered = []
    real_render = wm_train.TrajectoryWindows.observe
    monkeypatch.setattr(wm_train.TrajectoryWindows, "observe", lambda *a: rendered.append(1) or real_render(*a))
    wm_train.train(cfg_for(tmp_path / "a"))
    assert not rendered  # every level read cached features
    (cached,) = list((tmp_path / "features").glob("*.pt"))
    state = torch.load(tmp_path / "a" / "wm-latest.pt", weights_only=True)
    assert state["steps"] == [2, 2]
    # the same backbone under another head: the cache is read, not recomputed
    monkeypatch.setattr(feature_cache, "_encode", lambda *a: pytest.fail("encoded again instead of reading"))
    wm_train.train(cfg_for(tmp_path / "b", head="mlp"))
    monkeypatch.undo()
    # other backbone weights: a new cache file, the old one is never read
    pre = torch.load(tmp_path / "jepa-latest.pt", weights_only=False)
    pre["target_encoder"] = {k: v + 0.01 for k, v in pre["target_encoder"].items()}
    torch.save(pre, tmp_path / "jepa-latest.pt")
    real_load = torch.load
    monkeypatch.setattr(feature_cache.torch, "load", lambda p, *a, **k: (
        pytest.fail("read a stale cache") if Path(p) == cached else real_load(p, *a, **k)))
    wm_train.train(cfg_for(tmp_path / "c"))
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2


def test_env_videos_cli_draws_varied_train_split_maps_only(tmp_path):
    import json

    from data.generated.env_videos import main
    from data.generated.envs import is_heldout

    out = tmp_path / "v"
    main(["--world", "two_rooms", "--out", str(out), "--num-trajectories", "6", "--length", "4", "--num-layouts",
          "40", "--wall-shift", "6", "--door-cells", "4", "--door-cells-max", "8", "--layout-split", "train"])
    cfg = json.loads((out / "manifest.json").read_text())["trajectories"]
    assert cfg["layout_split"] == "train" and cfg["env"]["wall_shift"] == 6 and cfg["env"]["door_cells_max"] == 8
    env = EnvConfig(name="two_rooms", wall_shift=6, door_cells=4, door_cells_max=8)
    data = generate(TrajectoryConfig(env=env, num_trajectories=6, length=4, num_layouts=40, layout_seed=1000,
                                     seed=1000, layout_split="train", expert_fraction=0.5, cache_dir=None))
    maps = data["walls"][np.unique(data["layout"])]
    assert len(maps) > 1 and not is_heldout(maps, env.heldout_every).any()
