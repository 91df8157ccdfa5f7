"""I-JEPA: 2-D multi-block masks, image data, reference configs, official-layout checkpoints, the objective."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ROOT
from data.ijepa_masks import IJEPAMaskCollator, IJEPAMaskConfig, MultiBlock2D
from data.images import DigitsImages, ImageDataConfig, ImageTransform, build_image_dataset, digits_split
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import load_config, read_yaml
from vjepa.ijepa import IJEPAConfig, build_models, ijepa_loss
from vjepa.image_vit import ImageViT, build_image_models
from vjepa.engine.optim import ema_update, param_groups
from tests.videos import write_image

REFERENCE_YAML = ROOT / "configs" / "ijepa" / "in1k_vith14_ep300.yaml"


def _generator(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _box(idx: torch.Tensor, w: int):
    """(rows, cols) spanned by flat indices on a width-w grid, and whether they fill that box exactly."""
    r, c = idx // w, idx % w
    rows, cols = int(r.max() - r.min() + 1), int(c.max() - c.min() + 1)
    return rows, cols, rows * cols == len(idx)


# ------------------------------------------------------------------------------------------------ masks
def test_four_targets_are_blocks_within_scale_and_aspect_bounds():
    cfg = IJEPAMaskConfig()  # published: 4 targets, scale 0.15-0.2, aspect 0.75-1.5
    h = w = 32
    gen = MultiBlock2D(cfg, (h, w))
    for step in range(40):
        sizes = gen.sample_sizes(_generator(step))
        contexts, targets = gen(sizes, _generator(1000 + step))
        assert len(targets) == 4 and len(contexts) == 1
        for t in targets:
            rows, cols, full = _box(t, w)
            assert full and (rows, cols) == sizes[0]
            # rounding the block sides to whole patches moves the area by at most ~(rows + cols) / 2 patches
            slack = (rows + cols) / 2 / (h * w)
            assert 0.15 - slack <= rows * cols / (h * w) <= 0.2 + slack
            assert 0.75 * (1 - 1 / cols) - 0.05 <= rows / cols <= 1.5 * (1 + 1 / cols) + 0.05


def test_context_block_within_scale_and_all_target_patches_removed():
    h = w = 32
    for step in range(40):
        over = MultiBlock2D(IJEPAMaskConfig(allow_overlap=True), (h, w))
        excl = MultiBlock2D(IJEPAMaskConfig(allow_overlap=False), (h, w))
        sizes = over.sample_sizes(_generator(step))
        (block,), targets = over(sizes, _generator(step + 7))  # with overlap allowed the context is the block
        (ctx,), targets2 = excl(sizes, _generator(step + 7))  # same draws: same targets, same first block
        rows, cols, full = _box(block, w)
        assert full and rows == cols  # a square block
        assert 0.85 - (2 * rows) / (h * w) <= len(block) / (h * w) <= 1.0
        assert all(torch.equal(a, b) for a, b in zip(targets, targets2))
        tgt = set(torch.cat(targets).tolist())
        assert not set(ctx.tolist()) & tgt
        assert set(ctx.tolist()) == set(block.tolist()) - tgt  # exactly the block minus the targets
        assert torch.equal(ctx, ctx.sort().values)


def test_collated_masks_are_reproducible_from_seed_step_and_sample():
    cfg = IJEPAMaskConfig(patch_size=16)
    samples = [{"clip": torch.zeros(3, 4, 4), "label": 0, "seed": 100 + i, "step": 5} for i in range(6)]
    a = IJEPAMaskCollator(cfg, (14, 14), seed=3)(samples)
    b = IJEPAMaskCollator(cfg, (14, 14), seed=3)(samples)
    assert len(a["masks_tgt"]) == 4 and len(a["masks_ctx"]) == 1
    assert len({m.shape for m in a["masks_tgt"]}) == 1  # one length for all target blocks
    for x, y in zip(a["masks_ctx"] + a["masks_tgt"], b["masks_ctx"] + b["masks_tgt"]):
        assert x.dtype == torch.int64 and x.shape[0] == 6 and torch.equal(x, y)
    # a sample's masks depend on its own seed, not on its position in the batch (as long as lengths agree)
    c = IJEPAMaskCollator(cfg, (14, 14), seed=3)([dict(s, step=6) for s in samples])
    assert not all(torch.equal(x, y) for x, y in zip(a["masks_tgt"], c["masks_tgt"]))
    d = IJEPAMaskCollator(cfg, (14, 14), seed=4)(samples)
    assert not all(torch.equal(x, y) for x, y in zip(a["masks_tgt"], d["masks_tgt"]))
    for b_ in range(6):  # context and targets stay disjoint after the lengths are equalised
        assert not set(a["masks_ctx"][0][b_].tolist()) & set(torch.cat([m[b_] for m in a["masks_tgt"]]).tolist())


def test_min_keep_is_honoured_and_relaxed_as_the_reference():
    # a context block of 0.4-0.5 of an 8x8 grid under four large targets often keeps <= 12 patches: the
    # generator must then let target regions back in rather than return a too-small context
    cfg = IJEPAMaskConfig(enc_mask_scale=[0.4, 0.5], pred_mask_scale=[0.25, 0.3], min_keep=12)
    gen = MultiBlock2D(cfg, (8, 8))
    for step in range(30):
        contexts, targets = gen(gen.sample_sizes(_generator(step)), _generator(50 + step))
        assert all(len(m) > 12 for m in contexts + targets)
    with pytest.raises(ValueError, match="min_keep"):  # a target block can never keep more than min_keep
        MultiBlock2D(IJEPAMaskConfig(min_keep=20), (8, 8))


# ------------------------------------------------------------------------------------------------ data
def test_image_folder_skips_and_counts_a_bad_image(tmp_path):
    root = tmp_path / "imgs"
    write_image(root / "cat" / "1.png")
    write_image(root / "cat" / "2.png", value=40)
    write_image(root / "dog" / "3.png", value=200)
    (root / "dog" / "4.png").write_text("not an image")
    ds = build_image_dataset(ImageDataConfig(datasets=[str(root)], crop_size=16, use_horizontal_flip=True), train=True)
    assert len(ds) == 4 and ds.num_classes == 2
    good = ds[0]
    assert good["clip"].shape == (3, 16, 16) and good["clip"].dtype == torch.float32 and good["skipped"] == 0
    torch.manual_seed(0)
    bad = ds[3]  # broken: replaced by a random good image, and counted
    assert bad["skipped"] == 1 and bad["clip"].shape == (3, 16, 16)


def test_random_resized_crop_follows_the_torch_seed():
    img = torch.randint(0, 255, (1, 40, 30, 3), dtype=torch.uint8)
    tf = ImageTransform(ImageDataConfig(crop_size=16, use_color_distortion=True, color_jitter_strength=0.5,
                                        use_gaussian_blur=True))
    torch.manual_seed(1)
    a = tf(img)
    torch.manual_seed(1)
    assert torch.equal(a, tf(img))
    assert not torch.equal(a, tf(img))
    with pytest.raises(ValueError, match="crop_scale"):
        ImageTransform(ImageDataConfig(crop_scale=[0.0, 1.0]))


def test_digits_split_is_fixed_and_disjoint():
    tr, va = digits_split(1797)
    assert len(tr) + len(va) == 1797 and not set(tr.tolist()) & set(va.tolist())
    ds = DigitsImages(24, "val", ImageTransform(ImageDataConfig(crop_size=24), train=False))
    s = ds[0]
    assert len(ds) == len(va) and s["clip"].shape == (3, 24, 24) and 0 <= s["label"] < 10
    with pytest.raises(ValueError, match="exclusive"):
        build_image_dataset(ImageDataConfig(builtin="digits", datasets=["/somewhere"]))


# ---------------------------------------------------------------------------------------- reference configs
def test_reference_yaml_is_recognised_and_loads_strictly():
    from train import pick_task

    raw = read_yaml(REFERENCE_YAML)
    assert "task" not in raw and pick_task(raw, []) == "ijepa"
    cfg = load_config(IJEPAConfig, raw=raw)
    assert (cfg.meta.model_name, cfg.mask.patch_size, cfg.data.crop_size) == ("vit_huge", 14, 224)
    assert cfg.mask.num_pred_masks == 4 and cfg.mask.enc_mask_scale == [0.85, 1.0] and cfg.meta.dtype == "bfloat16"
    with torch.device("meta"):  # ViT-H/14 without allocating it
        enc, pred = build_image_models("vit_huge", 224, 14, cfg.meta.pred_depth, cfg.meta.pred_emb_dim)
    n = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert 625e6 < n < 635e6 and enc.grid == (1, 16, 16)
    from vjepa.engine.config import ConfigError

    with pytest.raises(ConfigError, match="enc_mask_scal"):
        load_config(IJEPAConfig, raw=raw, overrides=["mask.enc_mask_scal=[0.8,1.0]"])


def test_keys_ijepa_mode_does_not_honour_are_refused_and_copy_data_is_dropped(caplog):
    from vjepa.engine.config import ConfigError

    raw = read_yaml(REFERENCE_YAML)
    for override in ("logging.knn_monitor=true", "meta.eval_freq=5", "meta.dtype=float32", "model.model_name=vit_tiny"):
        with pytest.raises(ConfigError, match="unknown config key .* valid keys"):
            load_config(IJEPAConfig, raw=raw, overrides=[override])
    for value in (False, True):  # the reference's copy to local disk: nothing a run computes depends on it
        raw["meta"]["copy_data"] = value
        with caplog.at_level("INFO", logger="vjepa.engine.config"):
            cfg = load_config(IJEPAConfig, raw=raw)
        assert not hasattr(cfg.meta, "copy_data") and "ignoring reference key 'meta.copy_data'" in caplog.text


@pytest.mark.slow
def test_reference_yaml_dry_run_prints_the_vith14_parameter_count():
    out = subprocess.run([sys.executable, "train.py", "--config", str(REFERENCE_YAML), "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "encoder vit_huge/14 at 224px: 630.4M trainable params" in out.stdout


# ------------------------------------------------------------------------------ official-layout checkpoint
def _reference_table(dim: int, side: int) -> np.ndarray:
    # written from I-JEPA's get_2d_sincos_pos_embed: meshgrid(w, h) and the "h" half built from grid[0]
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=float), np.arange(side, dtype=float)), axis=0)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


class _RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class _RefMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _RefBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _RefAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _RefMLP(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _RefViT(nn.Module):
    """A minimal I-JEPA-style encoder (Conv2d patches, fixed 2-D table, pre-norm blocks, final norm)."""

    def __init__(self, img=32, patch=8, dim=64, depth=2, heads=4):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        table = torch.from_numpy(_reference_table(dim, img // patch)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.blocks = nn.ModuleList(_RefBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, mask=None):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        if mask is not None:
            x = torch.gather(x, 1, mask.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def test_official_ijepa_checkpoint_loads_strictly_with_the_reference_features(tmp_path):
    import vjepa

    torch.manual_seed(0)
    ref = _RefViT().eval()
    for p in ref.parameters():  # random weights everywhere, norms and biases included (not the fixed table)
        if p.requires_grad:
            p.data.normal_(0, 0.2)
    prefixed = {f"module.{k}": v for k, v in ref.state_dict().items()}
    path = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    torch.save({"encoder": prefixed, "predictor": {"module.mask_token": torch.zeros(1, 1, 8)},
                "target_encoder": prefixed, "epoch": 300}, path)
    enc = vjepa.load_encoder(path, num_heads=4)
    assert isinstance(enc, ImageViT) and enc.grid == (1, 4, 4) and not any(p.requires_grad for p in enc.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), atol=1e-5, rtol=0)
        mask = torch.tensor([[0, 3, 5, 9, 15], [1, 2, 4, 8, 12]])
        torch.testing.assert_close(enc(x, mask), ref(x, mask), atol=1e-5, rtol=0)
    # a fresh encoder here is built with the reference's table layout
    fresh = ImageViT(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4)
    torch.testing.assert_close(fresh.pos_embed, ref.pos_embed)
    # strict: a missing key is an error, not a partial load
    broken = dict(prefixed)
    broken.pop("module.norm.weight")
    torch.save({"target_encoder": broken}, tmp_path / "broken.pth.tar")
    with pytest.raises(ckpt.CheckpointMismatch, match="norm.weight"):
        vjepa.load_encoder(tmp_path / "broken.pth.tar", num_heads=4)


# ------------------------------------------------------------------------------------------------ training
def _tiny_cfg(tmp_path, *overrides):
    return load_config(IJEPAConfig, raw={
        "data": {"builtin": "digits", "crop_size": 16, "batch_size": 8, "num_workers": 0},
        "mask": {"patch_size": 4, "min_keep": 1},
        "meta": {"model_name": "vit_micro", "pred_depth": 1, "pred_emb_dim": 48, "seed": 0, "save_every_freq": 1},
        "optimization": {"ipe": 3, "epochs": 2, "warmup": 1},
        "logging": {"folder": str(tmp_path), "log_every": 1, "rankme_every": 0, "tensorboard": False,
                    "progress_bar": False},
    }, overrides=list(overrides))


@pytest.mark.parametrize("loss_type", ["smooth_l1", "l2"])
def test_loss_falls_on_a_fixed_batch(tmp_path, loss_type):
    cfg = _tiny_cfg(tmp_path, "data.crop_size=32", "mask.min_keep=4")
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    coll = IJEPAMaskCollator(cfg.mask, encoder.grid[1:], seed=0)
    imgs = torch.randn(4, 3, 32, 32)
    batch = coll([{"clip": x, "label": 0, "seed": i, "step": 0} for i, x in enumerate(imgs)])
    opt = torch.optim.AdamW(param_groups(encoder, predictor), lr=1e-3)
    losses = []
    for _ in range(25):
        loss, h = ijepa_loss(encoder, predictor, target, batch, loss_type)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(target, encoder, 0.99)
        losses.append(loss.item())
    assert all(p.grad is None for p in target.parameters())
    assert h.shape == (4, 64, encoder.embed_dim) and math.isfinite(losses[-1])
    assert losses[-1] < 0.7 * losses[0], losses


def test_bad_loss_type_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="loss.type"):
        build_models(_tiny_cfg(tmp_path, "loss.type=l3"))


def test_ijepa_run_resumes_exactly(tmp_path):
    from vjepa.ijepa import train

    train(_tiny_cfg(tmp_path / "full"))
    train(_tiny_cfg(tmp_path / "half", "meta.max_steps=3"))
    train(_tiny_cfg(tmp_path / "half", "meta.load_checkpoint=true"))
    a, b = ckpt.load(tmp_path / "full" / "jepa-latest.pt"), ckpt.load(tmp_path / "half" / "jepa-latest.pt")
    assert a["step"] == b["step"] == 6
    assert a["target_checksums"].shape == (1, 2)  # saved through the engine's save_checkpoint
    for key in ("encoder", "predictor", "target_encoder"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert (tmp_path / "full" / "metrics.csv").is_file()


def test_ipe_left_unset_is_one_pass_over_the_images(tmp_path):
    # the quickstart leaves optimization.ipe unset: the schedule checks must wait for the dataset to size it
    from vjepa.ijepa import train

    cfg = _tiny_cfg(tmp_path / "run", "optimization.ipe=null", "meta.max_steps=2")
    assert cfg.optimization.ipe is None
    train(cfg)
    assert cfg.optimization.ipe == len(digits_split(1797)[0]) // 8  # 1,258 training digits, batch 8
    assert ckpt.load(tmp_path / "run" / "jepa-latest.pt")["step"] == 2
