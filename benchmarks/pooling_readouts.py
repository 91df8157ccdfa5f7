"""Which pooling of an encoder's tokens reads out motion? Ridge top-1 (the quality monitor's closed-form
linear readout, vjepa/knn_monitor.py) on the built-in motion benchmark's 512 / 256 clips, for four
poolings of the same frozen tokens, for the checkpoint's random init (rebuilt from its config and seed),
EMA target and online encoder:

    python benchmarks/pooling_readouts.py RUN/jepa-latest.pt

- mean: all tokens averaged (what the quickstart's linear probe and k-NN read);
- per-time mean: tokens averaged over space per time step, concatenated in time order;
- motion-weighted mean: tokens averaged with weights proportional to how far each one is from its patch
  position's mean over time (tokens where something moves count more);
- mean abs(dz/dt): mean absolute difference between consecutive time steps' tokens, per channel.
The evaluation of issue 10 stays the mean pool; this is a diagnostic of where motion is in the tokens.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.transforms import to_float_clip  # noqa: E402
from vjepa.engine import checkpoint as ckpt  # noqa: E402
from vjepa.engine.config import load_config  # noqa: E402
from vjepa.knn_monitor import MotionKNNMonitor, ridge_top1  # noqa: E402
from vjepa.pretrain import PretrainConfig, build_models  # noqa: E402

POOLINGS = ("mean", "per-time mean", "motion-weighted mean", "mean abs(dz/dt)")


def poolings(z: torch.Tensor, grid) -> dict:
    """Tokens `[M, N, D]` on a (T, H, W) grid (t-major) -> {pooling name: features `[M, F]`}."""
    T, H, W = grid
    M, N, D = z.shape
    zt = z.view(M, T, H * W, D)
    dev = (zt - zt.mean(1, keepdim=True)).norm(dim=-1)  # [M, T, HW]
    w = dev / dev.sum((1, 2), keepdim=True).clamp(min=1e-12)
    return {"mean": z.mean(1), "per-time mean": zt.mean(2).reshape(M, -1),
            "motion-weighted mean": (zt * w.unsqueeze(-1)).sum((1, 2)),
            "mean abs(dz/dt)": (zt[:, 1:] - zt[:, :-1]).abs().mean((1, 2))}


@torch.no_grad()
def tokens(encoder, monitor: MotionKNNMonitor, split: str) -> torch.Tensor:
    out = []
    for chunk in monitor.clips[split].split(monitor.batch_size):
        x = torch.stack([to_float_clip(c, monitor.mean, monitor.std) for c in chunk])
        out.append(encoder.eval()(x).float())
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    args = p.parse_args()
    state = ckpt.load(args.checkpoint)
    cfg = load_config(PretrainConfig, raw=state["config"])
    torch.manual_seed(cfg.meta.seed)  # as the pretraining job: the weights it started from
    init, _, _ = build_models(cfg)
    _, _, target = build_models(cfg)
    online, _, _ = build_models(cfg)
    target.load_state_dict(state["target_encoder"])
    online.load_state_dict(state["encoder"])
    monitor = MotionKNNMonitor(cfg.data.num_frames, cfg.data.crop_size, num_speeds=cfg.data.synthetic.num_speeds,
                               mean=cfg.data_aug.mean, std=cfg.data_aug.std)
    print(f"ridge top-1 % on {len(monitor.labels['val'])} held-out motion clips (chance "
          f"{100 / monitor.num_classes:.1f}), step {state['step']}")
    print("| encoder | " + " | ".join(POOLINGS) + " |\n" + "|---" * (len(POOLINGS) + 1) + "|")
    for name, enc in (("random init", init), ("EMA target", target), ("online", online)):
        tr, va = (poolings(tokens(enc, monitor, s), enc.grid) for s in ("train", "val"))
        cells = [f"{ridge_top1(tr[k], monitor.labels['train'], va[k], monitor.labels['val'], monitor.num_classes):.1f}"
                 for k in POOLINGS]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
