"""The small-scale recipe's data and evaluation options: no-truncation masks, extra readouts, pretraining
variety, the quality monitor and the small-dataset config. Each is off by default and must then change
nothing. The loss terms are in test_recipe_terms.py."""
import pytest
import torch

from data.collate import MaskCollator
from data.masks import MaskConfig, MultiBlockMask, short_range_mask
from tests.test_pretrain import tiny_cfg
from vjepa.knn_monitor import ridge_top1
from vjepa.objective import LossConfig, jepa_loss
from vjepa.pretrain import build_models
from vjepa.readouts import few_shot_subset

GRID = (8, 8, 8)


def _models(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.crop_size=64", "model.pred_depth=1")
    cfg.mask = [short_range_mask()]
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    return cfg, encoder, predictor, target


def _samples(n, step=0):
    return [{"clip": torch.zeros(3, 1, 1, 1), "label": 0, "seed": i, "step": step} for i in range(n)]


def test_pad_to_longest_keeps_every_sample_full_context_and_target():
    cfg = MaskConfig(num_blocks=8, spatial_scale=[0.15, 0.15], pad_to_longest=True)
    trunc = MaskCollator([MaskConfig(num_blocks=8, spatial_scale=[0.15, 0.15])], GRID, seed=0)
    padded = MaskCollator([cfg], GRID, seed=0)
    gen = MultiBlockMask(cfg, GRID)
    from data.collate import _generator
    from data.seeding import derive_seed
    for step in range(5):
        b = padded(_samples(8, step))
        t = trunc(_samples(8, step))
        assert "valid_ctx" in b and "valid_ctx" not in t
        size = gen.sample_block_size(_generator(0, step, 0))
        lost = 0
        for i in range(8):
            ctx, tgt = gen(size, _generator(derive_seed(i, 0), 0))  # what the generator gave sample i
            for key, full in (("ctx", ctx), ("tgt", tgt)):
                idx, valid = b[f"masks_{key}"][0][i], b[f"valid_{key}"][0][i]
                assert torch.equal(idx[valid], full)  # every index kept, in order
                assert valid.sum() == len(full) and bool(valid[: len(full)].all())
                assert set(idx[~valid].tolist()) <= {int(full[0])}  # padding repeats a real index
            lost += len(ctx) - t["masks_ctx"][0].shape[1]
        assert b["masks_ctx"][0].shape[1] >= t["masks_ctx"][0].shape[1]
    assert lost > 0  # truncation does drop context on this grid; padding keeps it


def test_padding_does_not_change_real_tokens_or_the_loss(tmp_path):
    """Padding entries are invisible: a clip's encoding, prediction and loss are the same alone (no
    padding) and inside a padded batch next to a clip with a longer context."""
    cfg, encoder, predictor, target = _models(tmp_path)
    cfg.mask = [MaskConfig(num_blocks=8, spatial_scale=[0.15, 0.15], pad_to_longest=True)]
    torch.manual_seed(0)
    clips = torch.randn(2, 3, cfg.data.num_frames, 64, 64)
    coll = MaskCollator(cfg.mask, encoder.grid, seed=0)
    batch = None
    for step in range(20):  # a batch whose two clips have different context lengths
        batch = coll([{"clip": c, "label": 0, "seed": i, "step": step} for i, c in enumerate(clips)])
        if batch["valid_ctx"][0].sum(1).unique().numel() == 2:
            break
    short = int(batch["valid_ctx"][0].sum(1).argmin())
    n_ctx, n_tgt = int(batch["valid_ctx"][0][short].sum()), int(batch["valid_tgt"][0][short].sum())
    alone = {"clip": clips[short:short + 1], "masks_ctx": [batch["masks_ctx"][0][short:short + 1, :n_ctx]],
             "masks_tgt": [batch["masks_tgt"][0][short:short + 1, :n_tgt]]}
    z_pad = encoder(batch["clip"], batch["masks_ctx"], batch["valid_ctx"])[0][short, :n_ctx]
    z_alone = encoder(alone["clip"], alone["masks_ctx"])[0][0]
    torch.testing.assert_close(z_pad, z_alone, atol=1e-5, rtol=1e-5)
    p_pad = predictor([encoder(batch["clip"], batch["masks_ctx"], batch["valid_ctx"])[0]], batch["masks_ctx"],
                      batch["masks_tgt"], valid_ctx=batch["valid_ctx"], valid_tgt=batch["valid_tgt"])[0][short, :n_tgt]
    p_alone = predictor(encoder(alone["clip"], alone["masks_ctx"]), alone["masks_ctx"], alone["masks_tgt"])[0][0]
    torch.testing.assert_close(p_pad, p_alone, atol=1e-5, rtol=1e-5)
    # the padded batch's loss is the token-weighted mean of each clip's loss computed alone
    padded_loss, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    total, count = 0.0, 0
    for i in range(2):
        nc, nt = int(batch["valid_ctx"][0][i].sum()), int(batch["valid_tgt"][0][i].sum())
        one = {"clip": clips[i:i + 1], "masks_ctx": [batch["masks_ctx"][0][i:i + 1, :nc]],
               "masks_tgt": [batch["masks_tgt"][0][i:i + 1, :nt]]}
        total += jepa_loss(encoder, predictor, target, one, LossConfig())[0].item() * nt
        count += nt
    assert padded_loss.item() == pytest.approx(total / count, rel=1e-5)


def test_length_groups_give_the_padded_batch_loss_and_gradients(tmp_path):
    """`model.length_groups`: padded rows run in groups of similar length, cut to their longest row. Real
    tokens, the loss and every gradient match the one padded batch; padded positions come back as zeros;
    one group per row leaves no padding in any group."""
    cfg, encoder, predictor, target = _models(tmp_path)
    cfg.mask = [MaskConfig(num_blocks=8, spatial_scale=[0.15, 0.15], pad_to_longest=True),
                MaskConfig(num_blocks=2, spatial_scale=[0.7, 0.7], pad_to_longest=True)]
    predictor = build_models(cfg)[1]  # two mask tokens
    torch.manual_seed(0)
    clips = torch.randn(6, 3, cfg.data.num_frames, 64, 64)
    batch = MaskCollator(cfg.mask, encoder.grid, seed=0)([{"clip": c, "label": 0, "seed": i, "step": 3}
                                                          for i, c in enumerate(clips)])
    assert all(v.sum(1).unique().numel() > 1 for v in batch["valid_ctx"])  # lengths differ within the batch
    runs = {}
    for groups in (1, 3, 6):
        encoder.length_groups = predictor.length_groups = groups
        encoder.zero_grad()
        predictor.zero_grad()
        lengths = []
        hook = encoder.blocks[0].register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[:2]))
        z = encoder(batch["clip"], batch["masks_ctx"], batch["valid_ctx"])
        hook.remove()
        if groups == 6:  # one row per group: each runs at exactly its own context length
            assert sorted(n for _, n in lengths) == sorted(int(n) for v in batch["valid_ctx"] for n in v.sum(1))
        if groups == 1:  # one padded batch per mask config
            assert [tuple(x) for x in lengths] == [tuple(m.shape) for m in batch["masks_ctx"]]
        loss, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
        loss.backward()
        grads = [p.grad.clone() for p in [*encoder.parameters(), *predictor.parameters()] if p.grad is not None]
        runs[groups] = (z, loss.item(), grads)
    z1, loss1, g1 = runs[1]
    for groups in (3, 6):
        z, loss, g = runs[groups]
        assert loss == pytest.approx(loss1, rel=1e-5)
        assert len(g) == len(g1) and len(g1) > 0
        for a, b in zip(g, g1):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        for zg, zp, v in zip(z, z1, batch["valid_ctx"]):
            torch.testing.assert_close(zg[v], zp[v], atol=1e-5, rtol=1e-5)
            assert bool((zg[~v] == 0).all()) and bool((zp[~v] != 0).any())  # old path leaves values there


