"""Spatial level 0: a feature-map encoder and a convolutional, action-conditioned predictor.

The state stays a flat vector `[..., D]`, D = C x h x w (the map flattened channel-major), so the losses,
levels, planners and probes that expect `[B, T, D]` take it unchanged; only the encoder, the predictor and
the variance/covariance terms (`channel_features`) know it is a map.

Why a map (PLDM, arXiv 2502.14819; eb_jepa's Two-Rooms world model keep one): with a global vector the
predictor must read a wall's position out of a code and apply it; with a map, "the agent does not enter a
wall cell" is a local rule, the same at every position, which a convolution learns once and applies to
walls in places it never saw.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class ConvMapEncoder(nn.Module):
    """Image `[B, 3, S, S]` -> map `[B, C, h, h]` flattened to `[B, C*h*h]`, h = map_size.

    A patchify convolution (kernel = stride = S / h: one map cell per patch), two 3x3 convolutions (each cell
    sees its 5 x 5 neighbourhood: where the agent is relative to a wall next to it) and a 1x1 projection to
    C channels. BatchNorm as `ConvEncoder` (frames differ in a few agent pixels around a constant scene).

    Args:
        in_chans: image channels. dim: C, channels per cell. width: hidden channels. img_size: S.
        map_size: h.
    """

    def __init__(self, in_chans: int = 3, dim: int = 8, width: int = 32, img_size: int = 64, map_size: int = 8):
        super().__init__()
        if map_size < 2 or img_size % map_size:
            raise ValueError(f"encoder.map_size {map_size} must be >= 2 and divide data.env.img_size {img_size}")
        p = img_size // map_size
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, width, p, stride=p), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, dim, 1),
        )
        self.map_shape: Tuple[int, int, int] = (dim, map_size, map_size)
        self.dim = dim * map_size * map_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)  # [B, C, h, w] -> [B, C*h*w]


PADDINGS = ("zeros", "replicate")


class ConvPredictor(nn.Module):
    """Markov convolutional predictor with `ACPredictor`'s interface: (z `[B, T, D]`, a `[B, T, A]`) ->
    z_next `[B, T, D]`, output t a prediction of z_{t+1} from (z_t, a_t) alone.

    Each state is unflattened to its map `[C, h, w]`, the action is broadcast over the map as A more
    channels, a 3x3 input convolution, `depth` residual blocks (3x3, GELU, 3x3) and a 3x3 output convolution
    give the change: z + delta, delta zero at initialisation (the identity dynamics, as `ACPredictor`).
    Translation-equivariant: a rule learnt at one wall applies wherever a wall is.

    Args:
        map_shape: (C, h, w) of the state. action_dim: A. width: hidden channels. depth: residual blocks.
        max_frames: accepted for the interface (`rollout`'s context cap); a Markov predictor reads one frame.
        padding: "zeros" or "replicate" (border cells repeated): with zeros the map's edge is visible as such
            and the predictor can learn to stop the agent there from the padding alone, a rule that does not
            carry to walls inside the map; replicated, the border wall is seen as wall cells like any other.
    """

    def __init__(self, map_shape: Tuple[int, int, int], action_dim: int, width: int = 16, depth: int = 2,
                 max_frames: int = 16, padding: str = "zeros"):
        super().__init__()
        if width < 1 or depth < 0:
            raise ValueError(f"conv predictor needs width >= 1 and depth >= 0, got {width}, {depth}")
        if padding not in PADDINGS:
            raise ValueError(f"predictor.padding {padding!r} unknown; valid: {list(PADDINGS)}")
        self.map_shape, self.max_frames = tuple(map_shape), max_frames
        C = map_shape[0]

        def conv(i: int, o: int) -> nn.Conv2d:
            return nn.Conv2d(i, o, 3, padding=1, padding_mode=padding)

        self.inp = conv(C + action_dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.GELU(), conv(width, width), nn.GELU(), conv(width, width))
                                    for _ in range(depth))
        self.out = conv(width, C)
        nn.init.zeros_(self.out.weight)  # start as the identity dynamics z_{t+1} = z_t
        nn.init.zeros_(self.out.bias)

    def step(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """z `[N, D]`, a `[N, A]` -> z_next `[N, D]`."""
        C, h, w = self.map_shape
        m = rearrange(z, "n (c y x) -> n c y x", c=C, y=h, x=w)
        x = self.inp(torch.cat([m, a[:, :, None, None].expand(-1, -1, h, w)], 1))  # [N, width, h, w]
        for blk in self.blocks:
            x = x + blk(x)
        return z + self.out(F.gelu(x)).flatten(1)

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        B, T, D = z.shape
        if D != self.map_shape[0] * self.map_shape[1] * self.map_shape[2]:
            raise ValueError(f"state width {D} is not the map {self.map_shape} flattened")
        if a.shape[:2] != (B, T):
            raise ValueError(f"actions {tuple(a.shape)} do not match states {tuple(z.shape)} in batch and time")
        out = self.step(rearrange(z, "b t d -> (b t) d"), rearrange(a, "b t a -> (b t) a"))
        return rearrange(out, "(b t) d -> b t d", b=B)

    def rollout(self, z_ctx: torch.Tensor, actions: torch.Tensor, context: Optional[int] = None) -> torch.Tensor:
        """As `ACPredictor.rollout`: z_ctx `[B, C, D]`, actions `[B, C-1+H, A]` -> predictions `[B, H, D]` for
        the H steps after the last observed frame, fed back. Markov: only the newest frame is read, so the
        earlier context frames and their actions (and `context`) change nothing."""
        C = z_ctx.shape[1]
        H = actions.shape[1] - (C - 1)
        if H < 1:
            raise ValueError(f"rollout needs more actions ({actions.shape[1]}) than past frames ({C - 1})")
        z, preds = z_ctx[:, -1], []
        for h in range(H):
            z = self.step(z, actions[:, C - 1 + h])
            preds.append(z)
        return torch.stack(preds, 1)


def channel_features(z: torch.Tensor, map_shape: Tuple[int, int, int]) -> torch.Tensor:
    """Flat map states `[..., C*h*w]` -> `[..., h*w, C]`: each cell a sample of C features, so that the
    variance/covariance terms act per channel across cells and states (a per-cell hinge would demand that
    every cell vary within an episode, i.e. that every cell encode the agent wherever it is)."""
    C, h, w = map_shape
    return rearrange(z, "... (c y x) -> ... (y x) c", c=C, y=h, x=w)
