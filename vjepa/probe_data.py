"""The probe job's data side: labelled splits as (segments x views) clip stacks, their loaders, and the
frozen encoder's pass over them (`vjepa/probe_train.py` trains the probes on what this yields)."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from data.config import DataConfig
from data.generated.motion_benchmark import motion_split
from vjepa.probe import join_segments
from vjepa.probe_config import ProbeConfig, ProbeDataConfig
from vjepa.probe_dist import Ranks, ShardedBatches


def is_motion_benchmark(d: ProbeDataConfig) -> bool:
    return not (d.dataset_train or d.dataset_val or d.root_path or d.image_folder)


# ------------------------------------------------------------------------------------------ data
class ViewsDataset(Dataset):
    """Wraps a dataset whose sample clip is one tensor or a clip-major list of S*V tensors, and returns
    `(clips [S, V, C, T, H, W], label)`."""

    def __init__(self, dataset: Dataset, num_segments: int, num_views: int):
        self.dataset, self.S, self.V = dataset, num_segments, num_views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        s = self.dataset[i]
        clips = s["clip"] if isinstance(s["clip"], (list, tuple)) else [s["clip"]]
        if len(clips) != self.S * self.V:
            raise ValueError(f"sample {i}: {len(clips)} clips, expected {self.S} segments x {self.V} views")
        x = torch.stack(clips)  # [S*V, C, T, H, W]
        return x.reshape(self.S, self.V, *x.shape[1:]), int(s["label"])


def build_split(cfg: ProbeConfig, train: bool, frames: int, crop: int) -> Tuple[ViewsDataset, int]:
    """The train or val split as a `ViewsDataset` and the class count."""
    d, o = cfg.data, cfg.optimization
    segments = d.num_segments if (o.attend_across_segments or not train) else 1
    views = 1 if train else d.num_views_per_segment
    path = d.dataset_train if train else d.dataset_val
    if d.root_path or d.image_folder:  # reference image probe layout (IN1K)
        path = str(Path(d.root_path or "") / (d.image_folder or "") / ("train" if train else "val"))
    if is_motion_benchmark(d):
        m = d.motion
        if (m.num_frames, m.size) != (frames, crop):
            raise ValueError(f"motion benchmark clips are {m.num_frames}x{m.size}px but the probe expects "
                             f"{frames}x{crop}px: set data.motion.num_frames / data.motion.size")
        if segments * views != 1:
            raise ValueError("the motion benchmark has one clip and one view per video")
        ds = motion_split(m, "train" if train else "val", mean=cfg.data_aug.mean, std=cfg.data_aug.std)
        return ViewsDataset(ds, 1, 1), d.num_classes or m.num_classes
    if path is None:
        raise ValueError("give both data.dataset_train and data.dataset_val, or neither (motion benchmark)")
    from data.datasets import build_video_dataset

    image = cfg.eval_name == "image_classification_frozen" or d.dataset_type == "ImageDataset"
    dc = DataConfig(dataset_type="ImageDataset" if image else d.dataset_type, datasets=[path],
                    num_clips=segments, num_views=views, num_frames=frames,
                    sampling_rate=cfg.pretrain.frame_step or d.frame_step, clip_duration=cfg.pretrain.clip_duration,
                    crop_size=crop, num_workers=d.num_workers)
    ds = build_video_dataset(dc, cfg.data_aug, train)
    return ViewsDataset(ds, segments, views), d.num_classes or ds.num_classes


def _collate(batch):
    clips, labels = zip(*batch)
    return torch.stack(clips), torch.as_tensor(labels, dtype=torch.long)  # [B, S, V, C, T, H, W], [B]


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, epoch: int, num_workers: int,
                ranks: Ranks = Ranks()) -> DataLoader:
    """This rank's share of each global batch; each epoch's order is a function of (seed, epoch): resumable."""
    return DataLoader(ds, batch_sampler=ShardedBatches(len(ds), batch_size, shuffle, seed, epoch, ranks),
                      num_workers=num_workers, collate_fn=_collate)


# ------------------------------------------------------------------------------------------ encoding
@torch.no_grad()
def encode(encoder: nn.Module, clips: torch.Tensor, attend_across_segments: bool, autocast) -> torch.Tensor:
    """clips `[B, S, V, C, T, H, W]` -> probe inputs `[B, P, M, D]` (see `vjepa.probe.join_segments`)."""
    B, S, V = clips.shape[:3]
    with autocast():
        tokens = encoder(clips.flatten(0, 2))  # [B*S*V, N, D]
    return join_segments(tokens.float().reshape(B, S, V, *tokens.shape[1:]), attend_across_segments)


@torch.no_grad()
def encode_dataset(encoder: nn.Module, ds: Dataset, batch_size: int, attend_across_segments: bool, device,
                   autocast, num_workers: int = 0, dtype=torch.float16,
                   ranks: Ranks = Ranks()) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every sample of `ds` once, in order -> (inputs `[M, P, N, D]` stored as `dtype`, labels `[M]`).
    With several ranks each encodes its contiguous share and every rank gets the whole result."""
    feats, labels = [], []
    for clips, y in make_loader(Subset(ds, ranks.chunk(len(ds))), batch_size, False, 0, 0, num_workers):
        feats.append(encode(encoder, clips.to(device), attend_across_segments, autocast).to(dtype).cpu())
        labels.append(y)
    return ranks.gather_chunks(torch.cat(feats), len(ds)), ranks.gather_chunks(torch.cat(labels), len(ds))


