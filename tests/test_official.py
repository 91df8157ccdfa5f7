"""Loading encoders from official-layout checkpoints: identical features, strictness, geometry.

`reference_forward` re-derives the reference V-JEPA ViT forward from its published definition with
plain tensor ops on the state dict (Conv3d tubelets, + stored sin-cos table, pre-norm blocks with
LayerNorm eps 1e-6 and a biased qkv, explicit softmax attention, GELU MLP, final LayerNorm, no CLS
token), so the loaded module is checked against the reference's arithmetic, not only against itself.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vjepa.engine.checkpoint import CheckpointMismatch
from vjepa.models import VisionTransformer
from vjepa.official import load_encoder, random_encoder_like, strip_prefixes
from vjepa.pos_embed import sincos_3d

GEOM = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2)


def _encoder(use_rope=False, seed=0, **kw):
    torch.manual_seed(seed)
    enc = VisionTransformer(**{**GEOM, **kw}, embed_dim=48, depth=2, num_heads=4, use_rope=use_rope)
    with torch.no_grad():  # non-trivial norms and biases, so a wrong eps or a dropped bias shows
        for n, p in enc.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return enc.eval()


def _official_layout(enc):
    wrapped = {f"module.backbone.{k}": v.clone() for k, v in enc.state_dict().items()}
    return {"encoder": wrapped, "predictor": {"module.backbone.predictor_embed.weight": torch.zeros(1)},
            "target_encoder": wrapped, "epoch": 300, "opt": {}}


def reference_forward(state, x, num_heads, patch, tubelet):
    x = F.conv3d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=(tubelet, patch, patch))
    x = x.flatten(2).transpose(1, 2) + state["pos_embed"]  # [B, N, D], no CLS token
    B, N, D = x.shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    ln = lambda t, name: F.layer_norm(t, (D,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)
    for i in range(depth):
        p = f"blocks.{i}."
        h = ln(x, p + "norm1")
        qkv = (h @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]).reshape(B, N, 3, num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(D // num_heads)).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(B, N, D)
        x = x + h @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
        h = ln(x, p + "norm2")
        h = F.gelu(h @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"])
        x = x + h @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"]
    return ln(x, "norm")


def reference_sincos_3d(dim, t, h, w, uniform_power):
    """The reference table, from its definition: (time, height, width) blocks of (sin | cos) features."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    dt, dh = (2 * math.ceil(dim / 6),) * 2 if uniform_power else (dim // 2, dim // 4)
    gt, gh, gw = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    emb = np.concatenate([one(dt, gt.ravel()), one(dh, gh.ravel()), one(dh, gw.ravel())], axis=1)
    return torch.from_numpy(emb[:, :dim]).float()


@pytest.mark.parametrize("uniform_power", [True, False])
def test_sincos_table_matches_the_reference_layout(uniform_power):
    ours = sincos_3d(96, 3, 4, 5, uniform_power=uniform_power)
    assert torch.allclose(ours, reference_sincos_3d(96, 3, 4, 5, uniform_power), atol=1e-6)


def test_official_checkpoint_gives_identical_features(tmp_path):
    src = _encoder()
    path = tmp_path / "vitl16.pth.tar"
    torch.save(_official_layout(src), path)
    enc = load_encoder(path, num_heads=4, num_frames=4)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert enc.grid == src.grid and enc.num_heads == 4
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ours = enc(x)
        assert torch.equal(ours, src(x))
        ref = reference_forward(strip_prefixes(_official_layout(src)["target_encoder"]), x, 4, 8, 2)
    assert ours.shape == (2, 2 * 4 * 4, 48)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_rope_checkpoint_without_pos_embed_loads(tmp_path):
    src = _encoder(use_rope=True)
    assert "pos_embed" not in src.state_dict()
    path = tmp_path / "vjepa2.pt"
    torch.save(_official_layout(src), path)
    enc = load_encoder(path, num_heads=4, num_frames=4)
    assert enc.use_rope
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), src(x))


