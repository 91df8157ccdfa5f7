"""The small-scale recipe's loss terms (vjepa/objective.py, vjepa/regularizers.py): each one's value on a
known case, the gradient it sends (into the encoder, never the EMA target), no effect when off, and errors
on bad settings."""
import pytest
import torch

from data.collate import MaskCollator
from data.masks import MaskConfig, short_range_mask
from tests.test_pretrain import tiny_batch, tiny_cfg
from tests.test_recipe import _models
from vjepa.models import gather_tokens
from vjepa.objective import LossConfig, jepa_loss, jepa_targets
from vjepa.pretrain import build_models
from vjepa.regularizers import sigreg, vicreg_terms


def test_vicreg_terms_on_known_cases():
    g = torch.Generator().manual_seed(0)
    assert vicreg_terms(2.0 * torch.randn(4096, 16, generator=g))[0].item() == 0.0  # std 2 > 1: no hinge
    # independent unit channels: sample covariances ~ 1/sqrt(N), so (16*15 * 1/N) / 16 ~ 0.004
    assert vicreg_terms(torch.randn(4096, 16, generator=g))[1].item() < 0.01
    dead = torch.zeros(64, 16)  # collapsed: std 0 -> hinge ~1 (sqrt of the 1e-4 floor is 0.01)
    assert vicreg_terms(dead)[0].item() == pytest.approx(0.99, abs=1e-6)
    same = torch.randn(4096, 1, generator=g).repeat(1, 16)  # 16 copies of one channel: cov ~1 per pair
    assert vicreg_terms(same)[1].item() == pytest.approx(15.0, rel=0.1)  # (16*15 pairs * ~1) / 16


def test_sigreg_is_small_for_gaussian_and_large_for_collapse():
    torch.manual_seed(0)
    gauss = sigreg(torch.randn(4096, 32), num_slices=64)
    collapsed = sigreg(torch.zeros(4096, 32), num_slices=64)
    shifted = sigreg(torch.randn(4096, 32) + 3.0, num_slices=64)
    assert gauss.item() < 2e-3 and collapsed.item() > 0.1 and shifted.item() > 0.1


def test_regularisers_off_change_nothing_and_on_add_their_term_with_gradient(tmp_path):
    cfg, encoder, predictor, target = _models(tmp_path)
    batch = tiny_batch(cfg, encoder)
    base, h, extra = jepa_loss(encoder, predictor, target, batch, LossConfig())
    # today's formula, written out: mean |pred - target| over masked tokens
    z = encoder(batch["clip"], batch["masks_ctx"])
    pred = predictor(z, batch["masks_ctx"], batch["masks_tgt"])[0]
    manual = (pred - gather_tokens(h, batch["masks_tgt"][0])).abs().mean()
    torch.testing.assert_close(base, manual)
    assert extra == {}
    tokens = torch.cat([zi.reshape(-1, zi.shape[-1]) for zi in z])
    var, cov = vicreg_terms(tokens)
    on, _, extra = jepa_loss(encoder, predictor, target, batch, LossConfig(vicreg_var=2.0, vicreg_cov=0.5))
    torch.testing.assert_close(on, base + 2.0 * var + 0.5 * cov)
    assert set(extra) == {"vicreg_var", "vicreg_cov"}
    # the regulariser alone sends gradient into the encoder, none into the target
    encoder.zero_grad()
    (on - base).backward()
    assert encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())
    torch.manual_seed(1)
    sr_on, _, extra = jepa_loss(encoder, predictor, target, batch, LossConfig(sigreg_coeff=1.0))
    assert sr_on.item() > base.item() and "sigreg" in extra
    torch.testing.assert_close(sr_on - base.detach(), extra["sigreg"], rtol=1e-5, atol=1e-6)
    base2, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    encoder.zero_grad()
    (sr_on - base2).backward()  # the JEPA terms cancel: what is left is SIGReg's gradient
    assert encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_data2vec_targets(tmp_path):
    cfg, encoder, _, target = _models(tmp_path)
    clip = torch.randn(2, 3, cfg.data.num_frames, 64, 64)
    one = jepa_targets(target, clip, 1)
    torch.testing.assert_close(one, torch.nn.functional.layer_norm(target(clip), (target.embed_dim,)))
    k = len(target.blocks)
    layers = target.last_layers(clip, k)
    assert len(layers) == k and all(x.shape == one.shape for x in layers)
    manual = torch.stack([torch.nn.functional.layer_norm(x, (x.shape[-1],)) for x in layers]).mean(0)
    torch.testing.assert_close(jepa_targets(target, clip, k), torch.nn.functional.layer_norm(manual, (manual.shape[-1],)))
    assert not torch.allclose(jepa_targets(target, clip, k), one)


