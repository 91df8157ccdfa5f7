"""PNG figures written into run folders (matplotlib, Agg backend). Each carries one grey line under it
that says how to read it (`save_with_help`)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# How to read the curves of a pretraining run's loss.png.
PRETRAIN_LOSS_HELP = ("Healthy: loss falls fast, then slowly (it need not reach 0: the EMA targets move); feature_std "
                      "stays well above 0 (a fall towards 0 is collapse); lr warms up, then decays.")


def save_with_help(fig, out_png: Path, help_text: str, dpi: int = 100, bottom: float = 0.0) -> None:
    """Lay out `fig` leaving room for one line of reading help at the bottom (plus `bottom`, a fraction of
    the height for a figure-level legend), write it and close it."""
    lines = 1 + help_text.count("\n")
    room = min(0.3, (0.12 * lines + 0.06) / fig.get_figheight())  # ~9 pt per line
    fig.tight_layout(rect=(0, room + bottom, 1, 1))
    fig.text(0.5, 0.01, help_text, ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.savefig(out_png, dpi=dpi)
    _pyplot().close(fig)


def plot_metric_curves(metrics_csv: Path, out_png: Path, keys: Sequence[str] = ("loss",),
                       help_text: str = PRETRAIN_LOSS_HELP) -> None:
    """One panel per key of `metrics.csv` against the step; no figure (and a log line) when the run folder has
    no metrics.csv, e.g. a finished run resumed from a copied checkpoint with nothing left to train."""
    if not Path(metrics_csv).exists():
        logging.getLogger(__name__).info("no %s: %s not drawn", metrics_csv, out_png)
        return
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
    save_with_help(fig, out_png, help_text)


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
    fig, axes = plt.subplots(len(masks_ctx), len(cols), figsize=(max(7.5, 1.6 * len(cols)), 1.7 * len(masks_ctx) + 0.6),
                             squeeze=False)  # wide and tall enough for the legend and the reading help
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
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(facecolor="white", edgecolor="black", label="context (pixels unchanged)"),
                        Patch(facecolor=(1.0, 0.1, 0.1, 0.5), edgecolor="black", label="target (red tint)"),
                        Patch(facecolor=(0.6, 0.6, 0.6), edgecolor="black", label="dropped context (greyed)")],
               loc="lower center", ncol=3, fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.07))
    save_with_help(fig, out_png, "Rows: mask configs; columns: token time steps. The encoder sees the context, the "
                   "predictor fills in the red targets;\ngrey tokens are context dropped to give every clip of the "
                   "batch the same length. A V-JEPA target block covers the same place at every time step.", bottom=0.08)
