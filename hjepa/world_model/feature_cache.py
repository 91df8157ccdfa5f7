"""Features of a frozen frame encoder on every state of a trajectory dataset, computed once and cached.

With a frozen encoder (a pretrained V-JEPA ViT, `encoder.frozen: true`) the level-0 training windows need
only its output: encoding every frame of every window at every step costs the ViT forward again and again
(the cost of a frozen-ViT world model on CPU), while the dataset holds only N x (T+1) distinct states.

    z = encode_dataset(wm.encoder, data, cfg.data.env, batch=512, cache_dir="data_cache/features")
    z[n, t]  # the encoder's output on frame t of trajectory n: [N, T+1, D]

The cache file is named by two hashes: of the dataset's arrays and the world's render settings (so it is
keyed by the trajectory dataset whatever config made it), and of the encoder's weights and buffers (so a
different checkpoint, or a random init, never reads another encoder's features). Written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from data.generated.envs import EnvConfig, render
from data.generated.trajectories import TrajectoryWindows

logger = logging.getLogger(__name__)

_DATA_KEYS = ("states", "layout", "walls", "distractors")  # what the rendered frames depend on


def dataset_hash(data: Dict[str, np.ndarray], env: EnvConfig) -> str:
    """Hash of everything the rendered frames depend on: the state arrays and the world's settings."""
    h = hashlib.sha1(json.dumps(asdict(env), sort_keys=True).encode())
    for k in _DATA_KEYS:
        a = np.ascontiguousarray(data[k])
        h.update(f"{k}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def encoder_hash(encoder: nn.Module) -> str:
    """Hash of the encoder's class, parameters and buffers (non-persistent ones too: normalisation)."""
    h = hashlib.sha1(type(encoder).__name__.encode())
    tensors = dict(encoder.named_parameters())
    tensors.update(dict(encoder.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


@torch.no_grad()
def _encode(encoder: nn.Module, data: Dict[str, np.ndarray], env: EnvConfig, batch: int) -> torch.Tensor:
    states = data["states"]  # [N, T+1, 2]
    N, T1 = states.shape[:2]
    walls_of = data["walls"][data["layout"]]  # [N, G, G]
    flat = states.reshape(N * T1, 2)
    dis = data["distractors"].reshape(N * T1, *data["distractors"].shape[2:])  # [N (T+1), K, 4]
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    for lo in range(0, N * T1, batch):
        idx = np.arange(lo, min(lo + batch, N * T1))
        frames = render(walls_of[idx // T1], flat[idx], env, dis[idx])  # [b, 3, S, S]
        out.append(encoder(torch.from_numpy(frames).to(device)).float().cpu())
    encoder.train(was_training)
    return torch.cat(out).view(N, T1, -1)  # [N, T+1, D]


def encode_dataset(encoder: nn.Module, data: Dict[str, np.ndarray], env: EnvConfig, batch: int = 256,
                   cache_dir: Optional[str | Path] = None) -> torch.Tensor:
    """The encoder's output on every state's frame -> float32 `[N, T+1, D]` (CPU), from the cache when
    `cache_dir` holds it for this dataset and these weights (computed and saved otherwise).

    Args:
        encoder: a frame encoder `[B, 3, S, S]` -> `[B, D]` (eval mode is used; its mode is restored).
        data: a `trajectories.generate` dataset. env: the world that renders it. batch: frames per forward.
        cache_dir: folder of cached features (None = compute, no cache).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{env.name}-{dataset_hash(data, env)}-{encoder_hash(encoder)}.pt"
        if path.is_file():
            z = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(z.shape[:2]) != tuple(data["states"].shape[:2]):
                raise ValueError(f"{path}: cached features {tuple(z.shape)} do not fit the dataset "
                                 f"{data['states'].shape[:2]}; delete the file")
            return z
    z = _encode(encoder, data, env, batch)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(z, tmp)
        tmp.replace(path)  # atomic: a killed run never leaves half a cache file
        logger.info("cached features %s of %d frames in %s", tuple(z.shape), z.shape[0] * z.shape[1], path)
    return z


class FeatureWindows(TrajectoryWindows):
    """`data.generated.trajectories.TrajectoryWindows` on cached features: the same windows, index for
    index, with `features` `[B, W, F]` (= `z[n, t]`) in place of rendered `frames`.

    `batch(idx)` -> features `[B, W, F]` float32, actions `[B, W-1, stride, 2]`, states `[B, W, 2]`.

    Args:
        z: `encode_dataset` output `[N, T+1, F]` for `data`. data: `generate` output. window: states per
        window. stride: steps between consecutive states.
    """

    def __init__(self, z: torch.Tensor, data: Dict[str, np.ndarray], window: int, stride: int = 1):
        if tuple(z.shape[:2]) != tuple(data["states"].shape[:2]):
            raise ValueError(f"features {tuple(z.shape)} do not fit the dataset's states {data['states'].shape[:2]}")
        super().__init__(data, None, window, stride)
        self.z = z

    def observe(self, n: np.ndarray, t: np.ndarray) -> Dict[str, torch.Tensor]:
        return {"features": self.z[torch.from_numpy(n[:, None]), torch.from_numpy(t)]}