def test_length_groups_must_be_positive():
    from vjepa.models import ModelConfig
    with pytest.raises(ValueError, match="length_groups"):
        ModelConfig(length_groups=0)


def test_padded_loss_falls_on_a_fixed_batch(tmp_path):
    cfg, encoder, predictor, target = _models(tmp_path)
    cfg.mask = [MaskConfig(num_blocks=8, spatial_scale=[0.15, 0.15], pad_to_longest=True)]
    clips = torch.randn(4, 3, cfg.data.num_frames, 64, 64)
    batch = MaskCollator(cfg.mask, encoder.grid, seed=0)([{"clip": c, "label": 0, "seed": i, "step": 0}
                                                          for i, c in enumerate(clips)])
    opt = torch.optim.AdamW([*encoder.parameters(), *predictor.parameters()], lr=1e-3)
    losses = []
    for _ in range(15):
        loss, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig(vicreg_var=1.0, vicreg_cov=0.04))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_few_shot_subset_takes_n_per_class_and_refuses_too_few():
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1, 2, 0])
    x = torch.arange(10).float().view(10, 1, 1, 1)
    xs, ys = few_shot_subset((x, y), 2, 3)
    assert ys.bincount().tolist() == [2, 2, 2]
    assert xs.flatten().tolist() == [0, 1, 2, 3, 4, 6]  # the first two of each class, in order
    with pytest.raises(ValueError, match="class 1 has 3"):
        few_shot_subset((x, y), 4, 3)


