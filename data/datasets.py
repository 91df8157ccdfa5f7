"""Video and image datasets: sample lists (CSV, folder tree), clip sampling, mixing, bad-file skipping.

`build_video_dataset(data, aug, train)` is the entry point. A sample is a dict
`{"clip": float [C, T, H, W] (or a list of num_clips * num_views of them, clip-major),
  "label": int, "skipped": int, "padded": int}`, where `skipped` counts the broken files (and, with
`filter_short_videos`, the videos shorter than one clip) skipped to produce it, and `padded` how many of
its clips repeat their last frame because the video is shorter than one clip (the training default, as
the reference).

Exact resume: every random draw in `__getitem__` (temporal position, crop, flip, replacement sample, the
sample within a weighted dataset) comes from torch's global RNG or python `random`, which the loader
seeds per (epoch, position). Nothing random is stored on the dataset.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from data.config import DataAugConfig, DataConfig
from data.errors import MissingDataList, NoUsableVideos
from data.transforms import ClipOrViews, make_eval_transform, make_train_transform
from data.video import DecodeError, open_video, resolve_decoder

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
DATASET_TYPES = ("VideoDataset", "ImageDataset")

Sample = Tuple[str, int]  # (path, label)


class TooShort(DecodeError):
    """A video shorter than one clip, with `data.filter_short_videos` on: skipped and counted as skipped."""
Transform = Callable[[torch.Tensor], ClipOrViews]


# ---------------------------------------------------------------------------------------- sample lists
def read_csv_list(csv_path: str) -> List[Sample]:
    """Reference V-JEPA list: `path label` per line, space separated, no header (`path` alone = label 0).

    Relative paths are taken relative to the CSV's folder, so a list travels with its data.
    """
    root = Path(csv_path).parent
    samples: List[Sample] = []
    with open(csv_path) as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise ValueError(
                    f"{csv_path}:{n}: expected `path label` (paths may not contain spaces), got {line!r}"
                )
            try:
                label = int(parts[1]) if len(parts) == 2 else 0
            except ValueError:
                raise ValueError(f"{csv_path}:{n}: label must be an integer, got {parts[1]!r}") from None
            path = parts[0] if os.path.isabs(parts[0]) else str(root / parts[0])
            samples.append((path, label))
    if not samples:
        raise ValueError(f"{csv_path}: no samples")
    return samples


def read_folder(root: str, extensions: Sequence[str]) -> Tuple[List[Sample], List[str]]:
    """Folder tree: one subfolder per class (sorted names -> label ids), files found recursively and
    sorted. A folder with files and no subfolders is one class (label 0). Returns (samples, classes)."""
    base = Path(root)
    exts = tuple(e.lower() for e in extensions)

    def files_in(d: Path) -> List[str]:
        return sorted(str(p) for p in d.rglob("*") if p.is_file() and p.suffix.lower() in exts)

    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        loose = [p.name for p in base.iterdir() if p.is_file() and p.suffix.lower() in exts]
        if loose:
            raise ValueError(f"{root}: has class subfolders and loose files ({loose[:3]}); use one layout")
        classes = [p.name for p in class_dirs]
        samples = [(f, label) for label, d in enumerate(class_dirs) for f in files_in(d)]
    else:
        classes = [base.name]
        samples = [(f, 0) for f in files_in(base)]
    if not samples:
        raise ValueError(f"{root}: no files with extensions {exts}")
    return samples, classes


def load_source(path: str, extensions: Sequence[str]) -> Tuple[List[Sample], Optional[List[str]]]:
    """A CSV list, a folder tree, or one media file (label 0) -> (samples, class names or None)."""
    if os.path.isdir(path):
        return read_folder(path, extensions)
    if os.path.isfile(path):
        if path.lower().endswith(tuple(e.lower() for e in extensions)):
            return [(path, 0)], None
        return read_csv_list(path), None
    raise MissingDataList(f"dataset {path!r} not found (neither a CSV file, a folder nor a media file)")


# ---------------------------------------------------------------------------------------- clip sampling
def frame_step(
    video_fps: float,
    sampling_rate: int,
    fps: Optional[float] = None,
    clip_duration: Optional[float] = None,
    num_frames: int = 16,
) -> int:
    """Frames between sampled frames: `sampling_rate`, or derived from a target `fps` (`ceil(video_fps) //
    fps`) or a clip duration in seconds (`duration * ceil(video_fps) // num_frames`), as V-JEPA 2 does."""
    if fps is not None and clip_duration is not None:
        raise ValueError("set data.fps or data.clip_duration, not both")
    if fps is not None:
        return max(1, int(math.ceil(video_fps) // fps))
    if clip_duration is not None:
        return max(1, int(clip_duration * math.ceil(video_fps) / num_frames))
    if sampling_rate < 1:
        raise ValueError(f"sampling_rate must be >= 1, got {sampling_rate}")
    return sampling_rate


def clip_span(num_frames: int, step: int) -> int:
    """Frames of the video that one clip of `num_frames` frames, `step` apart, covers."""
    return (num_frames - 1) * step + 1


def clip_indices(video_frames: int, num_frames: int, step: int, num_clips: int, random: bool) -> List[List[int]]:
    """Frame indices of `num_clips` clips of `num_frames` frames, `step` apart.

    random (train): clip k starts at a uniform position inside the k-th of `num_clips` equal segments
    (the reference's segment sampling); over the whole video when a segment is shorter than a clip.
    uniform (eval): one centred clip, or clips evenly spaced from the first to the last frame
    (PySlowFast's multi-clip test protocol). A video shorter than a clip repeats its last frame.
    """
    span = clip_span(num_frames, step)
    room = max(video_frames - span, 0)  # latest start that fits
    segment = video_frames // num_clips
    clips = []
    for k in range(num_clips):
        if random:
            if segment >= span:
                start = k * segment + int(torch.randint(0, segment - span + 1, size=(1,)).item())
            else:
                start = int(torch.randint(0, room + 1, size=(1,)).item())
        else:
            start = room // 2 if num_clips == 1 else round(k * room / (num_clips - 1))
        clips.append([min(start + i * step, video_frames - 1) for i in range(num_frames)])
    return clips


# ---------------------------------------------------------------------------------------- datasets
class SampleTable:
    """(path, label) pairs in two numpy arrays instead of a list of tuples: DataLoader workers fork the
    dataset, and touching millions of Python objects there copies their pages (refcounts), a known
    memory blow-up of list-based datasets (pytorch/pytorch#13246)."""

    def __init__(self, samples: Sequence[Sample]):
        encoded = [p.encode("utf-8") for p, _ in samples]
        self._offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)  # [N + 1]
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.labels = np.asarray([label for _, label in samples], dtype=np.int64)  # [N]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Sample:
        a, b = self._offsets[i], self._offsets[i + 1]
        return self._bytes[a:b].tobytes().decode("utf-8"), int(self.labels[i])


def _weighted_slots(sizes: Sequence[int], weights: Sequence[float]) -> np.ndarray:
    """Source id of each of sum(sizes) slots, in proportion to `weights` (largest remainder), interleaved."""
    total = sum(sizes)
    w = np.asarray(weights, dtype=np.float64)
    share = w / w.sum() * total
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(-(share - counts), kind="stable")[: total - counts.sum()]] += 1
    # Interleave: slot j of source k sits at (j + 0.5) / count_k, so an unshuffled pass also mixes.
    pos = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c > 0])
    ids = np.concatenate([np.full(c, k) for k, c in enumerate(counts) if c > 0])
    return ids[np.argsort(pos, kind="stable")]


