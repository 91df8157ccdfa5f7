"""Hugging Face V-JEPA 2 folders (config.json + model.safetensors) load into the project's encoder and give
the same features as transformers' VJEPA2Model. transformers is an optional test dependency (`.[dev]`)."""
import json

import pytest
import torch

import vjepa
from vjepa.engine.checkpoint import CheckpointMismatch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "VJEPA2Model"):
    pytest.skip("this transformers has no VJEPA2Model (added in 4.53)", allow_module_level=True)


def tiny_hf(tmp_path, **over):
    cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, crop_size=32, frames_per_clip=4,
               patch_size=16, tubelet_size=2, pred_hidden_size=32, pred_num_hidden_layers=1,
               pred_num_attention_heads=2, num_pooler_layers=1)
    cfg.update(over)
    torch.manual_seed(0)
    model = transformers.VJEPA2Model(transformers.VJEPA2Config(**cfg)).eval()
    with torch.no_grad():  # far from the init, so that every tensor's place matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def test_hf_folder_gives_the_same_features(tmp_path):
    # head dim 32: RoPE rotates 3 x 10 dims and leaves 2, as V-JEPA 2
    model, folder = tiny_hf(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    encoder = vjepa.load_encoder(folder)
    assert encoder.use_rope and encoder.embed_dim == 64 and encoder.num_heads == 2 and encoder.grid == (2, 2, 2)
    clip = torch.randn(2, 3, 4, 32, 32)  # [B, C, T, H, W]
    with torch.no_grad():
        want = model.get_vision_features(clip.transpose(1, 2))  # HF takes [B, T, C, H, W]
        got = encoder(clip)
    assert got.shape == want.shape == (2, 8, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_hf_folder_is_strict_and_safetensors_only(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = tiny_hf(tmp_path)
    with pytest.raises(CheckpointMismatch, match="num_heads=4"):
        vjepa.load_encoder(folder, num_heads=4)
    state = load_file(folder / "model.safetensors")
    state.pop("encoder.layer.1.mlp.fc2.bias")
    state["encoder.extra.weight"] = torch.zeros(3)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointMismatch, match=r"(?s)missing keys: blocks\.1\.mlp\.fc2\.bias.*unexpected keys: "
                                                  r"encoder\.extra\.weight"):
        vjepa.load_encoder(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointMismatch, match="only the safetensors format"):
        vjepa.load_encoder(folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_act": "silu"}))
    with pytest.raises(CheckpointMismatch, match="hidden_act='silu'"):
        vjepa.load_encoder(folder)
