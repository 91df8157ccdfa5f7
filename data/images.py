"""Image data for I-JEPA: an image folder / image list, or scikit-learn's handwritten digits, with I-JEPA's
augmentation. A sample is `{"clip": float [C, H, W], "label": int, "skipped": int}` (the `clip` key is
the one every collator here reads).

Broken images are skipped, replaced at random and counted in `skipped`, exactly as broken videos are
(`data.datasets.ClipDataset`, whose loop this reuses). Every random draw comes from torch's global RNG,
which the loader seeds per sample, so a resumed run sees the same crops.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.datasets import IMAGE_EXTENSIONS, ClipDataset, load_image, load_source
from data.transforms import random_resized_crop_params, resize_clip, to_float_clip

logger = logging.getLogger(__name__)

# torchvision's RandomResizedCrop default ratio, which the I-JEPA recipe keeps.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass
class ImageDataConfig:
    """The reference I-JEPA `data:` section (same key names), plus where images come from here.

    Args:
        root_path / image_folder: the reference's image folder, `root_path/image_folder` (its `train/`
            subfolder when there is one), one subfolder per class.
        datasets: instead, CSV lists (`path label`) or folders; used when given.
        builtin: `digits`: scikit-learn's 8x8 handwritten digits upscaled to `crop_size` (no download).
        crop_size / crop_scale: random resized crop output size and area range (ratio 3/4-4/3).
        use_horizontal_flip: flip with p=0.5. use_color_distortion / color_jitter_strength: SimCLR colour
            jitter (p=0.8, strength s: brightness/contrast/saturation 0.8 s, hue 0.2 s) and grayscale (p=0.2).
        use_gaussian_blur: blur with p=0.5, sigma 0.1-2 (reference: radius 0.1-2).
        max_consecutive_failures: broken images in a row before the run stops with an error.
    """

    batch_size: int = 64
    crop_size: int = 224
    crop_scale: List[float] = field(default_factory=lambda: [0.3, 1.0])
    color_jitter_strength: float = 0.0
    use_color_distortion: bool = False
    use_gaussian_blur: bool = False
    use_horizontal_flip: bool = False
    root_path: Optional[str] = None
    image_folder: Optional[str] = None
    datasets: List[str] = field(default_factory=list)
    builtin: Optional[str] = None
    num_workers: int = 8
    pin_mem: bool = True
    persistent_workers: bool = True
    max_consecutive_failures: int = 50
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


class ImageTransform:
    """uint8 `[1, H, W, C]` -> normalised float `[C, crop, crop]` (train: random resized crop and the
    optional flip / colour / blur; eval: resize to the crop).

    Args:
        cfg: data config. train: augment or not.
    """

    def __init__(self, cfg: ImageDataConfig, train: bool = True):
        self.cfg, self.train = cfg, train
        lo, hi = cfg.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.crop_scale must satisfy 0 < lo <= hi <= 1, got {cfg.crop_scale}")
        self.jitter = self.blur = None
        if train and cfg.use_color_distortion:
            from torchvision.transforms import v2

            s = cfg.color_jitter_strength
            self.jitter = v2.Compose([v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
                                      v2.RandomGrayscale(p=0.2)])
        if train and cfg.use_gaussian_blur:
            from torchvision.transforms import v2

            self.blur = v2.RandomApply([v2.GaussianBlur(kernel_size=13, sigma=(0.1, 2.0))], p=0.5)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        size = self.cfg.crop_size
        if self.train:
            top, left, h, w = random_resized_crop_params(img.shape[1], img.shape[2], self.cfg.crop_scale, CROP_RATIO)
            img = resize_clip(img[:, top:top + h, left:left + w], size, size)  # [1, size, size, C]
            if self.cfg.use_horizontal_flip and torch.rand(1).item() < 0.5:
                img = img.flip(2)
            if self.jitter is not None or self.blur is not None:
                chw = img[0].permute(2, 0, 1)  # [C, H, W] uint8
                chw = self.jitter(chw) if self.jitter is not None else chw
                chw = self.blur(chw) if self.blur is not None else chw
                img = chw.permute(1, 2, 0).unsqueeze(0)
        else:
            img = resize_clip(img, size, size)
        return to_float_clip(img.contiguous(), self.cfg.mean, self.cfg.std).squeeze(1)  # [C, size, size]


class ImageFiles(ClipDataset):
    """Images from folders / CSV lists as single `[C, H, W]` samples; broken files skipped and counted
    (see `ClipDataset` for the Args)."""

    def load(self, path: str) -> Optional[List[torch.Tensor]]:
        return [load_image(path)]  # [1, H, W, C] uint8


def load_digits_uint8(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0-16) as uint8 RGB `[N, size, size, 3]` and
    labels `[N]`, upscaled bilinearly."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).repeat(1, 1, 1, 3).contiguous(), torch.as_tensor(d.target, dtype=torch.long)


def digits_split(num: int, held_out: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices) of a fixed random split."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num, generator=g)
    n_val = int(round(num * held_out))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class DigitsImages(Dataset):
    """scikit-learn digits (one split) as image samples.

    Args:
        size: upscaled side in pixels. split: `train` or `val` (a fixed 70/30 split). transform: as
            `ImageTransform`. held_out: fraction of images in `val`.
    """

    def __init__(self, size: int, split: str, transform: Callable[[torch.Tensor], torch.Tensor],
                 held_out: float = 0.3):
        if split not in ("train", "val"):
            raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
        images, labels = load_digits_uint8(size)
        idx = digits_split(len(images), held_out)[0 if split == "train" else 1]
        self.images, self.labels = images[idx], labels[idx]
        self.transform = transform
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"clip": self.transform(self.images[i:i + 1]), "label": int(self.labels[i]), "skipped": 0}


def image_sources(cfg: ImageDataConfig) -> List[str]:
    if cfg.datasets:
        return list(cfg.datasets)
    if cfg.root_path is None and cfg.image_folder is None:
        raise ValueError("no images: set data.datasets, data.root_path/image_folder or data.builtin")
    folder = os.path.join(cfg.root_path or "", cfg.image_folder or "")
    train = os.path.join(folder, "train")
    return [train if os.path.isdir(train) else folder]


def build_image_dataset(cfg: ImageDataConfig, train: bool = True) -> Dataset:
    """The images `cfg` names, with I-JEPA's train augmentation (or eval resizing)."""
    transform = ImageTransform(cfg, train)
    if cfg.builtin is not None:
        if cfg.datasets or cfg.root_path or cfg.image_folder:
            raise ValueError("data.builtin and data.datasets / root_path / image_folder are exclusive: pick one")
        if cfg.builtin != "digits":
            raise ValueError(f"data.builtin must be 'digits' or null, got {cfg.builtin!r}")
        return DigitsImages(cfg.crop_size, "train" if train else "val", transform)
    loaded = [load_source(p, IMAGE_EXTENSIONS) for p in image_sources(cfg)]
    sources: Sequence = [s for s, _ in loaded]
    dataset = ImageFiles(sources, None, transform, num_frames=1, random_clips=train,
                         max_consecutive_failures=cfg.max_consecutive_failures,
                         classes=loaded[0][1] if len(loaded) == 1 else None)
    logger.info("images: %d from %d source(s), %d classes", len(dataset), len(sources), dataset.num_classes)
    return dataset