def test_variance_hinge_ignores_padding():
    from vjepa.objective import _token_std

    x = torch.randn(3, 7, 5)
    full = torch.ones(3, 7, dtype=torch.bool)
    torch.testing.assert_close(_token_std(x, full), _token_std(x, None))
    padded = torch.cat([x, 100.0 * torch.randn(3, 4, 5)], 1)  # garbage in the padding rows
    valid = torch.cat([full, torch.zeros(3, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(_token_std(padded, valid), _token_std(x, None))


def test_view_term_on_known_cases():
    from vjepa.objective import pooled_views, view_term

    torch.manual_seed(0)
    g = torch.randn(512, 16)
    term, inv, sig = view_term(torch.stack([g, g]), 0.05, 64)  # identical Gaussian views: both parts ~0
    assert inv.item() == 0.0 and sig.item() < 5e-3
    term, inv, sig = view_term(torch.stack([g + 1.0, g - 1.0]), 0.5, 64)  # views 2 apart on every channel
    assert inv.item() == pytest.approx(16.0)  # each view is 1 from the mean on 16 channels
    torch.testing.assert_close(term, 0.5 * inv + 0.5 * sig)
    collapsed = torch.zeros(2, 512, 16)  # invariant but collapsed: SIGReg is what forbids it
    assert view_term(collapsed, 0.05, 64)[2].item() > 0.1
    # pooling respects padding: padded tokens (valid False) do not count
    z = torch.tensor([[[1.0], [3.0], [100.0]]])
    pooled = pooled_views([z, z], [torch.tensor([[True, True, False]]), None])
    torch.testing.assert_close(pooled[:, 0, 0], torch.tensor([2.0, 104.0 / 3]))


def test_view_coeff_adds_the_term_with_gradient_and_needs_two_views(tmp_path):
    from vjepa.objective import pooled_views, view_term

    cfg, _, _, _ = _models(tmp_path)
    two = [short_range_mask(), MaskConfig(num_blocks=2, spatial_scale=(0.5, 0.5))]
    cfg.mask = two
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    clips = torch.randn(8, 3, cfg.data.num_frames, 64, 64)
    batch = MaskCollator(two, encoder.grid, seed=0)([{"clip": c, "label": 0, "seed": i, "step": 0}
                                                      for i, c in enumerate(clips)])
    base, _, extra = jepa_loss(encoder, predictor, target, batch, LossConfig())
    assert "view_inv" not in extra
    torch.manual_seed(3)
    on, _, extra = jepa_loss(encoder, predictor, target, batch, LossConfig(view_coeff=2.0, sigreg_slices=32))
    torch.manual_seed(3)
    term, inv, sig = view_term(pooled_views(encoder(batch["clip"], batch["masks_ctx"]), [None, None]), 0.05, 32)
    torch.testing.assert_close(on, base + 2.0 * term)
    torch.testing.assert_close(extra["view_inv"], inv.detach())
    assert inv.item() > 0  # two different contexts of the same clip pool to different vectors at init
    encoder.zero_grad()
    predictor.zero_grad()
    (on - base.detach()).backward()
    assert encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())
    one = MaskCollator([short_range_mask()], encoder.grid, seed=0)([{"clip": c, "label": 0, "seed": i, "step": 0}
                                                                    for i, c in enumerate(clips)])
    with pytest.raises(ValueError, match="2 mask configs"):
        jepa_loss(encoder, predictor, target, one, LossConfig(view_coeff=1.0))


def test_view_coeff_with_one_mask_config_is_a_config_error(tmp_path):
    from vjepa.engine.config import ConfigError
    from vjepa.pretrain import train

    cfg = tiny_cfg(tmp_path, "loss.view_coeff=1.0")
    cfg.mask = [short_range_mask()]
    with pytest.raises(ConfigError, match="view_coeff"):
        train(cfg, dry_run=True)


def test_view_projector_belongs_to_the_predictor_and_learns(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.crop_size=64", "model.pred_depth=1", "loss.view_coeff=1.0", "loss.view_proj_dim=8")
    cfg.mask = [short_range_mask(), MaskConfig(num_blocks=2, spatial_scale=(0.5, 0.5))]
    encoder, predictor, target = build_models(cfg)
    assert predictor.view_proj[-1].out_features == 8
    assert not any(k.startswith("view_proj") for k in build_models(tiny_cfg(tmp_path))[1].state_dict())  # off: absent
    clips = torch.randn(8, 3, cfg.data.num_frames, 64, 64)
    batch = MaskCollator(cfg.mask, encoder.grid, seed=0)([{"clip": c, "label": 0, "seed": i, "step": 0}
                                                           for i, c in enumerate(clips)])
    loss, _, extra = jepa_loss(encoder, predictor, target, batch, cfg.loss)
    loss.backward()
    assert predictor.view_proj[0].weight.grad.abs().sum() > 0 and extra["view_sigreg"] > 0


def test_next_neighbours_on_a_known_grid():
    from vjepa.objective import next_neighbours

    # grid T, H, W = 2, 3, 3; token 4 = (t 0, y 1, x 1): its whole 3 x 3 neighbourhood at t 1 is 9 ... 17
    idx, ok = next_neighbours(torch.tensor([[4, 0, 13]]), (2, 3, 3))
    assert idx[0, 0].tolist() == list(range(9, 18)) and ok[0, 0].all()
    # token 0 = corner (0, 0, 0): only (dy, dx) in {0, 1}^2 exist, at 9, 10, 12, 13
    assert idx[0, 1][ok[0, 1]].tolist() == [9, 10, 12, 13]
    assert not ok[0, 2].any()  # token 13 is at the last time step: nothing follows
    idx, ok = next_neighbours(torch.tensor([[4, 13]]), (3, 3, 3), steps=2)  # two steps ahead
    assert idx[0, 0].tolist() == list(range(18, 27)) and ok[0, 0].all() and not ok[0, 1].any()


def test_local_coeff_adds_a_per_token_term_with_gradient(tmp_path):
    from vjepa.objective import local_term

    cfg = tiny_cfg(tmp_path, "data.crop_size=64", "model.pred_depth=1", "loss.local_coeff=0.5")
    cfg.mask = [short_range_mask()]
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    batch = tiny_batch(cfg, encoder)
    base, h, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    on, _, extra = jepa_loss(encoder, predictor, target, batch, cfg.loss)
    z = encoder(batch["clip"], batch["masks_ctx"])
    manual = local_term(predictor.local_head, z, batch["masks_ctx"], [None], h, encoder.grid, 1.0)
    torch.testing.assert_close(on, base + 0.5 * manual)
    torch.testing.assert_close(extra["local"], manual.detach())
    encoder.zero_grad()
    (on - base.detach()).backward()
    assert encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert predictor.local_head[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())
    # a head that outputs exactly the next-step neighbourhood has zero loss: the indexing is the target's
    B, K = batch["masks_ctx"][0].shape
    from vjepa.objective import next_neighbours

    idx, ok = next_neighbours(batch["masks_ctx"][0], encoder.grid)
    D = h.shape[-1]
    exact = torch.gather(h, 1, idx.view(B, -1, 1).expand(-1, -1, D)).view(B, K, 9 * D)

    class Oracle(torch.nn.Module):
        def forward(self, zi):
            return exact

    assert local_term(Oracle(), z, batch["masks_ctx"], [None], h, encoder.grid, 1.0).item() == 0.0


def test_pooled_coeff_predicts_targets_from_the_pooled_context_only(tmp_path):
    from vjepa.objective import PooledDecoder, pooled_term, pooled_views

    cfg = tiny_cfg(tmp_path, "data.crop_size=64", "model.pred_depth=1", "loss.pooled_coeff=0.5")
    cfg.mask = [short_range_mask()]
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    dec = predictor.pooled_decoder
    assert dec.pos.num_embeddings == encoder.grid[0] * encoder.grid[1] * encoder.grid[2]
    batch = tiny_batch(cfg, encoder)
    base, h, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    on, _, extra = jepa_loss(encoder, predictor, target, batch, cfg.loss)
    z = encoder(batch["clip"], batch["masks_ctx"])
    manual = pooled_term(dec, pooled_views(z, [None]), batch["masks_tgt"], [None], h, 1.0)
    torch.testing.assert_close(on, base + 0.5 * manual)
    torch.testing.assert_close(extra["pooled"], manual.detach())
    encoder.zero_grad()
    (on - base.detach()).backward()
    assert encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and dec.pos.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())
    # the decoder sees the context only through its mean: permuting context tokens changes nothing
    perm = torch.randperm(z[0].shape[1])
    pooled = pooled_views([z[0][:, perm]], [None])[0]
    torch.testing.assert_close(dec(pooled, batch["masks_tgt"][0]), dec(pooled_views(z, [None])[0], batch["masks_tgt"][0]))
    # and each target from its own position only: same pooled vector + same index -> same prediction
    d = PooledDecoder(4, 10)
    out = d(torch.ones(1, 4), torch.tensor([[3, 3, 5]]))
    torch.testing.assert_close(out[0, 0], out[0, 1])
    assert not torch.allclose(out[0, 0], out[0, 2])


def test_motion_weights_favour_positions_that_change_over_time(tmp_path):
    from vjepa.objective import motion_weights

    T, H, W, D = 4, 2, 2, 3
    h = torch.ones(1, T, H * W, D)
    h[0, :, 3] = torch.arange(T, dtype=torch.float32).view(T, 1)  # only position 3 changes over time
    w = motion_weights(h.view(1, T * H * W, D), (T, H, W), 1.0)
    assert w.shape == (1, T * H * W)
    torch.testing.assert_close(w[0, :4], torch.tensor([0.0, 0.0, 0.0, 4.0]))  # mean 1 over positions
    torch.testing.assert_close(w[0, 4:8], w[0, :4])  # the same weights at every time step
    torch.testing.assert_close(motion_weights(h.view(1, -1, D), (T, H, W), 0.0), torch.ones(1, T * H * W))
    # in the loss: a=0 is the plain loss; a>0 is the weighted mean written out
    cfg, encoder, predictor, target = _models(tmp_path)
    batch = tiny_batch(cfg, encoder)
    base, hh, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    torch.testing.assert_close(jepa_loss(encoder, predictor, target, batch, LossConfig(dynamic_weight=0.0))[0], base)
    on, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig(dynamic_weight=0.5))
    m = batch["masks_tgt"][0]
    pred = predictor(encoder(batch["clip"], batch["masks_ctx"]), batch["masks_ctx"], batch["masks_tgt"])[0]
    err = (pred - gather_tokens(hh, m)).abs().mean(-1)
    wt = torch.gather(motion_weights(hh, encoder.grid, 0.5), 1, m)
    torch.testing.assert_close(on, (err * wt).sum() / wt.sum())


def test_target_diff_predicts_the_change_over_time_and_is_off_at_zero(tmp_path):
    from vjepa.objective import temporal_diff

    T, H, W, D = 3, 1, 2, 2
    h = torch.zeros(1, T, H * W, D)
    h[0, :, 1] = torch.tensor([0.0, 1.0, 3.0]).view(T, 1)  # only position 1 changes: +1, then +2
    d = temporal_diff(h.view(1, -1, D), (T, H, W))
    scale = h.pow(2).mean().sqrt() / torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 2.0]).pow(2).repeat_interleave(2).mean().sqrt()
    want = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0], [2.0, 2.0]]) * scale
    torch.testing.assert_close(d[0], want)  # the last step repeats the one before; RMS matches h's
    cfg, encoder, predictor, target = _models(tmp_path)
    batch = tiny_batch(cfg, encoder)
    base, hh, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    torch.testing.assert_close(jepa_loss(encoder, predictor, target, batch, LossConfig(target_diff=0.0))[0], base)
    on, h_on, _ = jepa_loss(encoder, predictor, target, batch, LossConfig(target_diff=1.0))
    torch.testing.assert_close(h_on, hh)  # the features returned (RankMe, monitor) stay the features
    m = batch["masks_tgt"][0]
    pred = predictor(encoder(batch["clip"], batch["masks_ctx"]), batch["masks_ctx"], batch["masks_tgt"])[0]
    torch.testing.assert_close(on, (pred - gather_tokens(temporal_diff(hh, encoder.grid), m)).abs().mean())
    on.backward()  # the gradient reaches the encoder, never the EMA target
    assert encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())
    with pytest.raises(ValueError, match="target_diff"):
        jepa_loss(encoder, predictor, target, batch, LossConfig(target_diff=1.5))