def test_project_checkpoint_and_key_choice(tmp_path):
    online, target = _encoder(seed=1), _encoder(seed=2)
    path = tmp_path / "jepa-latest.pt"
    config = {"data": {"crop_size": 32, "num_frames": 4}, "model": {"model_name": None, "uniform_power": True}}
    torch.save({"encoder": online.state_dict(), "target_encoder": target.state_dict(), "config": config}, path)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_encoder(path, num_heads=4)(x), target(x))
        assert torch.equal(load_encoder(path, key="encoder", num_heads=4)(x), online(x))
    with pytest.raises(KeyError, match="top-level keys"):
        load_encoder(path, key="ema", num_heads=4, num_frames=4)


def test_partial_or_mismatched_loads_raise(tmp_path):
    ck = _official_layout(_encoder())
    missing = dict(ck, target_encoder={k: v for k, v in ck["target_encoder"].items() if "blocks.1.mlp.fc2.bias" not in k})
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointMismatch, match="blocks.1.mlp.fc2.bias"):
        load_encoder(tmp_path / "missing.pt", num_heads=4, num_frames=4)
    extra = dict(ck, target_encoder={**ck["target_encoder"], "module.backbone.head.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointMismatch, match="head.weight"):
        load_encoder(tmp_path / "extra.pt", num_heads=4, num_frames=4)
    torch.save(ck, tmp_path / "ok.pt")
    with pytest.raises(CheckpointMismatch, match="model_name vit_small"):
        load_encoder(tmp_path / "ok.pt", model_name="vit_small")
    with pytest.raises(CheckpointMismatch, match="patch_size"):
        load_encoder(tmp_path / "ok.pt", num_heads=4, patch_size=16)
    with pytest.raises(ValueError, match="num_heads"):
        load_encoder(tmp_path / "ok.pt", num_frames=4)  # a 48-wide encoder is no reference size


def test_reference_sizes_give_heads_and_grid(tmp_path):
    with torch.device("meta"):
        enc = VisionTransformer(img_size=384, num_frames=16, patch_size=16, tubelet_size=2, embed_dim=1280,
                                depth=32, num_heads=16)
    state = {f"module.backbone.{k}": torch.empty(v.shape, dtype=v.dtype) for k, v in enc.state_dict().items()}
    from vjepa.official import infer_geometry

    g = infer_geometry(strip_prefixes(state))
    assert (g["num_heads"], g["img_size"], g["num_frames"], g["mlp_ratio"]) == (16, 384, 16, 4.0)
    # Asked for 224px clips, the ViT-H/16-384 table still fixes the 384 grid (forward resizes it).
    assert infer_geometry(strip_prefixes(state), img_size=224, num_frames=16)["img_size"] == 384


def test_random_encoder_like_keeps_geometry_and_differs(tmp_path):
    src = _encoder(seed=5)
    torch.save(_official_layout(src), tmp_path / "ck.pt")
    a = random_encoder_like(tmp_path / "ck.pt", seed=0, num_heads=4, num_frames=4)
    b = random_encoder_like(tmp_path / "ck.pt", seed=0, num_heads=4, num_frames=4)
    assert a.grid == src.grid and a.embed_dim == 48
    assert torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)  # seeded
    assert not torch.equal(a.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def reference_vjepa2_rotate(x, pos):
    """V-JEPA 2's released RoPE rotation, from its definition: pairs (x[2i], x[2i+1]) rotated, with the
    frequency table laid out as [w_0 .. w_{d/2-1}, w_0 .. w_{d/2-1}] (concatenated, not interleaved).
    The released weights were trained with this layout, so features only match with it."""
    d = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d / 2.0))
    freq = pos.float()[..., None] * omega
    sin, cos = torch.cat([freq.sin(), freq.sin()], -1), torch.cat([freq.cos(), freq.cos()], -1)
    pairs = x.unflatten(-1, (-1, 2))
    rot = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
    return x * cos + rot * sin


def test_rope_rotation_matches_vjepa2():
    from vjepa.pos_embed import rope_rotate

    x, pos = torch.randn(2, 3, 5, 8), torch.arange(5).expand(2, 3, 5)
    assert torch.allclose(rope_rotate(x, pos), reference_vjepa2_rotate(x, pos), atol=1e-6)


def test_package_level_load_encoder_and_its_docstring_example_runs():
    import doctest

    import vjepa
    from vjepa import official

    assert vjepa.load_encoder is official.load_encoder
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(vjepa.load_encoder, "load_encoder", globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 8 and result.failed == 0
