"""What a trained world model's level-0 state tells about the agent and the wall, on maps it never saw.

    python -m benchmarks.wall_probe --wm-checkpoint runs/worldmodel-two_rooms_spatial/wm-latest.pt

Frames come from random-walk episodes on held-out Two-Rooms maps (the world model's data settings with
`layout_split: heldout`); ridge readouts (benchmarks/position_readout.py's, penalty chosen on a validation
part) are fitted on the states of 3/4 of the episodes' frames and scored on the other quarter's (other maps too):
R^2 of the agent's (x, y), of the wall's first column and of the door's centre row. Also the rollout error
of the level-0 predictor there: mean L1 of k-step imagined states against the encoded frames, relative to
that of the identity (z_t for z_{t+k}).
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from benchmarks.position_readout import ridge_readout
from data.generated.trajectories import TrajectoryWindows, generate
from hjepa.world_model.train import load_trained


def wall_geometry(walls: np.ndarray) -> np.ndarray:
    """Two-Rooms maps `[L, G, G]` -> `[L, 2]`: (first wall column, door centre row), in cells."""
    inner = walls[:, 1:-1, 1:-1]  # without the border
    col_full = inner.sum(1)  # [L, G-2] wall cells per column
    first = col_full.argmax(1) + 1
    door = np.array([np.flatnonzero(~w[1:-1, c]).mean() + 1 for w, c in zip(walls, first)])
    return np.stack([first, door], 1).astype(np.float64)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wm-checkpoint", required=True)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--rollout", type=int, default=8, help="k of the k-step rollout error")
    args = p.parse_args()
    cfg, wm, _ = load_trained(args.wm_checkpoint)
    wm.eval()
    data_cfg = dataclasses.replace(cfg.data, num_trajectories=args.episodes, num_layouts=args.episodes,
                                   layout_split="heldout", seed=cfg.data.seed + 1, cache_dir=None)
    data = generate(data_cfg)
    win = TrajectoryWindows(data, data_cfg.env, window=args.rollout + 1)
    t0 = np.arange(0, data_cfg.length - args.rollout + 1, 2 * args.rollout)  # two disjoint windows of 32 steps
    episode = np.repeat(np.arange(args.episodes), len(t0))
    b = win.batch(episode * win.starts_per_traj + np.tile(t0, args.episodes))
    z = wm.encode(b["frames"])  # [N, k+1, D]
    geo = wall_geometry(data["walls"])[data["layout"]]  # [episodes, 2]
    tr, te = episode < 0.75 * args.episodes, episode >= 0.75 * args.episodes
    zf = z.reshape(len(z) * z.shape[1], -1).numpy().astype(np.float64)
    rep = lambda a: np.repeat(a, z.shape[1], 0)  # noqa: E731 (per window -> per frame)
    pos = b["states"].reshape(-1, 2).numpy().astype(np.float64)
    trf, tef = rep(tr), rep(te)
    res = {"position": ridge_readout(zf[trf], pos[trf], zf[tef], pos[tef]),
           "wall": ridge_readout(zf[trf], rep(geo[episode])[trf], zf[tef], rep(geo[episode])[tef])}
    pred = wm.predictor.rollout(z[:, :1], b["actions"][:, :, 0])  # [N, k, D]
    err = (pred - z[:, 1:]).abs().mean((0, 2))
    ident = (z[:, :1] - z[:, 1:]).abs().mean((0, 2))
    print(f"{args.wm_checkpoint}: {len(z)} windows of {z.shape[1]} frames on {args.episodes} held-out-map episodes")
    print(f"position R^2 {res['position']['r2']:.3f} (error {res['position']['err']:.3f} world units); "
          f"wall column + door row R^2 {res['wall']['r2']:.3f}")
    print("rollout L1 / identity L1 at k = 1..%d: %s" % (args.rollout, " ".join(f"{e / i:.2f}" for e, i in zip(err, ident))))


if __name__ == "__main__":
    main()