def test_pixel_targets_follow_the_token_order_and_are_normalised_per_token():
    from vjepa.objective import pixel_targets

    C, T, H, W, t, p = 3, 4, 4, 4, 2, 2  # grid (2, 2, 2): 8 tokens, each 2 x 2 x 2 pixels x 3 channels
    clip = torch.zeros(1, C, T, H, W)
    n = 0
    for ti in range(T // t):  # the encoder's token order: time, then rows, then columns
        for yi in range(H // p):
            for xi in range(W // p):
                clip[0, :, ti * t:(ti + 1) * t, yi * p:(yi + 1) * p, xi * p:(xi + 1) * p] += 10.0 * n  # offset
                dt, dy, dx = n // (p * p), (n // p) % p, n % p  # token n: a spike at its own n-th pixel
                clip[0, 0, ti * t + dt, yi * p + dy, xi * p + dx] += 5.0
                n += 1
    raw = pixel_targets(clip, t, p)[0]
    assert raw.shape == (8, t * p * p * C)
    torch.testing.assert_close(raw.mean(-1), torch.zeros(8), atol=1e-5, rtol=0)  # offsets gone
    torch.testing.assert_close(raw.pow(2).mean(-1), torch.ones(8), atol=1e-4, rtol=0)
    # values run (time, row, column, channel) inside a token: token n's largest is channel 0 of pixel n
    assert raw.argmax(-1).tolist() == [k * C for k in range(8)]
    assert (raw.max(-1).values > raw.sort(-1).values[:, -2] + 1).all()  # one spike, nothing smeared


def test_pixel_coeff_adds_a_pixel_term_with_gradient_and_feature_coeff_weights_the_jepa_term(tmp_path):
    from vjepa.objective import pixel_targets

    cfg, encoder, predictor, target = _models(tmp_path)
    assert not hasattr(predictor, "pixel_head")  # off by default: no head, no parameters
    batch = tiny_batch(cfg, encoder)
    base, _, extra = jepa_loss(encoder, predictor, target, batch, LossConfig())
    assert extra == {}
    cfg.loss = LossConfig(pixel_coeff=0.5)
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    head = predictor.pixel_head
    assert head.out_features == cfg.data.tubelet_size * cfg.data.patch_size ** 2 * 3
    on, _, extra = jepa_loss(encoder, predictor, target, batch, cfg.loss)
    torch.testing.assert_close(on, base + 0.5 * extra["pixel"])  # same seed: the JEPA term is unchanged
    m = batch["masks_tgt"][0]
    pred = predictor(encoder(batch["clip"], batch["masks_ctx"]), batch["masks_ctx"], batch["masks_tgt"])[0]
    want = (head(pred) - gather_tokens(pixel_targets(batch["clip"], encoder.tubelet_size, encoder.patch_size), m))
    torch.testing.assert_close(extra["pixel"], want.pow(2).mean())
    only, _, extra = jepa_loss(encoder, predictor, target, batch, LossConfig(feature_coeff=0.0, pixel_coeff=1.0))
    torch.testing.assert_close(only, extra["pixel"])  # pixel targets alone
    torch.testing.assert_close(extra["feature"], base)  # the JEPA term is still logged
    only.backward()  # pixels alone train the encoder (through the predictor), never the EMA target
    assert encoder.patch_embed.proj.weight.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())


@pytest.mark.parametrize("feature, pixel", [(0.0, 0.0), (-1.0, 1.0), (1.0, -0.5)])
def test_feature_and_pixel_coeff_must_leave_something_to_predict(tmp_path, feature, pixel):
    from vjepa.engine.config import ConfigError
    from vjepa.pretrain import train

    cfg = tiny_cfg(tmp_path, f"loss.feature_coeff={feature}", f"loss.pixel_coeff={pixel}")
    with pytest.raises(ConfigError, match="feature_coeff"):
        train(cfg)


def test_feature_coeff_zero_is_allowed_when_another_term_predicts():
    from vjepa.pretrain import check_targets

    check_targets(LossConfig(feature_coeff=0.0, pooled_coeff=1.0))  # the pooled term alone: no error
    check_targets(LossConfig(feature_coeff=0.0, pixel_coeff=1.0))
    check_targets(LossConfig())


def test_reverse_term_on_known_cases():
    from vjepa.objective import reverse_term

    torch.manual_seed(0)
    a = torch.randn(64, 8)
    assert reverse_term(a, -a).item() == 0.0
    assert reverse_term(a, a).item() == pytest.approx(2.0)
    assert reverse_term(a, torch.randn(64, 8)).item() == pytest.approx(1.0, abs=0.25)
    assert reverse_term(10 * a, -10 * a + 0.1).item() == pytest.approx(reverse_term(a, -a + 0.01).item(), rel=1e-4)


def test_reverse_term_sqrt_form_known_cases_and_gradient_at_the_start():
    from vjepa.objective import reverse_term

    torch.manual_seed(0)
    a = torch.randn(64, 8)
    r2 = 2.0**0.5
    assert reverse_term(a, -a, "sqrt").item() == pytest.approx(0.0, abs=1e-6)
    assert reverse_term(a, a, "sqrt").item() == pytest.approx(r2, abs=1e-5)
    u, v = torch.zeros(1, 2), torch.zeros(1, 2)
    u[0, 0], v[0, 1] = 1.0, 1.0  # orthogonal, equal norms: the ratio form reads 1
    assert reverse_term(u, v, "sqrt").item() == pytest.approx(r2 - 1.0)
    # what a random encoder starts from: the two pooled vectors nearly equal. The ratio form is flat there
    # (gradient ~ |a - b|), the sqrt form is not (gradient ~ 1 / |a|, whatever |a - b|).
    grads = {}
    for form in ("ratio", "sqrt"):
        x = a.clone().requires_grad_(True)
        reverse_term(x, a + 1e-4 * torch.randn(64, 8), form).backward()
        grads[form] = x.grad.norm().item()
    assert grads["ratio"] < 1e-4 and grads["sqrt"] > 1e-2
    x = a.clone().requires_grad_(True)  # exactly equal (a batch of still clips): finite, no NaN
    reverse_term(x, a.clone(), "sqrt").backward()
    assert torch.isfinite(x.grad).all()


def test_reverse_form_is_passed_to_the_term_and_checked(tmp_path):
    from vjepa.engine.config import ConfigError
    from vjepa.objective import reverse_term
    from vjepa.pretrain import train

    cfg, encoder, predictor, target = _models(tmp_path)
    batch = tiny_batch(cfg, encoder)
    _, _, extra = jepa_loss(encoder, predictor, target, batch,
                            LossConfig(reverse_coeff=1.0, reverse_dims=8, reverse_form="sqrt"))
    clip = batch["clip"]
    want = reverse_term(encoder(clip).mean(1)[:, :8], encoder(clip.flip(2)).mean(1)[:, :8], "sqrt")
    torch.testing.assert_close(extra["reverse"], want)
    with pytest.raises(ConfigError, match="reverse_form"):
        train(tiny_cfg(tmp_path, "loss.reverse_coeff=1.0", "loss.reverse_form=root"), dry_run=True)


def test_reverse_coeff_adds_the_term_with_gradient_through_both_passes(tmp_path):
    cfg, encoder, predictor, target = _models(tmp_path)
    batch = tiny_batch(cfg, encoder)
    base, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    on, _, extra = jepa_loss(encoder, predictor, target, batch, LossConfig(reverse_coeff=0.5, reverse_dims=8))
    torch.testing.assert_close(on, base + 0.5 * extra["reverse"])
    from vjepa.objective import reverse_term

    clip = batch["clip"]  # the whole clip and the clip played backwards, pooled, first 8 channels
    want = reverse_term(encoder(clip).mean(1)[:, :8], encoder(clip.flip(2)).mean(1)[:, :8])
    torch.testing.assert_close(extra["reverse"], want)
    still = torch.zeros_like(clip[:, :, :1]).expand_as(clip) + clip[:, :, :1]  # a clip that does not move
    assert reverse_term(encoder(still).mean(1), encoder(still.flip(2)).mean(1)).item() == pytest.approx(2.0)
    encoder.zero_grad()
    (on - base.detach()).backward()  # the term alone reaches the encoder, never the EMA target
    g = encoder.patch_embed.proj.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())


@pytest.mark.parametrize("dims", [-1, 10_000])
def test_reverse_dims_outside_the_encoder_width_is_a_config_error(tmp_path, dims):
    from vjepa.engine.config import ConfigError
    from vjepa.pretrain import train

    cfg = tiny_cfg(tmp_path, "loss.reverse_coeff=1.0", f"loss.reverse_dims={dims}")
    with pytest.raises(ConfigError, match="reverse_dims"):
        train(cfg, dry_run=True)
    train(tiny_cfg(tmp_path, "loss.reverse_coeff=0.0", f"loss.reverse_dims={dims}"), dry_run=True)  # term off: unused


def test_reverse_pool_time_scores_each_patch_position_over_time(tmp_path):
    from vjepa.engine.config import ConfigError
    from vjepa.objective import reverse_term
    from vjepa.pretrain import train

    cfg, encoder, predictor, target = _models(tmp_path)
    batch = tiny_batch(cfg, encoder)
    base, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
    on, _, extra = jepa_loss(encoder, predictor, target, batch,
                             LossConfig(reverse_coeff=1.0, reverse_dims=8, reverse_pool="time"))
    torch.testing.assert_close(on, base + extra["reverse"])
    T, H, W = encoder.grid
    clip = batch["clip"]

    def per_position(x):  # [B, N, D] tokens (t-major) -> [B, H*W, 8]: each position's mean over time
        return encoder(x)[..., :8].view(len(x), T, H * W, 8).mean(1)

    want = reverse_term(per_position(clip).flatten(1), per_position(clip.flip(2)).flatten(1))
    torch.testing.assert_close(extra["reverse"], want)
    clip_pooled = reverse_term(encoder(clip).mean(1)[:, :8], encoder(clip.flip(2)).mean(1)[:, :8])
    assert abs(extra["reverse"].item() - clip_pooled.item()) > 1e-4  # not the clip-pooled term
    with pytest.raises(ConfigError, match="reverse_pool"):
        train(tiny_cfg(tmp_path, "loss.reverse_coeff=1.0", "loss.reverse_pool=space"), dry_run=True)