class ClipDataset(Dataset):
    """Clips from one or several sample lists; broken files are skipped and replaced at random.

    Index -> sample: with one source (or no weights), index i is sample i of the concatenated lists. With
    several sources and `weights`, each index belongs to a source, in proportion to the weights, and the
    sample within it is drawn at random (with replacement, as the reference's weighted sampler).

    Args:
        sources: sample lists (path, label), one per dataset.
        weights: sampling weight per source, or None (by size).
        transform: uint8 `[T, H, W, C]` -> float `[C, T, H, W]` (or a list of views).
        num_frames: frames per clip.
        num_clips: clips per sample (a list is returned when > 1).
        random_clips: random temporal positions (train) or uniform (eval).
        max_consecutive_failures: broken or filtered files in a row before raising.
        classes: class names when known (folder datasets).
    """

    def __init__(
        self,
        sources: Sequence[Sequence[Sample]],
        weights: Optional[Sequence[float]],
        transform: Transform,
        num_frames: int,
        num_clips: int = 1,
        random_clips: bool = True,
        max_consecutive_failures: int = 50,
        classes: Optional[List[str]] = None,
    ):
        if not sources or any(len(s) == 0 for s in sources):
            raise ValueError("every dataset needs at least one sample")
        if num_frames < 1 or num_clips < 1:
            raise ValueError(f"num_frames and num_clips must be >= 1, got {num_frames}, {num_clips}")
        self.samples = SampleTable([s for src in sources for s in src])
        self.source_sizes = [len(s) for s in sources]
        self.source_offsets = np.cumsum([0] + self.source_sizes[:-1]).tolist()
        self._slots: Optional[np.ndarray] = None
        if weights is not None and len(sources) > 1:
            if len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"datasets_weights {list(weights)} must be >= 0, one per dataset ({len(sources)})")
            self._slots = _weighted_slots(self.source_sizes, weights)
        self.transform = transform
        self.num_frames, self.num_clips = num_frames, num_clips
        self.random_clips = random_clips
        self.max_consecutive_failures = max_consecutive_failures
        self.classes = classes
        self.num_classes = len(classes) if classes else int(self.samples.labels.max()) + 1
        # Per process (each DataLoader worker has its own): known-bad sample ids, so a broken file is
        # warned about once and not reopened. Filled in __getitem__; holds no randomness.
        self._broken: Dict[int, str] = {}
        self._filtered: Set[int] = set()
        self._padded = 0  # clips of the last `load` that repeat their last frame (set by load)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> int:
        """Position in `samples` that `index` reads (draws from torch's RNG for weighted sources)."""
        if self._slots is None:
            return index
        k = int(self._slots[index])
        return self.source_offsets[k] + int(torch.randint(0, self.source_sizes[k], size=(1,)).item())

    def load(self, path: str) -> Optional[List[torch.Tensor]]:
        """uint8 clips `[T, H, W, C]` of `path`; None if filtered out; DecodeError if broken."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict[str, object]:
        skipped = 0
        failed: List[str] = []  # this call's consecutive failures, "path (reason)"
        while True:
            sid = self.sample_id(index)
            path, label = self.samples[sid]
            reason = self._broken.get(sid) or ("filtered by duration" if sid in self._filtered else None)
            if reason is None:
                try:
                    clips = self.load(path)
                except DecodeError as e:
                    reason = self._broken[sid] = e.reason
                    logger.warning("skipping %s %s: %s", "short video" if isinstance(e, TooShort) else "broken file",
                                   path, e.reason)
                else:
                    if clips is not None:
                        return {"clip": self._transform(clips), "label": label, "skipped": skipped,
                                "padded": self._padded}
                    self._filtered.add(sid)
                    reason = "filtered by duration"
            skipped += sid in self._broken
            failed.append(f"{path} ({reason})")
            if len(failed) >= self.max_consecutive_failures:
                raise NoUsableVideos(
                    f"{len(failed)} files in a row could not be used (data.max_consecutive_failures="
                    f"{self.max_consecutive_failures}); check the list with `python -m data.check`. "
                    f"Examples: {'; '.join(failed[:5])}"
                )
            index = int(torch.randint(0, len(self), size=(1,)).item())

    def _transform(self, clips: List[torch.Tensor]) -> ClipOrViews:
        out: List[torch.Tensor] = []
        for clip in clips:
            x = self.transform(clip)
            out.extend(x if isinstance(x, list) else [x])
        return out[0] if len(out) == 1 else out


class VideoDataset(ClipDataset):
    """Clips decoded from video files (see ClipDataset for the shared Args).

    Args:
        decoder: `auto`, `decord`, `pyav` or `torchcodec`.
        sampling_rate / fps / clip_duration: frame step (see `frame_step`).
        filter_short_videos: skip videos shorter than one clip (counted in `skipped`) instead of padding
            them with their last frame.
        min_duration / max_duration: skip videos outside this duration range (seconds).
        decoder_threads: decoder threads per video (0 = 1 inside DataLoader workers, else the backend's
            default of one per core).
    """

    def __init__(
        self,
        sources: Sequence[Sequence[Sample]],
        weights: Optional[Sequence[float]],
        transform: Transform,
        num_frames: int,
        num_clips: int = 1,
        random_clips: bool = True,
        max_consecutive_failures: int = 50,
        classes: Optional[List[str]] = None,
        decoder: str = "auto",
        sampling_rate: int = 4,
        fps: Optional[float] = None,
        clip_duration: Optional[float] = None,
        filter_short_videos: bool = False,
        min_duration: Optional[float] = None,
        max_duration: Optional[float] = None,
        decoder_threads: int = 0,
    ):
        super().__init__(
            sources, weights, transform, num_frames, num_clips, random_clips, max_consecutive_failures, classes
        )
        self.decoder = resolve_decoder(decoder)
        if fps is not None and clip_duration is not None:
            raise ValueError("set data.fps or data.clip_duration, not both")
        self.sampling_rate, self.fps, self.clip_duration = sampling_rate, fps, clip_duration
        self.filter_short_videos = filter_short_videos
        self.min_duration, self.max_duration = min_duration, max_duration
        self.decoder_threads = decoder_threads

    def load(self, path: str) -> Optional[List[torch.Tensor]]:
        threads = self.decoder_threads
        if threads == 0 and get_worker_info() is not None:
            threads = 1  # the DataLoader's workers already occupy the cores; more threads only contend
        with open_video(path, self.decoder, threads=threads) as reader:
            n, video_fps = reader.num_frames, reader.fps
            duration = n / video_fps
            if (self.min_duration is not None and duration < self.min_duration) or (
                self.max_duration is not None and duration > self.max_duration
            ):
                return None
            step = frame_step(video_fps, self.sampling_rate, self.fps, self.clip_duration, self.num_frames)
            span = clip_span(self.num_frames, step)
            if self.filter_short_videos and n < span:
                raise TooShort(path, f"shorter than one clip ({n} frames, a clip spans {span})")
            self._padded = self.num_clips if n < span else 0
            clips = clip_indices(n, self.num_frames, step, self.num_clips, self.random_clips)
            frames = reader.get_frames([i for c in clips for i in c])  # [num_clips * T, H, W, C], one pass
        return list(frames.split(self.num_frames))


class ImageDataset(ClipDataset):
    """Images as clips: the frame repeated `num_frames` times (see ClipDataset for Args).

    The transform runs on the single frame and the result is repeated, which gives the same clip as
    transforming the repeated frames (one draw per clip), up to random-erasing noise.
    """

    def load(self, path: str) -> Optional[List[torch.Tensor]]:
        frame = load_image(path)  # [1, H, W, C]
        return [frame] * self.num_clips

    def _transform(self, clips: List[torch.Tensor]) -> ClipOrViews:
        out = super()._transform(clips)
        views = out if isinstance(out, list) else [out]
        views = [v.repeat(1, self.num_frames, 1, 1) for v in views]  # [C, 1, H, W] -> [C, T, H, W]
        return views[0] if len(views) == 1 else views


def load_image(path: str) -> torch.Tensor:
    """RGB image -> uint8 `[1, H, W, C]`; DecodeError if missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DecodeError(path, "missing file")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DecodeError(path, f"cannot read image: {e}") from e
    return torch.from_numpy(arr.copy()).unsqueeze(0)


