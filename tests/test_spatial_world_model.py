"""Spatial level 0 (hjepa/world_model/spatial.py): the map encoder's shapes, the conv predictor's interface
and rollout (as ACPredictor's), locality, gradient flow, the per-channel variance terms, an N-level world
model that trains from a config, and config errors."""
import numpy as np
import pytest
import torch

from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, generate
from hjepa.world_model.model import ACPredictor, EncoderConfig, FrameLevel, LossWeights, PredictorConfig, WorldModel
from hjepa.world_model.spatial import ConvMapEncoder, ConvPredictor, channel_features

MAP = EncoderConfig(type="conv_map", dim=4, width=8, map_size=8)
CONV = PredictorConfig(type="conv", dim=8, depth=1)


def random_conv_predictor(C=3, h=5, A=2, depth=2, seed=0):
    torch.manual_seed(seed)
    p = ConvPredictor((C, h, h), A, width=8, depth=depth)
    torch.nn.init.normal_(p.out.weight, std=0.1)  # zero-initialised output would hide everything
    return p


def test_map_encoder_keeps_a_flattened_map():
    enc = ConvMapEncoder(3, dim=4, width=8, img_size=64, map_size=8)
    assert enc.map_shape == (4, 8, 8) and enc.dim == 256
    assert enc(torch.rand(2, 3, 64, 64)).shape == (2, 256)
    with pytest.raises(ValueError, match="map_size"):
        ConvMapEncoder(3, dim=4, width=8, img_size=64, map_size=6)


def test_map_encoder_is_local():
    """A change in one corner of the frame changes only the map cells whose receptive field covers it."""
    torch.manual_seed(0)
    enc = ConvMapEncoder(3, dim=4, width=8, img_size=64, map_size=8).eval()
    x = torch.rand(1, 3, 64, 64)
    x2 = x.clone()
    x2[:, :, :8, :8] += 1.0  # cell (0, 0)
    diff = (enc(x2) - enc(x)).view(4, 8, 8).abs().sum(0)
    outside = diff.clone()
    outside[:3, :3] = 0  # two 3x3 convolutions: 2 cells of reach
    # exactly zero beyond the reach (comparing two sums instead failed on summation order alone)
    assert diff[0, 0] > 0 and torch.count_nonzero(outside) == 0


def test_conv_predictor_matches_the_acpredictor_interface():
    p = random_conv_predictor()
    ac = ACPredictor(75, 2, dim=16, depth=1, num_heads=2)
    z, a = torch.randn(2, 4, 75), torch.randn(2, 6, 2)
    for m in (p, ac):
        assert m(z, a[:, :4]).shape == (2, 4, 75)
        assert m.rollout(z[:, :2], a[:, :5]).shape == (2, 4, 75)  # 1 past action, then 4 to come
        assert m.rollout(z[:, :1], a[:, :3], context=1).shape == (2, 3, 75)
        with pytest.raises(ValueError, match="rollout needs more actions"):
            m.rollout(z[:, :3], a[:, :2])


def test_conv_predictor_is_markov_and_its_rollout_feeds_back():
    p = random_conv_predictor()
    z, a = torch.randn(2, 4, 75), torch.randn(2, 4, 2)
    out = p(z, a)
    z2 = z.clone()
    z2[:, 0] += 1.0
    torch.testing.assert_close(p(z2, a)[:, 1:], out[:, 1:])  # step t reads z_t alone
    assert not torch.allclose(p(z2, a)[:, 0], out[:, 0])
    a2 = a.clone()
    a2[:, 2] += 1.0
    assert not torch.allclose(p(z, a2)[:, 2], out[:, 2])  # the action at t changes the prediction of t + 1
    roll = p.rollout(z[:, :2], a)  # from the newest context frame z_1, actions a_1, a_2, a_3
    torch.testing.assert_close(roll[:, 0], out[:, 1])  # first rollout step = teacher-forced step
    torch.testing.assert_close(roll[:, 1], p(roll[:, :1], a[:, 2:3])[:, 0])  # then its own prediction
    with pytest.raises(ValueError, match="not the map"):
        p(torch.randn(2, 4, 74), a)


def test_conv_predictor_starts_as_identity_and_acts_locally():
    torch.manual_seed(0)
    p = ConvPredictor((3, 9, 9), 2, width=8, depth=0)
    z, a = torch.randn(2, 3, 243), torch.randn(2, 3, 2)
    torch.testing.assert_close(p(z, a), z)  # zero-initialised change
    torch.nn.init.normal_(p.out.weight, std=0.1)
    z2 = z.clone().view(2, 3, 3, 9, 9)
    z2[..., 0, 0] += 1.0  # a corner cell
    diff = (p(z2.view(2, 3, 243), a) - p(z, a)).view(2, 3, 3, 9, 9).abs().sum((0, 1, 2))
    outside = diff.clone()
    outside[:3, :3] = 0  # 2 convolutions: reach of 2 cells, as a local rule should
    assert diff[0, 0] > 0 and torch.count_nonzero(outside) == 0


