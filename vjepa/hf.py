"""V-JEPA 2 encoders in the Hugging Face format: a folder with `config.json` + `model.safetensors`
(or a sharded `model.safetensors.index.json`), as `transformers`' `VJEPA2Model.save_pretrained` writes.

Only safetensors are read (no pickle), and transformers is not needed. The HF encoder is the same
network as `vjepa.models.VisionTransformer` with RoPE (V-JEPA 2), under other names:

    encoder.embeddings.patch_embeddings.proj.*   -> patch_embed.proj.*
    encoder.layer.{i}.attention.{query,key,value} -> blocks.{i}.attn.qkv (concatenated q | k | v)
    encoder.layer.{i}.attention.proj             -> blocks.{i}.attn.proj
    encoder.layer.{i}.{norm1,norm2,mlp.fc1,mlp.fc2} -> blocks.{i}.{same}
    encoder.layernorm                            -> norm

The predictor (`predictor.*`) and a classifier's pooler/head are not the encoder and are left out;
every encoder tensor must find its place and every place a tensor (strict, as the other loaders).
HF computes RoPE positions from the config's `crop_size`; this encoder from each clip's own grid, so
the two agree at the config's clip size (and this one stays right at other sizes).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from vjepa.engine.checkpoint import CheckpointMismatch

_IGNORED = ("predictor.", "pooler.", "classifier.")
_RENAMES = (
    (r"^encoder\.embeddings\.patch_embeddings\.proj\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"blocks.\1.\2."),
    (r"^encoder\.layernorm\.", "norm."),
)
# VJEPA2Config's defaults, for config.json files written without them
_DEFAULTS = dict(crop_size=256, frames_per_clip=64, patch_size=16, tubelet_size=2, hidden_size=1024,
                 num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4.0)
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.(query|key|value)\.(weight|bias)$")


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file()


def _read_safetensors(folder: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        state: Dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(folder / shard))
        return state
    raise CheckpointMismatch(f"{folder}: no model.safetensors (or model.safetensors.index.json); only the "
                             "safetensors format is read (no pickle files)")


def convert_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF `VJEPA2Model` (or `VJEPA2ForVideoClassification`, prefix `vjepa2.`) keys -> this encoder's.
    Keys that match no rule keep their name, so the strict load reports them as unexpected."""
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        k = k[len("vjepa2."):] if k.startswith("vjepa2.") else k
        if k.startswith(_IGNORED):
            continue
        m = _QKV.match(k)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
            continue
        for pattern, repl in _RENAMES:
            if re.match(pattern, k):
                k = re.sub(pattern, repl, k)
                break
        out[k] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointMismatch(f"layer {i} has only {sorted(parts)} of query/key/value {kind}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def read_hf_folder(folder: str | Path, *, img_size: Optional[int] = None,
                   num_frames: Optional[int] = None) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(encoder state dict in this project's names, `VisionTransformer` keyword arguments)."""
    folder = Path(folder)
    config = {**_DEFAULTS, **json.loads((folder / "config.json").read_text())}
    if config.get("model_type") != "vjepa2":
        raise CheckpointMismatch(f"{folder}/config.json: model_type {config.get('model_type')!r}; only V-JEPA 2 "
                                 "(model_type 'vjepa2') folders are read")
    # What this encoder fixes and HF leaves configurable: refuse instead of computing something else.
    fixed = {"hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True, "in_chans": 3}
    for key, want in fixed.items():
        if key in config and config[key] != want:
            raise CheckpointMismatch(f"{folder}/config.json: {key}={config[key]!r}; this encoder has {want!r}")
    kwargs = dict(img_size=img_size or config["crop_size"], num_frames=num_frames or config["frames_per_clip"],
                  patch_size=config["patch_size"], tubelet_size=config["tubelet_size"],
                  embed_dim=config["hidden_size"], depth=config["num_hidden_layers"],
                  num_heads=config["num_attention_heads"], mlp_ratio=float(config["mlp_ratio"]), use_rope=True)
    return convert_state(_read_safetensors(folder)), kwargs