def test_ridge_readout_separates_linear_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(4, 8, generator=g)
    yt, yv = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (100,), generator=g)
    xt = centers[yt] + torch.randn(200, 8, generator=g)
    xv = centers[yv] + torch.randn(100, 8, generator=g)
    assert ridge_top1(xt, yt, xv, yv, 4) > 95.0
    assert ridge_top1(torch.randn(200, 8, generator=g), yt, torch.randn(100, 8, generator=g), yv, 4) < 45.0


def test_pretraining_variety_is_off_by_default_and_leaves_the_labelled_motion_alone():
    from data.generated.synthetic import MotionVideos

    plain = MotionVideos(4, 8, 32, seed=3)
    busy = MotionVideos(4, 8, 32, seed=3, extra_objects=2)
    same = MotionVideos(4, 8, 32, seed=3, extra_objects=0, pan=0.0, object_scale=1.0)
    big = MotionVideos(4, 8, 32, seed=3, object_scale=2.0)
    changed = 0
    for i in range(4):
        assert torch.equal(plain.clip(i), same.clip(i))
        assert plain.label_of(i) == busy.label_of(i) == big.label_of(i)
        changed += int(not torch.equal(plain.clip(i), busy.clip(i)))
        # a larger labelled shape: same background, more pixels that change over the clip
        moving = [(c.clip(i).int().diff(dim=0).abs().sum(-1) > 0).sum().item() for c in (plain, big)]
        assert moving[1] > 1.5 * moving[0]
    assert changed >= 2  # 0..2 extra shapes per clip: most clips get at least one
    panned = MotionVideos(2, 8, 32, seed=3, pan=2.0).clip(0)
    assert torch.equal(panned[0], plain.clip(0)[0])  # frame 0 is not shifted
    assert not torch.equal(panned[-1], plain.clip(0)[-1])


def test_pretraining_logs_the_quality_monitor_from_the_random_init(tmp_path):
    import csv

    from vjepa.pretrain import train

    cfg = tiny_cfg(tmp_path, "logging.knn_monitor=true", "meta.eval_freq=2", "logging.log_every=2",
                   "optimization.epochs=1", "optimization.ipe=4")
    train(cfg)
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["linear_top1"]]
    assert [int(r["step"]) for r in rows] == [0, 2, 4]  # step 0 scores the random init
    assert all(0.0 <= float(r["linear_top1"]) <= 100.0 and 0.0 <= float(r["knn_top1"]) <= 100.0 for r in rows)
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_monitor_on_user_lists_reads_labelled_videos(tmp_path):
    """`logging.monitor_train/val` point the monitor at the user's own labelled clips (written with PyAV)."""
    from data.config import DataAugConfig, DataConfig
    from tests.videos import write_video
    from vjepa.knn_monitor import ListMonitor
    from vjepa.models import VisionTransformer

    lines = {"train": [], "val": []}
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            path = write_video(tmp_path / split / f"{i}.mp4", num_frames=12, width=48, height=40)
            lines[split].append(f"{path} {i % 2}")
    for split in lines:
        (tmp_path / f"{split}.csv").write_text("\n".join(lines[split]) + "\n")
    data = DataConfig(num_frames=4, sampling_rate=2, crop_size=32, patch_size=8, num_workers=0)
    monitor = ListMonitor(str(tmp_path / "train.csv"), str(tmp_path / "val.csv"), data, DataAugConfig(), k=3,
                          batch_size=4)
    assert monitor.labels["train"].tolist() == [0, 1, 0, 1, 0, 1] and monitor.num_classes == 2
    enc = VisionTransformer(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=24, depth=1,
                            num_heads=2)
    scores = monitor.scores(enc)
    assert set(scores) == {"knn_top1", "linear_top1"} and all(v in (0.0, 50.0, 100.0) for v in scores.values())


def test_small_dataset_config_loads_and_keeps_the_published_recipe_untouched():
    from vjepa.engine.config import load_config
    from vjepa.pretrain import PretrainConfig

    small = load_config(PretrainConfig, "configs/pretrain/small.yaml")
    assert small.model.model_name == "vit_small" and small.logging.knn_monitor
    assert [m.spatial_scale for m in small.mask] == [[0.15, 0.15], [0.5, 0.5]]
    assert (small.loss.reverse_coeff, small.loss.reverse_dims, small.loss.reverse_pool) == (1.0, 128, "clip")
    # every new ingredient is off in the published ViT-L recipe
    vitl = load_config(PretrainConfig, "configs/pretrain/vitl16.yaml")
    assert (vitl.loss.target_layers, vitl.loss.vicreg_var, vitl.loss.vicreg_cov, vitl.loss.sigreg_coeff,
            vitl.loss.view_coeff, vitl.loss.local_coeff, vitl.loss.pooled_coeff, vitl.loss.dynamic_weight,
            vitl.loss.target_diff, vitl.loss.feature_coeff, vitl.loss.pixel_coeff,
            vitl.loss.reverse_coeff) == (1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0)
    assert not any(m.pad_to_longest for m in vitl.mask) and not vitl.logging.knn_monitor
    assert (vitl.data.synthetic.extra_objects, vitl.data.synthetic.pan, vitl.data.synthetic.object_scale) == (0, 0.0, 1.0)


