"""Clip transforms on uint8 clips `[T, H, W, C]`; every random parameter is drawn once per clip.

Randomness comes from torch's global RNG (and, inside RandAugment / random erasing, python's `random`):
the loader seeds both per sample, so a resumed run sees the same augmentations. Geometry runs on uint8
(torch's antialiased uint8 resize is ~4x faster than float), normalisation last.

Train: random resized crop (or, with motion_shift, a crop box that moves from a first to a last draw
over the clip) -> horizontal flip -> [RandAugment] -> normalise -> [random erasing].
Eval: short-side resize + centre crop, or `num_views` crops along the long side (V-JEPA eval protocol).
"""
from __future__ import annotations

import functools
import math
import random
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from data.config import DataAugConfig

# Reference V-JEPA probe recipe (evals/video_classification_frozen): RandAugment m7, 4 ops.
RAND_AUGMENT_CONFIG = "rand-m7-n4-mstd0.5-inc1"
# Single-view eval resizes the short side to crop * 256/224 before the centre crop (reference protocol).
EVAL_RESIZE_RATIO = 256 / 224

ClipOrViews = Union[torch.Tensor, List[torch.Tensor]]


def to_float_clip(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 `[T, H, W, C]` -> normalised, contiguous float `[C, T, H, W]`."""
    return normalize_clip(to_uint8_clip(clip), mean, std)


def to_uint8_clip(clip: torch.Tensor) -> torch.Tensor:
    """uint8 `[T, H, W, C]` -> contiguous uint8 `[C, T, H, W]`: what loader workers send when the trainer
    normalises on its device (`normalize_clip`), a quarter of the bytes of the float clip."""
    if clip.dtype != torch.uint8 or clip.ndim != 4:
        raise ValueError(f"expected a uint8 clip [T, H, W, C], got {tuple(clip.shape)} {clip.dtype}")
    return clip.permute(3, 0, 1, 2).contiguous()  # [C, T, H, W]


def normalize_clip(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 `[..., C, T, H, W]` (one clip or a batch, on any device) -> normalised float32, the same
    values bit for bit wherever it runs; a float input is returned as it is (already normalised)."""
    if x.is_floating_point():
        return x
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 or normalised float clips, got {x.dtype}")
    scale, shift = _affine(tuple(mean), tuple(std), x.device)
    return x.float().mul_(scale).add_(shift)


@functools.lru_cache(maxsize=16)
def _affine(mean: Tuple[float, ...], std: Tuple[float, ...], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) `[C, 1, 1, 1]` with (x / 255 - mean) / std = x * scale + shift: one multiply-add, 5x
    faster than the three-pass form on CPU. Computed once on the CPU in float32 (the same values on every
    device) and kept per device: a per-step host-to-device copy would make the host wait for the GPU."""
    s = torch.as_tensor(std, dtype=torch.float32)
    scale = (1.0 / (255.0 * s)).view(-1, 1, 1, 1)
    shift = (-torch.as_tensor(mean, dtype=torch.float32) / s).view(-1, 1, 1, 1)
    return scale.to(device), shift.to(device)


def resize_clip(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 `[T, H, W, C]` -> `[T, height, width, C]`, bilinear with antialiasing."""
    x = clip.permute(0, 3, 1, 2)  # [T, C, H, W], channels-last in memory: torch's fast uint8 path
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1)


