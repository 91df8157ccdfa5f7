"""A cheap representation-quality score to log while pretraining: k-NN top-1 on the motion benchmark.

The monitor renders a small labelled train/val set of motion videos once (uint8, a few MB), and each
call encodes both with the current (target) encoder, mean-pools the tokens and scores a weighted k-NN.
It needs no training, so it can run every few hundred steps; its absolute value is lower than an
attentive probe's, but its trend tells whether the features are learning motion.

    monitor = MotionKNNMonitor(num_frames=16, size=64)          # once, before the loop
    metrics["knn_top1"] = monitor.score(target_encoder)         # every meta.eval_freq steps
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn as nn

from data.generated.motion_benchmark import IMAGENET_MEAN, IMAGENET_STD, MotionBenchmarkConfig, motion_split
from data.transforms import to_float_clip
from vjepa.probe import knn_predict

logger = logging.getLogger(__name__)


class MotionKNNMonitor:
    """k-NN score of an encoder on a fixed, small motion benchmark.

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

    @torch.no_grad()
    def score(self, encoder: nn.Module, device: Optional[torch.device] = None) -> float:
        """k-NN top-1 (%) of `encoder` on the val clips, with the train clips as the bank. The encoder's
        train/eval mode is restored afterwards."""
        was_training = encoder.training
        encoder.eval()
        try:
            bank = self.features(encoder, "train", device)
            probs = knn_predict(bank, self.labels["train"], self.features(encoder, "val", device), self.num_classes,
                                k=self.k)
        finally:
            encoder.train(was_training)
        return 100.0 * float((probs.argmax(-1) == self.labels["val"]).float().mean())
