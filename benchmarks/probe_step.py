"""One training step of the attentive probe (forward + backward, frozen tokens in), with the cross-attention
computed plainly (every token projected to keys and values) and folded (`CrossAttention.folded`: the query
moved to the tokens' side, only the weighted mean projected), at the quickstart's size and at the
published probes' sizes.

    python -m benchmarks.probe_step [--threads 2] [--rounds 5] [--device cpu|cuda] [--sizes quickstart,vitl]

The two are timed in alternation, round after round, so that a machine whose speed drifts slows both alike;
the table gives each one's median ms per step and the ratio. On CUDA it also gives the peak memory of a step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from vjepa.probe import AttentiveClassifier

# name: (batch, tokens, width, heads, what it stands for)
SIZES = {
    "quickstart": (64, 512, 96, 3, "vit_micro, 16 x 64^2 clip, 8^3 grid (python train.py)"),
    "vits": (16, 1568, 384, 6, "vit_small, 16 x 224^2 clip"),
    "vitl": (16, 1568, 1024, 16, "vit_large, 16 x 224^2 clip (V-JEPA's probe)"),
}


def step_time(probe, x, y, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    probe.zero_grad(set_to_none=True)
    F.cross_entropy(probe(x), y).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per round and path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="quickstart,vits,vitl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"attentive probe (1 query, 1 block), 16 classes, {args.device}, {args.threads} threads, "
          f"{args.rounds} alternating rounds x {args.steps} steps")
    print("| size | batch x tokens x width, heads | plain ms / step | folded ms / step | speed-up | peak MB plain / folded |")
    print("|---|---|---|---|---|---|")
    for name in args.sizes.split(","):
        B, N, D, h, what = SIZES[name]
        torch.manual_seed(0)
        probe = AttentiveClassifier(D, h, 16).to(device)
        block = probe.pooler.cross_attention_block
        x = torch.randn(B, N, D, device=device)
        y = torch.randint(0, 16, (B,), device=device)
        times = {False: [], True: []}
        peak = {}
        for fold in (False, True):  # warm-up (and the peak memory of one step)
            block.fold = fold
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step_time(probe, x, y, device)
            if device.type == "cuda":
                peak[fold] = torch.cuda.max_memory_allocated() / 2**20
        for _ in range(args.rounds):
            for fold in (False, True):
                block.fold = fold
                times[fold].append(statistics.median(step_time(probe, x, y, device) for _ in range(args.steps)))
        plain, folded = (1e3 * statistics.median(times[f]) for f in (False, True))
        mem = f"{peak[False]:.0f} / {peak[True]:.0f}" if peak else "-"
        print(f"| {name}: {what} | {B} x {N} x {D}, {h} | {plain:.1f} | {folded:.1f} | {plain / folded:.2f}x | {mem} |")


if __name__ == "__main__":
    main()
