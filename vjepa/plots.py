"""PNG figures written into run folders (matplotlib, Agg backend)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_curves(metrics_csv: Path, out_png: Path, keys: Sequence[str] = ("loss",)) -> None:
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax.plot(*zip(*pts))
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_masks(clip: torch.Tensor, masks_ctx: Sequence[torch.Tensor], masks_tgt: Sequence[torch.Tensor],
               grid: tuple[int, int, int], patch_size: int, tubelet_size: int, mean: Sequence[float],
               std: Sequence[float], out_png: Path, max_cols: int = 8) -> None:
    """One row per mask config, one column per token time step: context tokens as they are, target tokens
    tinted red, tokens in neither (dropped by equal-length truncation) greyed out."""
    t, h, w = grid
    m = torch.as_tensor(mean).view(-1, 1, 1, 1)
    s = torch.as_tensor(std).view(-1, 1, 1, 1)
    frames = (clip.float().cpu() * s + m).clamp(0, 1)[:, ::tubelet_size]  # [C, t, H, W]
    cols = list(range(t))[:: max(1, t // max_cols)][:max_cols]
    plt = _pyplot()
    fig, axes = plt.subplots(len(masks_ctx), len(cols), figsize=(1.6 * len(cols), 1.7 * len(masks_ctx)), squeeze=False)
    for row, (mc, mt) in enumerate(zip(masks_ctx, masks_tgt)):
        state = torch.zeros(t * h * w)  # 0 dropped, 1 context, 2 target
        state[mc.cpu()] = 1
        state[mt.cpu()] = 2
        state = state.view(t, h, w).repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
        for col, ti in enumerate(cols):
            img = frames[:, ti].permute(1, 2, 0).clone()  # [H, W, C]
            st = state[ti][: img.shape[0], : img.shape[1]]
            img[st == 2] = 0.5 * img[st == 2] + 0.5 * torch.tensor([1.0, 0.1, 0.1])
            img[st == 0] = 0.3 * img[st == 0] + 0.7 * torch.tensor([0.6, 0.6, 0.6])
            ax = axes[row][col]
            ax.imshow(img.numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={ti}", fontsize=8)
        axes[row][0].set_ylabel(f"mask {row}\nctx {len(mc)} / tgt {len(mt)}", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