def test_conv_predictor_is_translation_equivariant():
    """The same local content shifted on the map gives the same predicted change, shifted (away from borders)."""
    p = random_conv_predictor(C=2, h=16, depth=0)  # two convolutions: the border reaches 2 cells in
    m = torch.zeros(1, 1, 2, 16, 16)
    m[..., 3:5, 3:5] = torch.randn(2, 2, 2)
    shifted = torch.roll(m, (4, 3), (-2, -1))
    a = torch.randn(1, 1, 2)
    d1 = (p(m.flatten(2), a) - m.flatten(2)).view(2, 16, 16)
    d2 = (p(shifted.flatten(2), a) - shifted.flatten(2)).view(2, 16, 16)
    # away from the zero-padded border the change moves with the content (background cells, inputs 0 but a
    # non-zero bias, change alike everywhere)
    assert d2[:, 6:9, 5:8].abs().sum() > 0
    torch.testing.assert_close(torch.roll(d1, (4, 3), (-2, -1))[:, 6:14, 5:14], d2[:, 6:14, 5:14])


def test_channel_features_are_cells_by_channels():
    z = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 24)  # C=2, 3 x 4 map
    f = channel_features(z, (2, 3, 4))
    assert f.shape == (1, 12, 2)
    torch.testing.assert_close(f[0, :, 0], torch.arange(12.0))  # channel 0, every cell
    torch.testing.assert_close(f[0, 5, 1], torch.tensor(17.0))  # channel 1, cell 5


