"""Position encodings for video token grids laid out as (t, h, w), w fastest.

Fixed sin-cos tables follow the V-JEPA reference layout (temporal block first, then height, then width)
so official checkpoints, which store the table, load unchanged. RoPE follows V-JEPA 2: the head dim is
split into three equal even chunks rotated by the t, h and w coordinate; leftover dims are not rotated.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Positions of any shape `[...]` -> float64 `[..., dim]` as (sin | cos) halves, frequencies
    1 / 10000^(2i/dim). Used for the video grid tables here and the time steps of hjepa/levels.py."""
    if dim % 2:
        raise ValueError(f"sin-cos dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = pos.double().unsqueeze(-1) * omega  # [..., dim/2]
    return torch.cat([out.sin(), out.cos()], dim=-1)


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int, uniform_power: bool = False) -> torch.Tensor:
    """Fixed 3D table `[T*H*W, dim]`; `uniform_power` gives t, h and w equal shares (V-JEPA recipe)."""
    if uniform_power:
        dt = dh = dw = int(math.ceil(dim / 6) * 2)
    else:
        dh = dw = dim // 4
        dt = dim // 2
    t, h, w = (g.flatten() for g in torch.meshgrid(
        torch.arange(grid_t), torch.arange(grid_h), torch.arange(grid_w), indexing="ij"))  # each [T*H*W]
    emb = torch.cat([sincos_1d(dt, t), sincos_1d(dh, h), sincos_1d(dw, w)], dim=1)
    return emb[:, :dim].float()  # [T*H*W, dim]


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2D table `[H*W, dim]` (h half, then w half)."""
    h, w = (g.flatten() for g in torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij"))
    return torch.cat([sincos_1d(dim // 2, h), sincos_1d(dim // 2, w)], dim=1).float()


def resize_pos_embed(
    pos: torch.Tensor, src_grid: tuple[int, int, int], dst_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Trilinear resize of a `[1, N, D]` table from one (t, h, w) grid to another, as the reference
    does for clips of another length or resolution than the one the model was built for."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    t, h, w = src_grid
    x = pos.reshape(1, t, h, w, -1).permute(0, 4, 1, 2, 3)  # [1, D, T, H, W]
    x = F.interpolate(x.float(), size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return x.permute(0, 2, 3, 4, 1).reshape(1, -1, pos.shape[-1]).to(pos.dtype)  # [1, N', D]


def grid_coords(grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """`[N, 3]` integer (t, h, w) coordinates of the flattened grid."""
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(
        torch.arange(t, device=device), torch.arange(h, device=device), torch.arange(w, device=device),
        indexing="ij",
    )
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)


def rope_rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of `x [..., N, d]` by angles from `pos [..., N]`.

    The angle table is laid out [w_0 .. w_{d/2-1}, w_0 .. w_{d/2-1}] (concatenated), not pair by pair: an
    oddity of the released V-JEPA 2 code that its weights were trained with (the Hugging Face port keeps
    it too), so official V-JEPA 2 checkpoints only give their features with this layout. With it the two
    members of a pair turn by different angles, so unlike textbook RoPE, norms are not preserved exactly
    and scores are not purely relative; compatibility with the released weights wins here."""
    d = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(d // 2, device=x.device, dtype=torch.float32) / (d / 2.0))
    angle = pos.unsqueeze(-1).float() * omega  # [..., N, d/2]
    sin = torch.cat([angle.sin(), angle.sin()], dim=-1).to(x.dtype)
    cos = torch.cat([angle.cos(), angle.cos()], dim=-1).to(x.dtype)
    pairs = x.unflatten(-1, (-1, 2))  # [..., N, d/2, 2]
    rot = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + rot * sin


def apply_rope_3d(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """x `[B, heads, N, head_dim]`, coords `[B, N, 3]` (t, h, w) -> x with 3D RoPE applied."""
    head_dim = x.shape[-1]
    c = 2 * ((head_dim // 3) // 2)  # equal even chunk per axis
    coords = coords.unsqueeze(1)  # [B, 1, N, 3], broadcast over heads
    parts = [rope_rotate(x[..., i * c:(i + 1) * c], coords[..., i]) for i in range(3)]
    return torch.cat(parts + [x[..., 3 * c:]], dim=-1)
