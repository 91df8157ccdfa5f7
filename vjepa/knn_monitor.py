"""Cheap representation-quality scores to log while pretraining: the motion benchmark (`MotionKNNMonitor`)
or the user's own labelled lists (`ListMonitor`).

The motion monitor renders a small labelled train/val set of motion videos once (uint8, a few MB), and
each call encodes both with the current (target) encoder, mean-pools the tokens and scores a weighted
k-NN and a ridge-regression linear readout (closed form, best of a small ridge grid). Neither needs SGD,
so they can run every few hundred steps (a few seconds for vit_micro on 2 CPU cores); their absolute values are lower
than an attentive probe's, but their trend tells whether the features are learning motion and when
longer training stops helping. The pretraining job scores the encoder before the first step too, so the
log starts with the random-init value.

    monitor = MotionKNNMonitor(num_frames=16, size=64)          # once, before the loop
    metrics.update(monitor.scores(target_encoder))              # every meta.eval_freq steps
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from data.generated.motion_benchmark import IMAGENET_MEAN, IMAGENET_STD, MotionBenchmarkConfig, motion_split
from data.transforms import to_float_clip
from vjepa.probe import knn_predict

logger = logging.getLogger(__name__)


class QualityMonitor(ABC):
    """k-NN and ridge-readout scores of an encoder's mean-pooled tokens: a subclass fills `labels`,
    `num_classes`, `k` and provides `features(encoder, split, device)` for the "train" and "val" splits."""

    labels: Dict[str, torch.Tensor]
    num_classes: int
    k: int

    @abstractmethod
    def features(self, encoder: nn.Module, split: str, device: Optional[torch.device] = None) -> torch.Tensor:
        """Mean-pooled tokens `[M, D]` of one split, in the order of `labels[split]`."""

    @torch.no_grad()
    def scores(self, encoder: nn.Module, device: Optional[torch.device] = None) -> Dict[str, float]:
        """{"knn_top1", "linear_top1"} (%) of `encoder` on the val clips, fitted on the train clips. The
        encoder's train/eval mode is restored afterwards."""
        was_training = encoder.training
        encoder.eval()
        try:
            bank, val = self.features(encoder, "train", device), self.features(encoder, "val", device)
        finally:
            encoder.train(was_training)
        probs = knn_predict(bank, self.labels["train"], val, self.num_classes, k=self.k)
        yv = self.labels["val"]
        return {"knn_top1": 100.0 * float((probs.argmax(-1) == yv).float().mean()),
                "linear_top1": ridge_top1(bank, self.labels["train"], val, yv, self.num_classes)}

    def score(self, encoder: nn.Module, device: Optional[torch.device] = None) -> float:
        """k-NN top-1 (%) alone."""
        return self.scores(encoder, device)["knn_top1"]


class MotionKNNMonitor(QualityMonitor):
    """The scores on a fixed, small motion benchmark, rendered once and held as uint8.

    Args:
        num_frames / size: clip geometry (the pretraining clips').
        num_speeds: speed classes of the benchmark (classes = 8 x num_speeds).
        num_train / num_val: labelled clips in the k-NN bank / scored.
        k: neighbours. batch_size: clips per encoder call.
        mean / std: the pretraining normalisation.
        seed: benchmark seed (its splits never overlap the pretraining videos).
    """

    def __init__(self, num_frames: int, size: int, num_speeds: int = 2, num_train: int = 512, num_val: int = 256,
                 k: int = 20, batch_size: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, seed: int = 0):
        cfg = MotionBenchmarkConfig(num_train=num_train, num_val=num_val, num_frames=num_frames, size=size,
                                    num_speeds=num_speeds, seed=seed)
        self.num_classes, self.k, self.batch_size = cfg.num_classes, k, batch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.clips, self.labels = {}, {}
        for split in ("train", "val"):
            ds = motion_split(cfg, split, normalize=False)
            self.clips[split] = torch.stack([ds.clip(i) for i in range(len(ds))])  # uint8 [M, T, H, W, C]
            self.labels[split] = torch.tensor([ds.label_of(i) for i in range(len(ds))])

    @torch.no_grad()
    def features(self, encoder: nn.Module, split: str, device: Optional[torch.device] = None) -> torch.Tensor:
        """Mean-pooled tokens `[M, D]` of one split."""
        device = device or next(encoder.parameters()).device
        out = []
        for chunk in self.clips[split].split(self.batch_size):
            x = torch.stack([to_float_clip(c, self.mean, self.std) for c in chunk]).to(device)  # [b, C, T, H, W]
            out.append(encoder(x).float().mean(dim=1).cpu())  # [b, N, D] -> [b, D]
        return torch.cat(out)


