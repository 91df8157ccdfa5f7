"""How far pretraining moved the encoders from their initialisation: relative L2 distance of the
flattened trainable encoder weights from those the run started from (rebuilt from the checkpoint's own
config and seed), for the online encoder and its EMA target.

    python benchmarks/weight_drift.py runs/quickstart-*/jepa-latest.pt

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    args = p.parse_args()
    print("| checkpoint | step | online moved | target moved | target / online |\n|---|---|---|---|---|")
    for path in args.checkpoints:
        d = drift(path)
        print(f"| {path} | {d['step']} | {d['online']:.1%} | {d['target']:.1%} | {d['ratio']:.2f} |")


if __name__ == "__main__":
    main()
