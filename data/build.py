"""Pick the dataset a config asks for: listed CSV/folder/image datasets, or the built-in motion videos."""
from __future__ import annotations

from functools import partial

from torch.utils.data import Dataset

from data.config import DataAugConfig, DataConfig
from data.generated.synthetic import MotionVideos
from data.transforms import to_float_clip


def build_dataset(data: DataConfig, aug: DataAugConfig, train: bool = True) -> Dataset:
    if not data.datasets:
        # Generated clips are already at the model's size, and flips or crops would change what the
        # motion label means, so they are only normalised.
        m = data.synthetic
        return MotionVideos(m.num_videos, data.num_frames, data.crop_size, num_speeds=m.num_speeds,
                            distractor=m.distractor, seed=m.seed, transform=partial(to_float_clip, mean=aug.mean, std=aug.std),
                            extra_objects=m.extra_objects, pan=m.pan)
    from data.datasets import build_video_dataset  # decoding backends are only needed for real data

    return build_video_dataset(data, aug, train)