class ListMonitor(QualityMonitor):
    """The same scores on the user's own labelled clips: two reference-format lists (`path label` CSVs
    or class folders), read with the evaluation transform (centre crop, one uniform clip per video) at
    every call, so nothing is held in memory. At most `max_clips` videos of each list are used (the first
    ones: keep the lists small and class-balanced, e.g. 10-50 videos per class).

    Args:
        train_list / val_list: the k-NN bank and ridge fit / the scored clips. data / aug: the pretraining
            data and augmentation sections (clip geometry, decoder, normalisation).
        k / batch_size: as `MotionKNNMonitor`. max_clips: videos per list.
    """

    def __init__(self, train_list: str, val_list: str, data, aug, k: int = 20, batch_size: int = 32,
                 max_clips: int = 512):
        import copy

        from torch.utils.data import Subset

        from data.datasets import build_video_dataset

        self.k, self.batch_size = k, batch_size
        self.datasets, self.labels = {}, {}
        for split, path in (("train", train_list), ("val", val_list)):
            d = copy.deepcopy(data)
            d.datasets, d.datasets_weights, d.num_clips, d.num_views = [path], None, 1, 1
            full = build_video_dataset(d, aug, train=False)
            n = min(len(full), max_clips)
            self.datasets[split] = Subset(full, range(n))
            self.labels[split] = torch.as_tensor(full.samples.labels[:n])  # from the list: nothing decoded here
        self.num_classes = int(max(self.labels["train"].max(), self.labels["val"].max())) + 1

    @torch.no_grad()
    def features(self, encoder: nn.Module, split: str, device: Optional[torch.device] = None) -> torch.Tensor:
        from torch.utils.data import DataLoader

        from data.collate import collate_samples

        device = device or next(encoder.parameters()).device
        out = []
        for batch in DataLoader(self.datasets[split], batch_size=self.batch_size, collate_fn=collate_samples):
            out.append(encoder(batch["clip"].to(device)).float().mean(dim=1).cpu())  # [b, N, D] -> [b, D]
        return torch.cat(out)


def ridge_top1(xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, num_classes: int,
               alphas: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> float:
    """Best val top-1 (%) over `alphas` of a ridge regression from standardised features `[M, D]` to
    one-hot labels (a linear readout in closed form; alpha is relative to the mean feature variance)."""
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv = ((xt - mu) / sd).double(), ((xv - mu) / sd).double()
    xt1 = torch.cat([xt, torch.ones(len(xt), 1, dtype=xt.dtype)], 1)  # [M, D + 1] with a bias column
    xv1 = torch.cat([xv, torch.ones(len(xv), 1, dtype=xv.dtype)], 1)
    targets = torch.nn.functional.one_hot(yt, num_classes).double()
    gram, rhs = xt1.T @ xt1, xt1.T @ targets
    best = 0.0
    for a in alphas:
        w = torch.linalg.solve(gram + a * len(xt) * torch.eye(len(gram), dtype=gram.dtype), rhs)
        best = max(best, 100.0 * float(((xv1 @ w).argmax(-1) == yv).double().mean()))
    return best
