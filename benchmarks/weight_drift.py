"""How far pretraining moved the encoders from their initialisation: relative L2 distance of the
flattened trainable encoder weights from those the run started from (rebuilt from the checkpoint's own
config and seed), for the online encoder and its EMA target.

    python benchmarks/weight_drift.py runs/quickstart-*/jepa-latest.pt [--monitor]

--monitor adds the quality monitor's k-NN / ridge top-1 (vjepa/knn_monitor.py, the built-in motion
benchmark at the run's clip geometry) for both encoders of the checkpoint: the run's own monitor reads
only the EMA target.

A target that has covered a small fraction of the online encoder's path is still mostly its random
initialisation: a frozen probe of it will read out close to a random encoder's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vjepa.engine import checkpoint as ckpt  # noqa: E402
from vjepa.engine.config import load_config  # noqa: E402
from vjepa.pretrain import PretrainConfig, build_models  # noqa: E402


def drift(path: str) -> dict:
    state = ckpt.load(path)
    cfg = load_config(PretrainConfig, raw=state["config"])
    torch.manual_seed(cfg.meta.seed)  # the pretraining job seeds the same way before building the models
    init_encoder, _, _ = build_models(cfg)
    names = [n for n, p in init_encoder.named_parameters() if p.requires_grad]
    init = torch.cat([init_encoder.state_dict()[n].flatten() for n in names])
    vec = {k: torch.cat([state[k][n].flatten() for n in names]) for k in ("encoder", "target_encoder")}
    online, target = (float((vec[k] - init).norm() / init.norm()) for k in ("encoder", "target_encoder"))
    return {"step": int(state["step"]), "online": online, "target": target, "ratio": target / online}


def monitor_scores(path: str) -> dict:
    """The motion monitor's {"online": {knn_top1, linear_top1}, "target": {...}} for a checkpoint."""
    from vjepa.knn_monitor import MotionKNNMonitor

    state = ckpt.load(path)
    cfg = load_config(PretrainConfig, raw=state["config"])
    encoder, _, target = build_models(cfg)
    encoder.load_state_dict(state["encoder"])
    target.load_state_dict(state["target_encoder"])
    monitor = MotionKNNMonitor(cfg.data.num_frames, cfg.data.crop_size, num_speeds=cfg.data.synthetic.num_speeds,
                               mean=cfg.data_aug.mean, std=cfg.data_aug.std)
    return {"online": monitor.scores(encoder.eval(), None), "target": monitor.scores(target.eval(), None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--monitor", action="store_true", help="also the k-NN / ridge monitor of both encoders")
    args = p.parse_args()
    head = "| checkpoint | step | online moved | target moved | target / online |"
    if args.monitor:
        head += " online k-NN / linear | target k-NN / linear |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for path in args.checkpoints:
        d = drift(path)
        row = f"| {path} | {d['step']} | {d['online']:.1%} | {d['target']:.1%} | {d['ratio']:.2f} |"
        if args.monitor:
            m = monitor_scores(path)
            row += "".join(f" {m[k]['knn_top1']:.1f} / {m[k]['linear_top1']:.1f} |" for k in ("online", "target"))
        print(row, flush=True)


if __name__ == "__main__":
    main()
