"""Pick the dataset a config asks for: listed CSV/folder/image datasets, or the built-in motion videos."""
from __future__ import annotations

from functools import partial

from torch.utils.data import Dataset

from data.config import DataAugConfig, DataConfig
from data.generated.synthetic import MotionVideos
from data.transforms import to_float_clip, to_uint8_clip


def build_dataset(data: DataConfig, aug: DataAugConfig, train: bool = True, uint8: bool = False) -> Dataset:
    """uint8=True: clips come out as uint8 `[C, T, H, W]`, to be normalised by the trainer on its device
    (`data.transforms.normalize_clip`), training augmentation only."""
    if uint8 and not train:
        raise ValueError("uint8 clips are only built for training (evaluation crops are normalised on the workers)")
    if not data.datasets:
        # Generated clips are already at the model's size, and flips or crops would change what the
        # motion label means, so they are only normalised.
        m = data.synthetic
        return MotionVideos(m.num_videos, data.num_frames, data.crop_size, num_speeds=m.num_speeds,
                            distractor=m.distractor, seed=m.seed,
                            transform=to_uint8_clip if uint8 else partial(to_float_clip, mean=aug.mean, std=aug.std),
                            extra_objects=m.extra_objects, pan=m.pan, object_scale=m.object_scale)
    from data.datasets import build_video_dataset  # decoding backends are only needed for real data

    return build_video_dataset(data, aug, train, uint8)