def build_video_dataset(data: DataConfig, aug: DataAugConfig, train: bool, uint8: bool = False) -> Dataset:
    """The dataset `data` describes (`data.datasets` must be non-empty; the generated motion videos live in
    data/generated/synthetic.py). train=True: random clips and train augmentation; False: uniform clips, eval
    crops (`data.num_views` views). uint8=True (train only): unnormalised uint8 clips (`TrainTransform`)."""
    if not data.datasets:
        raise ValueError("data.datasets is empty: give CSV files or folders (or use the synthetic data)")
    if data.dataset_type not in DATASET_TYPES:
        raise ValueError(f"data.dataset_type must be one of {DATASET_TYPES}, got {data.dataset_type!r}")
    is_image = data.dataset_type == "ImageDataset"
    extensions = IMAGE_EXTENSIONS if is_image else VIDEO_EXTENSIONS
    loaded = [load_source(p, extensions) for p in data.datasets]
    sources = [s for s, _ in loaded]
    # Class names only mean something for a single folder dataset; mixed lists share integer labels.
    classes = loaded[0][1] if len(loaded) == 1 else None
    transform = (
        make_train_transform(aug, data.crop_size, uint8=uint8)
        if train
        else make_eval_transform(aug, data.crop_size, num_views=data.num_views)
    )
    if is_image:
        dataset: ClipDataset = ImageDataset(
            sources, data.datasets_weights, transform, data.num_frames, num_clips=data.num_clips,
            random_clips=train, max_consecutive_failures=data.max_consecutive_failures, classes=classes,
        )
    else:
        dataset = VideoDataset(
            sources, data.datasets_weights, transform, data.num_frames, num_clips=data.num_clips,
            random_clips=train, max_consecutive_failures=data.max_consecutive_failures, classes=classes,
            decoder=data.decoder, sampling_rate=data.sampling_rate, fps=data.fps,
            clip_duration=data.clip_duration, filter_short_videos=data.filter_short_videos,
            min_duration=data.min_duration, max_duration=data.max_duration,
            decoder_threads=data.decoder_threads,
        )
    logger.info(
        "%s: %d samples from %d source(s), %d classes, %s clips",
        type(dataset).__name__, len(dataset), len(sources), dataset.num_classes, "random" if train else "uniform",
    )
    return dataset
