import math

import pytest
import torch

from vjepa.models import VIT_SIZES, ModelConfig, Predictor, VisionTransformer, build_encoder, build_predictor, gather_tokens
from vjepa.pos_embed import apply_rope_3d, resize_pos_embed, sincos_1d, sincos_3d


def tiny_vit(**overrides):
    kw = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=48, depth=2, num_heads=3)
    kw.update(overrides)
    return VisionTransformer(**kw)


@pytest.mark.parametrize("name", ["vit_micro", "vit_tiny", "vit_small"])
def test_small_sizes_forward_backward(name):
    enc = build_encoder(ModelConfig(model_name=name), img_size=32, num_frames=4, patch_size=16, tubelet_size=2)
    pred = build_predictor(ModelConfig(model_name=name, pred_depth=2, pred_embed_dim=96), enc, num_mask_tokens=2)
    x = torch.randn(2, 3, 4, 32, 32)
    ctx = torch.tensor([[0, 1, 2], [4, 5, 6]])
    tgt = torch.tensor([[3, 7], [0, 1]])
    out = pred(enc(x, ctx), ctx, tgt, mask_index=1)
    assert out.shape == (2, 2, enc.embed_dim)
    out.square().mean().backward()
    grads = [p.grad for p in list(enc.parameters()) + list(pred.parameters()) if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert enc.patch_embed.proj.weight.grad.abs().sum() > 0
    assert pred.mask_tokens[1].grad.abs().sum() > 0 and pred.mask_tokens[0].grad is None


@pytest.mark.parametrize("name,expected_m", [("vit_large", 303.9), ("vit_huge", 630.8), ("vit_giant", 1011.6)])
def test_large_sizes_build_on_meta_device(name, expected_m):
    with torch.device("meta"):
        enc = build_encoder(ModelConfig(model_name=name), img_size=224, num_frames=16, patch_size=16, tubelet_size=2)
    n = sum(p.numel() for p in enc.parameters() if p.requires_grad) / 1e6
    assert abs(n - expected_m) / expected_m < 0.01, n
    size = VIT_SIZES[name]
    assert (enc.embed_dim, len(enc.blocks)) == (size.embed_dim, size.depth)
    assert enc.grid == (8, 14, 14)


def test_unknown_size_is_an_error():
    with pytest.raises(ValueError, match="vit_large"):
        build_encoder(ModelConfig(model_name="vit_enormous"), img_size=32, num_frames=4, patch_size=16, tubelet_size=2)


def test_masked_forward_keeps_named_tokens():
    enc = tiny_vit().eval()
    x = torch.randn(2, 3, 4, 32, 32)
    idx = torch.tensor([[0, 5, 9], [1, 2, 31]])
    out = enc(x, idx)
    assert out.shape == (2, 3, 48)
    outs = enc(x, [idx, idx[:, :2]])
    assert [o.shape[1] for o in outs] == [3, 2]
    torch.testing.assert_close(outs[0], out)
    # A single kept token sees only itself: equal to running the blocks on that token's embedding alone.
    one = enc(x, idx[:, :1])
    tokens = enc.patch_embed.proj(x).flatten(2).transpose(1, 2) + enc.pos_embed
    alone = enc.norm(enc.blocks[1](enc.blocks[0](gather_tokens(tokens, idx[:, :1]))))
    torch.testing.assert_close(one, alone)


def test_image_is_a_clip_of_one_repeated_tubelet():
    enc = tiny_vit().eval()
    img = torch.randn(2, 3, 32, 32)
    clip = img.unsqueeze(2).repeat(1, 1, 2, 1, 1)
    torch.testing.assert_close(enc(img), enc(clip))
    assert enc(img).shape == (2, 16, 48)


def test_other_clip_sizes_resize_the_position_table():
    enc = tiny_vit().eval()
    assert enc(torch.randn(1, 3, 8, 48, 48)).shape == (1, 4 * 6 * 6, 48)
    table = enc.pos_embed
    assert resize_pos_embed(table, enc.grid, enc.grid) is table


def test_sincos_table_layout():
    # (t, h, w) flattening with w fastest; the t block comes first, then h, then w (reference layout).
    dim = 24
    table = sincos_3d(dim, 2, 3, 4, uniform_power=False)
    assert table.shape == (24, dim)
    dt, dh = dim // 2, dim // 4
    t_part, h_part, w_part = table[:, :dt], table[:, dt:dt + dh], table[:, dt + dh:]
    tok = lambda t, h, w: (t * 3 + h) * 4 + w
    assert torch.equal(t_part[tok(1, 0, 0)], t_part[tok(1, 2, 3)])  # same t -> same t block
    assert torch.equal(h_part[tok(0, 2, 0)], h_part[tok(1, 2, 3)])
    assert torch.equal(w_part[tok(0, 0, 3)], w_part[tok(1, 2, 3)])
    # position 0 encodes as sin(0) = 0 then cos(0) = 1
    assert torch.equal(table[0, : dt // 2], torch.zeros(dt // 2)) and torch.equal(table[0, dt // 2: dt], torch.ones(dt // 2))
    uniform = sincos_3d(30, 2, 3, 4, uniform_power=True)
    assert uniform.shape == (24, 30)


def test_sincos_1d_keeps_the_positions_shape():
    # H-JEPA levels embed [B, K] step indices with the same function as the video grid tables.
    pos = torch.tensor([[0, 3, 7], [2, 2, 9]])
    emb = sincos_1d(8, pos)
    assert emb.shape == (2, 3, 8)
    assert torch.equal(emb[1, 2], sincos_1d(8, torch.tensor([9]))[0])
    assert torch.equal(emb[1, 0], emb[1, 1])
    with pytest.raises(ValueError, match="even"):
        sincos_1d(7, pos)


def test_rope_is_position_dependent_and_leaves_unrotated_dims():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 26)  # head dim 26: three chunks of 8, 2 dims left unrotated
    coords = torch.randint(0, 9, (2, 5, 3))
    out = apply_rope_3d(x, coords)
    assert out.shape == x.shape
    assert torch.equal(out[..., 24:], x[..., 24:])
    torch.testing.assert_close(apply_rope_3d(x, torch.zeros_like(coords)), x)  # angle 0 = identity
    assert not torch.allclose(out[..., :24], x[..., :24])
    # the time chunk only sees the t coordinate
    shifted = coords.clone()
    shifted[..., 1:] += 1
    torch.testing.assert_close(apply_rope_3d(x, shifted)[..., :8], out[..., :8])


def test_rope_encoder_has_no_position_table():
    enc = tiny_vit(use_rope=True)
    assert not hasattr(enc, "pos_embed")
    assert enc(torch.randn(1, 3, 4, 32, 32)).shape == (1, 32, 48)


def test_reference_init():
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=32, num_frames=2, patch_size=8, embed_dim=192, depth=4, num_heads=3)
    for i, blk in enumerate(enc.blocks, start=1):
        expected = 0.02 / math.sqrt(2 * i)
        assert abs(blk.mlp.fc2.weight.std().item() - expected) / expected < 0.1
        assert blk.attn.qkv.bias is not None and blk.attn.qkv.bias.abs().sum() == 0
    assert enc.norm.eps == 1e-6
    assert abs(enc.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002


def test_predictor_returns_target_positions_in_encoder_width():
    pred = Predictor(grid=(2, 4, 4), embed_dim=48, pred_embed_dim=24, depth=1, num_heads=3, num_mask_tokens=1)
    z = torch.randn(2, 5, 48)
    out = pred(z, torch.arange(5).expand(2, 5), torch.tensor([[10, 11, 12], [20, 21, 22]]))
    assert out.shape == (2, 3, 48)
    assert pred.mask_tokens[0].abs().sum() == 0  # zero-initialised


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = tiny_vit()
    b = tiny_vit(use_activation_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    a(x).sum().backward()
    b(x).sum().backward()
    torch.testing.assert_close(a.blocks[0].attn.qkv.weight.grad, b.blocks[0].attn.qkv.weight.grad)