def test_weight_drift_measures_how_far_the_target_lags_the_online_encoder(tmp_path, monkeypatch):
    import importlib.util

    from vjepa.pretrain import train

    spec = importlib.util.spec_from_file_location("weight_drift", "benchmarks/weight_drift.py")
    wd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wd)
    train(tiny_cfg(tmp_path, "optimization.epochs=1", "optimization.ipe=3", "optimization.ema=[0.9,0.9]"))
    d = wd.drift(str(tmp_path / "jepa-latest.pt"))
    assert d["step"] == 3 and d["online"] > 0 and 0 < d["target"] < d["online"]
    # --monitor scores the two encoders of the checkpoint (a tiny benchmark here; the real one is 512 clips)
    import vjepa.knn_monitor as km

    seen = []

    class Tiny(km.MotionKNNMonitor):
        def __init__(self, num_frames, size, **kw):
            super().__init__(num_frames, size, num_speeds=1, num_train=16, num_val=8, k=3)

        def scores(self, encoder, device):
            seen.append(encoder)
            return super().scores(encoder, device)

    monkeypatch.setattr(km, "MotionKNNMonitor", Tiny)
    m = wd.monitor_scores(str(tmp_path / "jepa-latest.pt"))
    assert set(m) == {"online", "target"} and all(0 <= v["knn_top1"] <= 100 for v in m.values())
    assert len(seen) == 2 and seen[0] is not seen[1]


def test_a_monitor_list_without_its_pair_is_a_config_error(tmp_path):
    from vjepa.engine.config import ConfigError
    from vjepa.pretrain import train

    with pytest.raises(ConfigError, match="monitor_train and logging.monitor_val go together"):
        train(tiny_cfg(tmp_path, "logging.knn_monitor=true", f"logging.monitor_train={tmp_path / 'a.csv'}"))


def test_pooling_readouts_poolings_on_a_known_case():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pooling_readouts", "benchmarks/pooling_readouts.py")
    pr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pr)
    z = torch.zeros(1, 2 * 2 * 2, 3)  # grid T, H, W = 2, 2, 2
    z[0, 4 + 1, 0] = 2.0  # one token (t 1, position 1) lights channel 0
    p = pr.poolings(z, (2, 2, 2))
    torch.testing.assert_close(p["mean"][0], torch.tensor([2.0 / 8, 0.0, 0.0]))
    torch.testing.assert_close(p["per-time mean"][0], torch.tensor([0.0, 0.0, 0.0, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(p["mean abs(dz/dt)"][0], torch.tensor([0.5, 0.0, 0.0]))
    # only position 1 changes over time: its two tokens (0 and 2) share the weight; their mean is 1
    torch.testing.assert_close(p["motion-weighted mean"][0], torch.tensor([1.0, 0.0, 0.0]))


def test_supervised_ceiling_trains_the_quickstart_encoder_from_its_pretraining_init():
    import importlib.util

    from vjepa.engine.config import load_config
    from vjepa.quickstart import QuickstartConfig

    spec = importlib.util.spec_from_file_location("supervised_ceiling", "benchmarks/supervised_ceiling.py")
    sc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sc)
    cfg = load_config(QuickstartConfig, "configs/quickstart.yaml", [
        "pretrain.data.num_frames=4", "pretrain.data.crop_size=32", "pretrain.data.batch_size=4",
        "pretrain.data.synthetic.num_videos=16", "pretrain.optimization.ipe=3", "pretrain.optimization.epochs=1",
        "pretrain.optimization.warmup=0"])
    torch.manual_seed(cfg.pretrain.meta.seed)
    init, _, _ = build_models(cfg.pretrain)  # where pretraining (and the random-init arm) starts
    a, b = sc.train_supervised(cfg, lr=1e-3), sc.train_supervised(cfg, lr=1e-3)
    assert not a.training
    flat = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (a, init)]
    drift = float((flat[0] - flat[1]).norm() / flat[1].norm())
    assert 0 < drift < 0.2  # trained from that init (another draw would be ~1.4 away), and trained at all
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))  # seeded