def tiny_batch(n=16, window=3):
    cfg = TrajectoryConfig(num_trajectories=48, length=8, cache_dir=None)
    data = generate(cfg)
    win = TrajectoryWindows(data, cfg.env, window=window)
    return win.batch(np.arange(0, len(win), max(1, len(win) // n))[:n])


def test_spatial_level_zero_gets_gradients_everywhere_and_its_loss_falls():
    torch.manual_seed(0)
    batch = tiny_batch()
    wm = FrameLevel(MAP, CONV)
    assert isinstance(wm.predictor, ConvPredictor) and wm.embed_dim == 256
    w = LossWeights(rollout_steps=2, var_within_window=True)
    out = wm.loss(batch["frames"], batch["actions"][:, :, 0], w)
    assert out["z"].shape == (16, 3, 256)
    out["loss"].backward()
    for name, mod in (("encoder", wm.encoder), ("predictor", wm.predictor), ("idm", wm.idm)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters()), name
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    first = out["loss"].item()
    for _ in range(25):
        out = wm.loss(batch["frames"], batch["actions"][:, :, 0], w)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.8 * first


def test_spatial_variance_terms_are_per_channel():
    """The hinge counts the C channels across cells, not the C*h*w flat features: a map whose channels vary
    over cells and time meets it though most cells never change."""
    wm = FrameLevel(MAP, CONV)
    z = torch.zeros(8, 4, 4, 8, 8)
    z[:, :, :, 0, 0] = 3 * torch.randn(8, 4, 4)  # only cell (0, 0) varies
    flat_hinge = torch.relu(1 - torch.sqrt(z.flatten(2).var((0, 1)) + 1e-4)).mean()
    per_channel = channel_features(z.flatten(2), wm.map_shape)
    from vjepa.regularizers import vicreg_terms
    var, _ = vicreg_terms(per_channel)
    assert var < 0.8 * flat_hinge  # 63 of 64 cells constant: the flat hinge is ~1, the per-channel one lower


def test_n_level_world_model_with_spatial_level_zero_trains_from_config(tmp_path):
    from hjepa.world_model import train as wm_train
    from vjepa.engine.config import load_config

    raw = {"data": {"num_trajectories": 24, "length": 8, "cache_dir": None},
           "encoder": {"type": "conv_map", "dim": 4, "width": 8, "map_size": 8},
           "predictor": {"type": "conv", "dim": 8, "depth": 1},
           "loss": {"var_within_window": True},
           "stage": {"steps": 2, "batch_size": 4, "window": 3, "warmup": 1},
           "levels": [{"stride": 2, "pred_embed_dim": 16, "pred_depth": 1, "bank_size": 8,
                       "stage": {"steps": 2, "batch_size": 4, "window": 2, "warmup": 1}}] * 2,
           "logging": {"folder": str(tmp_path), "progress_bar": False, "tensorboard": False, "log_every": 1}}
    cfg = load_config(wm_train.WorldModelConfig, raw=raw)
    wm_train.train(cfg)
    _, wm, banks = wm_train.load_trained(tmp_path / "wm-latest.pt")
    assert wm.num_levels == 3 and isinstance(wm.predictor, ConvPredictor) and wm.repr_dim == 256
    z = wm.encode(torch.rand(2, 3, 3, 64, 64))
    assert z.shape == (2, 3, 256)
    assert wm.predictor.rollout(z[:, :1], torch.zeros(2, 4, 2)).shape == (2, 4, 256)
    z1 = wm.state(z, 1)
    assert wm.predictor_of(1).rollout(z1[:, :1], torch.zeros(2, 2, 2)).shape == (2, 2, 256)


def test_spatial_config_errors():
    from hjepa.world_model.train import WorldModelConfig
    from vjepa.engine.config import load_config

    with pytest.raises(ValueError, match="predictor.type"):
        PredictorConfig(type="cnn")
    with pytest.raises(ValueError, match="conv_map"):
        FrameLevel(EncoderConfig(dim=8, width=8), CONV)  # a conv predictor on a global vector
    with pytest.raises(ValueError, match="conv_map"):
        EncoderConfig(type="conv_map", static_dim=2)
    with pytest.raises(ValueError, match="map_size"):
        WorldModel(EncoderConfig(type="conv_map", map_size=5), CONV)
    with pytest.raises(Exception, match="conv_map"):
        load_config(WorldModelConfig, raw={"encoder": {"type": "conv_mop"}})
    with pytest.raises(Exception, match="map_siz"):
        load_config(WorldModelConfig, raw={"encoder": {"map_siz": 8}})


def test_wall_probe_reads_the_wall_column_and_door_row():
    from benchmarks.wall_probe import wall_geometry
    from data.generated.envs import EnvConfig, sample_maps

    env = EnvConfig(name="two_rooms", wall_shift=6, door_cells=4, door_cells_max=8)
    maps = sample_maps(env, 6, 0, "heldout")
    for m, (col, door) in zip(maps, wall_geometry(maps)):
        col = int(col)
        assert m[5:-5, col].any() and not m[5:-5, col - 1].any()  # the wall's first column, nothing left of it
        gap = np.flatnonzero(~m[1:-1, col]) + 1
        assert door == gap.mean() and np.all(np.diff(gap) == 1)  # one door, its centre row


def test_replicate_padding_hides_the_map_edge():
    """On a uniform map, zero padding makes the edge cells' change differ (the edge is visible as such);
    replicated padding makes every cell change alike."""
    z, a = torch.full((1, 1, 2 * 6 * 6), 0.7), torch.tensor([[[0.5, -0.3]]])
    for padding, uniform in (("zeros", False), ("replicate", True)):
        torch.manual_seed(0)
        p = ConvPredictor((2, 6, 6), 2, width=8, depth=1, padding=padding)
        torch.nn.init.normal_(p.out.weight, std=0.1)
        d = (p(z, a) - z).view(2, 36)
        assert torch.allclose(d, d[:, :1].expand(-1, 36), atol=1e-6) == uniform, padding


def test_padding_config_errors():
    with pytest.raises(ValueError, match="padding"):
        PredictorConfig(padding="replicate")  # a transformer has no padding
    with pytest.raises(ValueError, match="padding"):
        ConvPredictor((2, 4, 4), 2, padding="reflect")


def test_predictor_ensemble_members_train_beside_the_first_without_moving_the_encoder():
    """`predictor.ensemble: 3`: two more level-0 predictors, drawn from a side random stream (every other
    module starts exactly as with one predictor), each trained on its own loss term on detached states."""
    torch.manual_seed(0)
    one = FrameLevel(MAP, CONV)
    torch.manual_seed(0)
    three = FrameLevel(MAP, PredictorConfig(type="conv", dim=8, depth=1, ensemble=3))
    assert len(three.members) == 2 and len(one.members) == 0
    for k, v in one.state_dict().items():  # same start for everything the single-predictor model has
        torch.testing.assert_close(three.state_dict()[k], v)
    for m in three.members:  # members differ from the first predictor and from each other
        torch.nn.init.normal_(m.out.weight, std=0.1)
    assert not torch.equal(three.members[0].inp.weight, three.members[1].inp.weight)
    assert not torch.equal(three.members[0].inp.weight, three.predictor.inp.weight)
    frames, actions = torch.rand(2, 4, 3, 64, 64), torch.rand(2, 3, 2) * 2 - 1
    w = LossWeights(rollout_steps=2)
    out = three.loss(frames, actions, w)
    base = one.loss(frames, actions, w)
    assert "members" in out and "members" not in base
    torch.testing.assert_close(out["loss"], base["loss"] + 2 * out["members"])  # each member's term at weight 1
    # only the members' term: gradient into every member, none into the encoder or the first predictor
    out["members"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in three.members for p in m.parameters())
    assert all(p.grad is None for p in three.encoder.parameters())
    assert all(p.grad is None for p in three.predictor.parameters())
    with pytest.raises(ValueError, match="ensemble"):
        PredictorConfig(type="conv", ensemble=0)
