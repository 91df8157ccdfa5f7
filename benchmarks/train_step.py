"""Seconds per V-JEPA training step, clips/s, peak memory and (on GPU) MFU, per model size.

    python benchmarks/train_step.py                                    # CPU: vit_tiny, vit_small, vit_base
    python benchmarks/train_step.py --sizes vit_large --batch 24 --peak-tflops 989   # one H100, bf16

Each size runs in its own subprocess so peak memory is that size's alone. A step is the real
`vjepa.pretrain.train_step` (target forward, context encoder + predictor for both published mask
configs, backward, clipping, AdamW, EMA) on random clips; FLOPs are counted by torch's FlopCounterMode
on one step, so MFU = counted FLOPs / step time / the card's peak.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run_one(size: str, batch: int, frames: int, crop: int, steps: int, warmup: int) -> dict:
    from functools import partial

    from torch.utils.flop_counter import FlopCounterMode

    from data.collate import MaskCollator
    from vjepa.engine.optim import ema_update, optimizer_step, param_groups
    from vjepa.engine.runtime import make_accelerator
    from vjepa.models import ModelConfig
    from vjepa.pretrain import LossConfig, PretrainConfig, build_models, objective

    cfg = PretrainConfig()
    cfg.model = ModelConfig(model_name=size)
    cfg.data.num_frames, cfg.data.crop_size, cfg.data.batch_size = frames, crop, batch
    accelerator = make_accelerator("bfloat16")
    encoder, predictor, target = build_models(cfg)
    collator = MaskCollator(cfg.mask, encoder.grid, seed=0)
    optimizer = torch.optim.AdamW(param_groups(encoder, predictor), lr=1e-4)
    n_params = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    encoder, predictor, optimizer = accelerator.prepare(encoder, predictor, optimizer)
    target.to(accelerator.device)
    clips = torch.randn(batch, 3, frames, crop, crop)
    batch_data = collator([{"clip": c, "label": 0, "seed": i, "step": 0} for i, c in enumerate(clips)])
    batch_data["clip"] = batch_data["clip"].to(accelerator.device)
    batch_data["masks_ctx"] = [m.to(accelerator.device) for m in batch_data["masks_ctx"]]
    batch_data["masks_tgt"] = [m.to(accelerator.device) for m in batch_data["masks_tgt"]]
    cuda = accelerator.device.type == "cuda"

    def step():
        optimizer_step(accelerator, optimizer, partial(objective, encoder, predictor, target, batch_data, LossConfig()),
                       (encoder, predictor), 0, 10.0, {"enc": encoder, "pred": predictor})
        ema_update(target, accelerator.unwrap_model(encoder), 0.999)

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "params_m": n_params / 1e6, "batch": batch, "s_per_step": dt, "clips_per_s": batch / dt, "peak_gib": peak / 2**30, "gflop_per_step": flops / 1e9,
            "device": torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads",
            "precision": "bf16" if cuda else "fp32"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["vit_tiny", "vit_small", "vit_base"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=None, help="card's dense peak for MFU (H100 SXM bf16: 989)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.batch, args.frames, args.crop, args.steps, args.warmup)))
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", size, "--batch", str(args.batch), "--frames", str(args.frames),
               "--crop", str(args.crop), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\nV-JEPA train step, {args.frames}x{args.crop}px clips, both published mask configs, device: {rows[0]['device']}, {rows[0]['precision']}\n")
    head = "| model | params (M) | batch | s/step | clips/s | peak mem (GiB) | GFLOP/step | TFLOP/s |" + (" MFU |" if args.peak_tflops else "")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    for r in rows:
        tflops = r["gflop_per_step"] / r["s_per_step"] / 1e3
        line = (f"| {r['size']} | {r['params_m']:.1f} | {r['batch']} | {r['s_per_step']:.3f} | {r['clips_per_s']:.2f} | "
                f"{r['peak_gib']:.2f} | {r['gflop_per_step']:.0f} | {tflops:.2f} |")
        if args.peak_tflops:
            line += f" {tflops / args.peak_tflops:.1%} |"
        print(line)


if __name__ == "__main__":
    main()
