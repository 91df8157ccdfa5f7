"""The motion benchmark: labelled generated videos whose class only motion can tell apart.

Fixed train/val splits of `data.generated.synthetic.MotionVideos` (class = direction x rotation sense x speed;
shape, colour, position and a distractor are random), drawn from seeds that never overlap the
pretraining videos' seed. Two controls remove the motion while keeping the appearance:

- `single_frame`: one frame (the middle one) repeated over the clip;
- `shuffled`: the clip's frames in a fixed random order (per clip).

A probe on either control must sit near chance (1 / num_classes): that is what proves the labels need
motion. The splits can be written to disk as mp4 files plus reference-format CSVs (`path label`), so
that the real-video pipeline and external tools can read the same benchmark.

    python -m data.generated.motion_benchmark OUT_DIR [--num-train N --num-val N --size S --frames T]
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from data.generated.synthetic import MotionVideos
from data.transforms import to_float_clip

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
CONTROLS = ("none", "single_frame", "shuffled")
# Split seeds live far from the small seeds pretraining runs use (`data.synthetic.seed`, default 0),
# so the validation videos are never seen during pretraining.
_SPLIT_SEED_BASE = {"train": 1_000_003, "val": 2_000_003}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MotionBenchmarkConfig:
    """The motion benchmark's splits.

    Args:
        num_train / num_val: clips per split.
        num_frames / size: clip length and square frame size (match the encoder's input).
        num_speeds: speed classes; num_classes = 4 directions x 2 senses x num_speeds.
        distractor: add a drifting distractor shape.
        seed: benchmark seed; each split's videos are a pure function of (seed, split, index).
        control: `none`, or a control that removes motion: `single_frame` or `shuffled`.
    """

    num_train: int = 2048
    num_val: int = 512
    num_frames: int = 16
    size: int = 64
    num_speeds: int = 2
    distractor: bool = True
    seed: int = 0
    control: str = "none"

    @property
    def num_classes(self) -> int:
        return 4 * 2 * self.num_speeds


def split_seed(seed: int, split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _SPLIT_SEED_BASE[split] + 7919 * seed


def single_frame(clip: torch.Tensor) -> torch.Tensor:
    """uint8 `[T, H, W, C]` -> the middle frame repeated T times (no motion left)."""
    t = clip.shape[0]
    return clip[t // 2 : t // 2 + 1].expand_as(clip).contiguous()


def shuffle_frames(clip: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 `[T, H, W, C]` -> frames in a random order fixed by `seed` (motion direction destroyed)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return clip[torch.randperm(clip.shape[0], generator=g)]


class ControlledMotionVideos(MotionVideos):
    """`MotionVideos` with an optional control applied to the raw clip before normalisation.

    Args:
        control: `none`, `single_frame` or `shuffled` (see the module docstring).
        (other Args as `MotionVideos`)
    """

    def __init__(self, num_videos: int, num_frames: int, size: int, num_speeds: int = 2, distractor: bool = True,
                 seed: int = 0, transform: Optional[Callable] = None, control: str = "none"):
        super().__init__(num_videos, num_frames, size, num_speeds=num_speeds, distractor=distractor, seed=seed,
                         transform=transform)
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
        self.control = control

    def clip(self, index: int) -> torch.Tensor:
        clip = super().clip(index)
        if self.control == "single_frame":
            return single_frame(clip)
        if self.control == "shuffled":
            return shuffle_frames(clip, seed=self.seed * 1_000_003 + index)
        return clip


def motion_split(cfg: MotionBenchmarkConfig, split: str, control: Optional[str] = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 normalize: bool = True) -> ControlledMotionVideos:
    """One split as a dataset of `{"clip": float [C, T, H, W], "label", "skipped"}` samples (uint8
    `[T, H, W, C]` clips when `normalize` is False); `control` defaults to `cfg.control`."""
    n = cfg.num_train if split == "train" else cfg.num_val
    transform = partial(to_float_clip, mean=mean, std=std) if normalize else None
    return ControlledMotionVideos(n, cfg.num_frames, cfg.size, num_speeds=cfg.num_speeds, distractor=cfg.distractor,
                                  seed=split_seed(cfg.seed, split), transform=transform,
                                  control=cfg.control if control is None else control)


def write_mp4(clip: torch.Tensor, path: Path, fps: int = 8, crf: int = 10) -> None:
    """uint8 `[T, H, W, C]` -> an H.264 mp4 (near-lossless at the default crf)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in clip.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_benchmark(cfg: MotionBenchmarkConfig, out_dir: str | Path, fps: int = 8) -> dict:
    """Write both splits as `out_dir/<split>/<index>.mp4` and `out_dir/<split>.csv` (reference `path label`
    lines, paths relative to the CSV). Returns {split: csv path}."""
    out = Path(out_dir)
    csvs = {}
    for split in SPLITS:
        ds = motion_split(cfg, split, normalize=False)
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(len(ds)):
            name = f"{split}/{i:06d}.mp4"
            write_mp4(ds.clip(i), out / name, fps=fps)
            lines.append(f"{name} {ds.label_of(i)}\n")
        csv = out / f"{split}.csv"
        csv.write_text("".join(lines))
        csvs[split] = csv
        logger.info("wrote %d %s clips and %s", len(ds), split, csv)
    return csvs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the motion benchmark as mp4 files + CSV lists.")
    p.add_argument("out_dir")
    p.add_argument("--num-train", type=int, default=MotionBenchmarkConfig.num_train)
    p.add_argument("--num-val", type=int, default=MotionBenchmarkConfig.num_val)
    p.add_argument("--frames", type=int, default=MotionBenchmarkConfig.num_frames)
    p.add_argument("--size", type=int, default=MotionBenchmarkConfig.size)
    p.add_argument("--num-speeds", type=int, default=MotionBenchmarkConfig.num_speeds)
    p.add_argument("--seed", type=int, default=MotionBenchmarkConfig.seed)
    p.add_argument("--fps", type=int, default=8)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = MotionBenchmarkConfig(num_train=a.num_train, num_val=a.num_val, num_frames=a.frames, size=a.size,
                                num_speeds=a.num_speeds, seed=a.seed)
    csvs = write_benchmark(cfg, a.out_dir, fps=a.fps)
    print(f"{cfg.num_classes} classes; " + ", ".join(f"{k}: {v}" for k, v in csvs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