def short_side_resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the short side is `size`, keeping the aspect ratio."""
    _, h, w, _ = clip.shape
    if min(h, w) == size:
        return clip
    if h <= w:
        return resize_clip(clip, size, max(size, round(w * size / h)))
    return resize_clip(clip, max(size, round(h * size / w)), size)


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w, _ = clip.shape
    top, left = (h - size) // 2, (w - size) // 2
    return clip[:, top : top + size, left : left + size]


def spatial_crops(clip: torch.Tensor, size: int, num_views: int) -> List[torch.Tensor]:
    """`num_views` square crops evenly spaced along the long side (3: left/centre/right or top/centre/bottom).

    The short side must already be `size` (V-JEPA's eval: resize short side to the crop, then slide).
    """
    _, h, w, _ = clip.shape
    if min(h, w) != size:
        raise ValueError(f"short side must equal the crop size {size}, got {h}x{w}")
    step = (max(h, w) - size) / max(num_views - 1, 1)
    views = []
    for v in range(num_views):
        start = round(v * step) if num_views > 1 else (max(h, w) - size) // 2
        views.append(clip[:, start : start + size] if h > w else clip[:, :, start : start + size])
    return views


def random_resized_crop_params(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> Tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop draws them, from torch's global RNG."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    # Fallback (extreme aspect ratio): the largest centred crop within the ratio range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def shifted_crop(clip: torch.Tensor, scale: Sequence[float], ratio: Sequence[float], size: int) -> torch.Tensor:
    """Random resized crop whose box moves over time (the reference's `motion_shift`): one box is drawn
    for the first frame and one for the last, and frame i uses their linear interpolation (rounded down
    to whole pixels, as the reference), resized to `size`. uint8 `[T, H, W, C]` -> `[T, size, size, C]`."""
    t, h, w, _ = clip.shape
    first = random_resized_crop_params(h, w, scale, ratio)
    last = random_resized_crop_params(h, w, scale, ratio)
    boxes = torch.stack([torch.linspace(a, b, t) for a, b in zip(first, last)], 1).int()  # [T, 4] top left h w
    return torch.cat([resize_clip(clip[i: i + 1, top: top + ch, left: left + cw], size, size)
                      for i, (top, left, ch, cw) in enumerate(boxes.tolist())])


class ClipRandAugment:
    """timm RandAugment with one draw per clip: every frame replays the same python/numpy random state.

    timm's ops draw from python `random` and `numpy.random`; we seed both from torch's RNG, run each
    frame from that seed, and restore the global states afterwards so the rest of the pipeline's
    random stream is unchanged.

    Args:
        crop_size: frame size (sets the translate range as the reference: 45% of the crop).
        mean: normalisation mean, used as the fill colour.
        config: timm RandAugment config string.
    """

    def __init__(self, crop_size: int, mean: Sequence[float], config: str = RAND_AUGMENT_CONFIG):
        from timm.data.auto_augment import rand_augment_transform

        hparams = {
            "translate_const": int(crop_size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in mean),
        }
        self.op = rand_augment_transform(config, hparams)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        seed = int(torch.randint(0, 2**31 - 1, size=(1,)).item())
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        try:
            for frame in clip.numpy():  # [H, W, C]
                random.seed(seed)
                np.random.seed(seed)
                out.append(np.asarray(self.op(Image.fromarray(frame))))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return torch.from_numpy(np.stack(out))  # [T, H, W, C]


class ClipRandomErasing:
    """timm RandomErasing (per-pixel noise) with the same rectangle on every frame ("cube" erasing, as
    the reference's randerase.py); region from python `random`, noise from torch.

    Args:
        probability: chance a clip gets erased.
    """

    def __init__(self, probability: float):
        from timm.data.random_erasing import RandomErasing

        self.op = RandomErasing(probability, mode="pixel", max_count=1, num_splits=0, device="cpu")

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        c, t, h, w = clip.shape
        # [C*T, H, W]: timm erases one region across the leading dim, i.e. across all frames.
        return self.op(clip.reshape(c * t, h, w)).view(c, t, h, w)


class TrainTransform:
    """uint8 `[T, H, W, C]` -> float `[C, T, crop, crop]` with one random crop/flip/augment per clip.

    Args:
        crop_size: output side.
        scale / ratio: random resized crop ranges (fraction of the area, w/h).
        horizontal_flip: flip with probability 0.5.
        mean / std: normalisation.
        rand_augment: RandAugment (probe recipes).
        reprob: random-erasing probability (probe recipes); 0 = off.
        motion_shift: the crop box drifts linearly from a first to a last random draw (`shifted_crop`).
        uint8: return the uint8 clip `[C, T, crop, crop]` unnormalised (`normalize_clip` later, on the
            trainer's device); random erasing draws noise in normalised space, so it needs uint8=False.
    """

    def __init__(
        self,
        crop_size: int,
        scale: Sequence[float] = (0.3, 1.0),
        ratio: Sequence[float] = (0.75, 1.35),
        horizontal_flip: bool = True,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        rand_augment: bool = False,
        reprob: float = 0.0,
        motion_shift: bool = False,
        uint8: bool = False,
    ):
        if uint8 and reprob > 0:
            raise ValueError("random erasing (reprob > 0) works on normalised clips; it needs uint8=False")
        self.crop_size, self.uint8 = crop_size, uint8
        self.motion_shift = motion_shift
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.horizontal_flip = horizontal_flip
        self.mean, self.std = tuple(mean), tuple(std)
        self.rand_augment: Optional[ClipRandAugment] = ClipRandAugment(crop_size, mean) if rand_augment else None
        self.erase: Optional[ClipRandomErasing] = ClipRandomErasing(reprob) if reprob > 0 else None

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = clip.shape
        if self.motion_shift:
            clip = shifted_crop(clip, self.scale, self.ratio, self.crop_size)
        else:
            top, left, ch, cw = random_resized_crop_params(h, w, self.scale, self.ratio)
            clip = resize_clip(clip[:, top : top + ch, left : left + cw], self.crop_size, self.crop_size)
        if self.horizontal_flip and torch.rand(1).item() < 0.5:
            clip = clip.flip(2)  # W axis of [T, H, W, C]
        if self.rand_augment is not None:
            clip = self.rand_augment(clip)
        if self.uint8:
            return to_uint8_clip(clip)  # [C, T, S, S]
        x = to_float_clip(clip, self.mean, self.std)  # [C, T, S, S]
        if self.erase is not None:
            x = self.erase(x)
        return x


class EvalTransform:
    """uint8 `[T, H, W, C]` -> float `[C, T, crop, crop]` (num_views=1: resize short side to crop*256/224,
    centre crop) or a list of `num_views` such clips (resize short side to crop, crops along the long
    side), as V-JEPA's evaluation.

    Args:
        crop_size: output side.
        num_views: spatial views per clip.
        mean / std: normalisation.
    """

    def __init__(
        self,
        crop_size: int,
        num_views: int = 1,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.crop_size, self.num_views = crop_size, num_views
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, clip: torch.Tensor) -> ClipOrViews:
        if self.num_views == 1:
            clip = short_side_resize(clip, int(self.crop_size * EVAL_RESIZE_RATIO))
            return to_float_clip(center_crop(clip, self.crop_size), self.mean, self.std)
        clip = short_side_resize(clip, self.crop_size)
        views = spatial_crops(clip, self.crop_size, self.num_views)
        return [to_float_clip(v, self.mean, self.std) for v in views]


def make_train_transform(aug: DataAugConfig, crop_size: int, uint8: bool = False) -> TrainTransform:
    return TrainTransform(
        crop_size=crop_size,
        scale=aug.random_resize_scale,
        ratio=aug.random_resize_aspect_ratio,
        horizontal_flip=aug.horizontal_flip,
        mean=aug.mean,
        std=aug.std,
        rand_augment=aug.auto_augment,
        reprob=aug.reprob,
        motion_shift=aug.motion_shift,
        uint8=uint8,
    )


def make_eval_transform(aug: DataAugConfig, crop_size: int, num_views: int = 1) -> EvalTransform:
    return EvalTransform(crop_size=crop_size, num_views=num_views, mean=aug.mean, std=aug.std)
