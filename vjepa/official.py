"""Load a frozen encoder from this project's checkpoints or official V-JEPA / V-JEPA 2 ones.

    encoder = load_encoder("vitl16.pth.tar")               # official V-JEPA: key "target_encoder"
    tokens = encoder(clip)                                 # clip [B, 3, T, H, W] -> tokens [B, N, D]

Official checkpoints hold `encoder`, `predictor` and `target_encoder` state dicts whose keys carry the
DDP and multi-mask wrappers' prefixes (`module.backbone.blocks.0.attn.qkv.weight`); V-JEPA stores its
fixed sin-cos `pos_embed` in the state dict, V-JEPA 2 uses RoPE and has none. The parameter names of
`vjepa.models.VisionTransformer` are the reference's, so loading is: strip the prefixes, read the
geometry off the tensors, build, and load strictly (a partial load raises, naming the keys).

What the tensors tell: width, depth, MLP ratio (fc1), patch and tubelet size (the Conv3d kernel),
RoPE or table (is `pos_embed` there), and the token grid of the table. What they cannot tell (heads,
and how the table's N splits into t x h x w) comes from the keyword arguments, this project's saved
config, or the reference sizes. A stored table fixes the grid the encoder is built for; clips of another
size still work, as in the reference, through the table's trilinear resize in `forward`.

Official I-JEPA checkpoints (same three keys, inner keys under `module.`) hold image encoders: a 4-D
patch kernel and a 2-D table; they load as `vjepa.image_vit.ImageViT` (geometry from `image_geometry`).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from vjepa.engine import checkpoint as ckpt
from vjepa.hf import is_hf_folder, read_hf_folder
from vjepa.image_vit import ImageViT, image_geometry
from vjepa.models import VIT_SIZES, VisionTransformer

logger = logging.getLogger(__name__)


class KeyMissing(ckpt.CheckpointMismatch, KeyError):
    """The checkpoint has no weights under the asked key (`target_encoder`, `encoder`)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


