"""Typed configs for the data pipeline.

Key names follow the reference V-JEPA YAMLs (`data:` and `data_aug:` sections) so that their configs load
unchanged; keys the reference has but which change nothing here are documented as such.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class MotionConfig:
    """Built-in generated videos (used when `data.datasets` is empty).

    Args:
        num_videos: clips per epoch; each index is one fixed video (same seed -> same video).
        num_speeds: speed classes; classes = 4 directions x 2 rotation senses x num_speeds.
        distractor: draw a second shape that moves at random and carries no label.
        seed: seed of the generator (the split seed: train and val use different seeds).
        extra_objects: up to this many more shapes per clip (0 to N, drawn per clip), each with its own
            random direction, speed and rotation: busier pretraining videos (the benchmark keeps 0).
        pan: camera motion: the whole frame drifts by up to this many pixels per frame in a random
            direction (wrapping at the border); 0 = a static camera, as the benchmark.
        object_scale: the labelled shape's radius times this (1.0 = the benchmark's 11-16% of the frame;
            2.5 gives it ~6x the area), so more of every clip moves.
    """

    num_videos: int = 2048
    num_speeds: int = 2
    distractor: bool = True
    seed: int = 0
    extra_objects: int = 0
    pan: float = 0.0
    object_scale: float = 1.0


@dataclass
class DataConfig:
    """Where clips come from and their geometry.

    Args:
        datasets: CSV files (`path label` per line) or folders (one subfolder per class); empty = the
            built-in generated motion videos (`synthetic`).
        datasets_weights: sampling weight of each dataset when several are mixed (None = by size).
        dataset_type: `VideoDataset` or `ImageDataset` (reference name; images become repeated clips).
        decode_one_clip: reference key; one clip is decoded per sample either way (`num_clips` > 1 gives
            several).
        sampling_rate: frame step between sampled frames; ignored when `fps` is set.
        fps: sample frames at this rate (V-JEPA 2 style) instead of a fixed frame step.
        filter_short_videos / clip_duration: drop videos shorter than one clip / sample clips spanning
            this many seconds.
        decoder: `auto` (= PyAV: decord misreads mpeg4 B-frames, see data/video.py), `decord`, `pyav` or
            `torchcodec` (optional: pip extra + system FFmpeg, see data/video_torchcodec.py).
        decoder_threads: decoding threads per video (0 = one inside DataLoader workers, which already
            share the cores; the backend's default, one per core, in the main process).
        num_views: spatial views per clip at evaluation (1 = centre crop; 3 = along the long side).
        max_consecutive_failures: broken files in a row before the run stops with an error.
    """

    dataset_type: str = "VideoDataset"
    datasets: List[str] = field(default_factory=list)
    datasets_weights: Optional[List[float]] = None
    decode_one_clip: bool = True
    batch_size: int = 24
    num_clips: int = 1
    num_frames: int = 16
    tubelet_size: int = 2
    sampling_rate: int = 4
    fps: Optional[float] = None
    crop_size: int = 224
    patch_size: int = 16
    pin_mem: bool = True
    num_workers: int = 8
    persistent_workers: bool = True
    filter_short_videos: bool = False
    clip_duration: Optional[float] = None
    min_duration: Optional[float] = None
    max_duration: Optional[float] = None
    decoder: str = "auto"
    decoder_threads: int = 0
    num_views: int = 1
    max_consecutive_failures: int = 50
    synthetic: MotionConfig = field(default_factory=MotionConfig)


@dataclass
class DataAugConfig:
    """Clip augmentation (reference `data_aug:` section). One set of parameters per clip, all frames alike.

    Args:
        random_resize_scale / random_resize_aspect_ratio: random resized crop ranges (area, w/h).
        horizontal_flip: flip a clip with probability 0.5.
        auto_augment: RandAugment (timm) per clip, as the probe recipes use.
        reprob: random-erasing probability (timm), probe recipes.
        motion_shift: the crop box moves linearly from one random draw (first frame) to another (last
            frame), as the reference's `random_resized_crop_with_shift`.
        mean / std: normalisation (ImageNet statistics, as the reference).
    """

    random_resize_scale: List[float] = field(default_factory=lambda: [0.3, 1.0])
    random_resize_aspect_ratio: List[float] = field(default_factory=lambda: [0.75, 1.35])
    horizontal_flip: bool = True
    auto_augment: bool = False
    reprob: float = 0.0
    motion_shift: bool = False
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
