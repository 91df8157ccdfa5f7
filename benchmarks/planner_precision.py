"""Planner rollouts in float32 and bfloat16 (`precision:` of a planner config): time per call and, with a
trained checkpoint, how far the bfloat16 predictions lie from the float32 ones.

    python -m benchmarks.planner_precision [--config configs/worldmodel/two_rooms_spatial.yaml]
        [--checkpoint runs/worldmodel-two_rooms_spatial/wm-latest.pt] [--threads 2] [--rounds 7]

One call = one chunk of candidates as the planners score them (`planning.CHUNK_ROWS` rollouts of `--horizon`
steps from one state each), of each level's predictor. The two precisions are timed in alternation, round
after round, so that a machine whose speed drifts slows both alike; the table gives each one's median and
the ratio of medians. Deviation: ||bf16 - fp32|| / ||fp32 - start||, the error relative to how far the
predicted states moved (trained weights only: a fresh conv predictor is the identity).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hjepa.world_model import planning
from hjepa.world_model.planning import amx_bfloat16, in_precision
from hjepa.world_model.train import WorldModelConfig, build_model, load_trained
from vjepa.engine.config import load_config


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/worldmodel/two_rooms_spatial.yaml", help="model sizes (untrained)")
    p.add_argument("--checkpoint", default=None, help="a trained world model instead of --config")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--horizon", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    wm = load_trained(args.checkpoint)[1] if args.checkpoint else build_model(load_config(WorldModelConfig, args.config))
    wm.eval()
    print(f"{args.checkpoint or args.config}: {planning.CHUNK_ROWS} rollouts x {args.horizon} steps per call, "
          f"{args.threads} threads, {args.rounds} alternating rounds; AMX (`precision: auto` takes bfloat16): "
          f"{amx_bfloat16()}")
    print("| predictor | float32 ms / call | bfloat16 ms / call | speed-up | deviation |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(planning.CHUNK_ROWS, wm.repr_dim, generator=g)
    if wm.distance is not None:  # level-0 states with the training features' mean and spread
        z = wm.distance.mean + wm.distance.std * z
    for k in range(wm.num_levels):
        pred = wm.predictor_of(k)
        z0 = wm.state(z, k)[:, None]
        a = torch.rand(planning.CHUNK_ROWS, args.horizon, wm.action_dim_of(k), generator=g) * 2 - 1
        runs = {"float32": in_precision(pred, "float32"), "bfloat16": in_precision(pred, "bfloat16")}
        times = {name: [] for name in runs}
        out = {name: r.rollout(z0, a) for name, r in runs.items()}  # warm-up, and the deviation
        for _ in range(args.rounds):
            for name, r in runs.items():
                t0 = time.perf_counter()
                r.rollout(z0, a)
                times[name].append(1e3 * (time.perf_counter() - t0))
        f32, b16 = statistics.median(times["float32"]), statistics.median(times["bfloat16"])
        moved = (out["float32"] - z0[:, -1:]).norm()
        dev = f"{float((out['bfloat16'] - out['float32']).norm() / moved):.2e}" if args.checkpoint else "n/a"
        print(f"| level {k} ({type(pred).__name__}) | {f32:.1f} | {b16:.1f} | {f32 / b16:.2f}x | {dev} |")


if __name__ == "__main__":
    main()