_PREFIXES = ("module.", "backbone.")
# V-JEPA 2's ViT-g (`vit_giant_xformers`) has 22 heads where V-JEPA's ViT-g has 16; both are 1408 x 40.
_ROPE_HEADS = {(1408, 40): 22, (1664, 48): 26}


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop leading `module.` / `backbone.` (DDP and the reference's MultiMaskWrapper) from every key."""
    out = {}
    for k, v in state.items():
        while k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def read_checkpoint(path: str | Path, key: str = "target_encoder") -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """(encoder state dict with prefixes stripped, this project's saved config or None)."""
    raw = ckpt.load(path)
    if "patch_embed.proj.weight" in strip_prefixes(raw):  # a bare encoder state dict
        return strip_prefixes(raw), None
    if key not in raw:
        raise KeyMissing(f"{path}: no {key!r} in the checkpoint; top-level keys: {sorted(raw)}")
    return strip_prefixes(raw[key]), raw.get("config") if isinstance(raw.get("config"), dict) else None


def infer_geometry(state: Mapping[str, torch.Tensor], config: Optional[dict] = None, *,
                   model_name: Optional[str] = None, img_size: Optional[int] = None, num_frames: Optional[int] = None,
                   patch_size: Optional[int] = None, tubelet_size: Optional[int] = None,
                   num_heads: Optional[int] = None, uniform_power: Optional[bool] = None,
                   use_rope: Optional[bool] = None) -> dict:
    """`VisionTransformer` keyword arguments that match `state` (see the module docstring)."""
    if "patch_embed.proj.weight" not in state:
        raise ckpt.CheckpointMismatch(f"not a video ViT encoder state dict (no patch_embed.proj.weight); "
                                      f"keys start with {sorted(state)[:5]}")
    w = state["patch_embed.proj.weight"]
    if w.ndim != 5:
        raise ckpt.CheckpointMismatch(f"patch_embed.proj.weight has shape {tuple(w.shape)}: only video (Conv3d) "
                                      "encoders are supported; image ViTs are not")
    D, _, tub, p, _ = w.shape
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / D if depth else 4.0
    cfg_data = (config or {}).get("data", {})
    cfg_model = (config or {}).get("model", {})
    model_name = model_name or cfg_model.get("model_name")
    rope = "pos_embed" not in state if use_rope is None else use_rope
    for given, found, what in ((patch_size, p, "patch_size"), (tubelet_size, tub, "tubelet_size")):
        if given is not None and given != found:
            raise ckpt.CheckpointMismatch(f"{what}={given} but the checkpoint's patch embedding has {found}")
    if model_name is not None:
        size = VIT_SIZES.get(model_name)
        if size is None:
            raise ValueError(f"unknown model_name {model_name!r}; valid: {sorted(VIT_SIZES)}")
        if (size.embed_dim, size.depth) != (D, depth):
            raise ckpt.CheckpointMismatch(f"model_name {model_name} is {size.embed_dim} wide and {size.depth} deep, "
                                          f"the checkpoint {D} and {depth}")
    heads = num_heads or _default_heads(D, depth, rope, model_name)
    frames = num_frames or cfg_data.get("num_frames")
    size_px = img_size or cfg_data.get("crop_size")
    if not rope:
        frames, size_px = _table_grid(state["pos_embed"].shape[1], p, tub, frames, size_px)
    return dict(img_size=size_px or 224, num_frames=frames or 16, patch_size=p, tubelet_size=tub, embed_dim=D,
                depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, use_rope=rope,
                uniform_power=bool(cfg_model.get("uniform_power", True) if uniform_power is None else uniform_power))


def _default_heads(D: int, depth: int, rope: bool, model_name: Optional[str]) -> int:
    if model_name is not None:
        return VIT_SIZES[model_name].num_heads
    if rope and (D, depth) in _ROPE_HEADS:
        return _ROPE_HEADS[(D, depth)]
    for size in VIT_SIZES.values():
        if (size.embed_dim, size.depth) == (D, depth):
            return size.num_heads
    raise ValueError(f"cannot tell the head count of a {D}-wide, {depth}-deep encoder: pass num_heads")


def _table_grid(n: int, p: int, tub: int, frames: Optional[int], size_px: Optional[int]) -> Tuple[int, int]:
    """(num_frames, img_size) whose token grid has `n` tokens: the given frame count first, then the given
    size, then 16 frames (the published recipes)."""
    tries = []
    if frames:
        tries.append(("frames", frames))
    if size_px:
        tries.append(("size", size_px))
    tries.append(("frames", 16))
    for kind, v in tries:
        if kind == "frames":
            t = v // tub
            hw = n // t if t and n % t == 0 else 0
            h = math.isqrt(hw)
            if h and h * h == hw:
                return t * tub, h * p
        else:
            h = v // p
            if h and n % (h * h) == 0:
                return (n // (h * h)) * tub, v
    raise ckpt.CheckpointMismatch(f"pos_embed has {n} tokens, which no (frames, size) grid with patch {p} and "
                                  f"tubelet {tub} explains; pass num_frames and img_size")


def is_image_encoder(state: Mapping[str, torch.Tensor]) -> bool:
    w = state.get("patch_embed.proj.weight")
    return w is not None and w.ndim == 4


def _state_and_geometry(path: str | Path, key: str, **given) -> Tuple[Dict[str, torch.Tensor], type, dict]:
    """(encoder state dict, encoder class, its kwargs) of a checkpoint file or a Hugging Face folder. Image
    encoders (a 4-D patch kernel, I-JEPA) are `ImageViT`s."""
    if not is_hf_folder(path):
        state, config = read_checkpoint(path, key)
        if is_image_encoder(state):  # I-JEPA: Conv2d patches and a 2-D table (vjepa/image_vit.py)
            if given["use_rope"] or (given["tubelet_size"] or 1) != 1 or (given["num_frames"] or 1) != 1:
                raise ckpt.CheckpointMismatch(f"{path} holds an image encoder: no RoPE, frames or tubelets")
            return state, ImageViT, image_geometry(state, model_name=given["model_name"], img_size=given["img_size"],
                                                   patch_size=given["patch_size"], num_heads=given["num_heads"])
        return state, VisionTransformer, infer_geometry(state, config, **given)
    state, kwargs = read_hf_folder(path, img_size=given["img_size"], num_frames=given["num_frames"])
    size = VIT_SIZES.get(given["model_name"]) if given["model_name"] else None
    if given["model_name"] and size is None:
        raise ValueError(f"unknown model_name {given['model_name']!r}; valid: {sorted(VIT_SIZES)}")
    checks = [("patch_size", given["patch_size"], kwargs["patch_size"]),
              ("tubelet_size", given["tubelet_size"], kwargs["tubelet_size"]),
              ("num_heads", given["num_heads"], kwargs["num_heads"]),
              ("use_rope", given["use_rope"], True),
              ("model_name width x depth", size and (size.embed_dim, size.depth), (kwargs["embed_dim"], kwargs["depth"]))]
    for what, want, found in checks:
        if want is not None and want != found:
            raise ckpt.CheckpointMismatch(f"{what}={want} but the Hugging Face model {path} has {found}")
    return state, VisionTransformer, kwargs


def load_encoder(path: str | Path, key: str = "target_encoder", *, model_name: Optional[str] = None,
                 img_size: Optional[int] = None, num_frames: Optional[int] = None, patch_size: Optional[int] = None,
                 tubelet_size: Optional[int] = None, num_heads: Optional[int] = None,
                 uniform_power: Optional[bool] = None, use_rope: Optional[bool] = None) -> VisionTransformer:
    """A ready, frozen encoder (eval mode, no gradients) from a checkpoint file or a Hugging Face folder.

    Args:
        path: this project's checkpoint (V-JEPA or I-JEPA), an official V-JEPA / V-JEPA 2 / I-JEPA one, a
            bare encoder state dict, or a Hugging Face V-JEPA 2 folder (`config.json` + `model.safetensors`,
            see `vjepa.hf`). Image encoders (a 4-D patch kernel) load as `ImageViT`.
        key: which weights (`target_encoder`, the EMA encoder the papers evaluate, or `encoder`); a
            Hugging Face folder holds one encoder and ignores it.
        model_name ... use_rope: geometry the weights cannot tell or that you want checked (see
            `infer_geometry`); a value that contradicts the weights raises.

    Example (a checkpoint written on the spot; `vit_micro` is 96 wide and 4 deep):

    >>> import os, tempfile, torch, vjepa
    >>> from vjepa.models import VisionTransformer
    >>> net = VisionTransformer(img_size=32, num_frames=4, patch_size=16, embed_dim=96, depth=4, num_heads=3)
    >>> path = os.path.join(tempfile.mkdtemp(), "jepa-latest.pt")
    >>> torch.save({"target_encoder": net.state_dict()}, path)
    >>> encoder = vjepa.load_encoder(path, num_frames=4)
    >>> clip = torch.randn(2, 3, 4, 32, 32)                      # [B, C, T, H, W]
    >>> tokens = encoder(clip)                                  # [B, N, D], N = 2 x 2 x 2 tokens
    >>> tokens.shape, encoder.num_heads
    (torch.Size([2, 8, 96]), 3)
    >>> torch.allclose(tokens, net.eval()(clip), atol=1e-6)
    True
    """
    state, cls, kwargs = _state_and_geometry(path, key, model_name=model_name, img_size=img_size,
                                             num_frames=num_frames, patch_size=patch_size, tubelet_size=tubelet_size,
                                             num_heads=num_heads, uniform_power=uniform_power, use_rope=use_rope)
    with torch.device("meta"):  # no point initialising weights that are overwritten
        encoder = cls(**kwargs)
    encoder = encoder.to_empty(device="cpu")
    ckpt.load_state_strict(encoder, state, Path(path).name if is_hf_folder(path) else f"{Path(path).name}[{key}]")
    logger.info("loaded %s[%s]: D=%d depth=%d heads=%d grid %s %s", path, key, kwargs["embed_dim"], kwargs["depth"],
                kwargs["num_heads"], encoder.grid, "RoPE" if kwargs.get("use_rope") else "sin-cos table")
    return encoder.eval().requires_grad_(False)


def random_encoder_like(path: Optional[str | Path], seed: int = 0, key: str = "target_encoder", *,
                        model_name: Optional[str] = None, img_size: Optional[int] = None,
                        num_frames: Optional[int] = None, patch_size: Optional[int] = None,
                        tubelet_size: Optional[int] = None, num_heads: Optional[int] = None,
                        uniform_power: Optional[bool] = None, use_rope: Optional[bool] = None) -> VisionTransformer:
    """A randomly initialised encoder (reference init, seeded) of the geometry of the checkpoint at `path`,
    or, with `path=None`, of `model_name` and the given clip geometry: the random-init baseline."""
    if path is not None:
        _, cls, kwargs = _state_and_geometry(path, key, model_name=model_name, img_size=img_size,
                                        num_frames=num_frames, patch_size=patch_size, tubelet_size=tubelet_size,
                                        num_heads=num_heads, uniform_power=uniform_power, use_rope=use_rope)
    else:
        if model_name is None:
            raise ValueError("a random encoder without a checkpoint needs model_name")
        cls = VisionTransformer
        size = VIT_SIZES[model_name]
        kwargs = dict(img_size=img_size or 224, num_frames=num_frames or 16, patch_size=patch_size or 16,
                      tubelet_size=tubelet_size or 2, embed_dim=size.embed_dim, depth=size.depth,
                      num_heads=num_heads or size.num_heads, mlp_ratio=size.mlp_ratio, use_rope=bool(use_rope),
                      uniform_power=True if uniform_power is None else uniform_power)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = cls(**kwargs)
    return encoder.eval().requires_grad_(False)
