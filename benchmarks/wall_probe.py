"""What a trained world model's level-0 state tells about the agent and the wall, on maps it never saw.

    python -m benchmarks.wall_probe --wm-checkpoint runs/worldmodel-two_rooms_spatial/wm-latest.pt

Frames come from random-walk episodes on held-out Two-Rooms maps (the world model's data settings with
`layout_split: heldout`); ridge readouts (benchmarks/position_readout.py's, penalty chosen on a validation
part) are fitted on the states of 3/4 of the episodes' frames and scored on the other quarter's (other maps too):
R^2 of the agent's (x, y), of the wall's first column and of the door's centre row. Also the rollout error
of the level-0 predictor there: mean L1 of k-step imagined states against the encoded frames, relative to
that of the identity (z_t for z_{t+k}). And a push test: agents 0.05-0.12 left of the wall (far from the door),
of the door (level with its centre: nothing blocks, the imagined agent should pass) or of the right border,
8 steps of action (+1, 0): how far the true agent and the imagined one (decoded by a ridge probe fitted on
frames of the same maps) move, fed back and teacher-forced (from the true encodings).
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from benchmarks.position_readout import ridge_readout
from data.generated.envs import render, sample_free, sample_maps, step_positions
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
def push_test(wm, env, maps: np.ndarray, against: str, steps: int = 8, seed: int = 0) -> dict:
    """Push agents into the interior wall ("wall"), the right border ("border"), or through the door ("door":
    level with the door's centre, where nothing blocks) -> mean x moved after
    `steps` steps: true, imagined (rollout fed back), free space; share of imagined endpoints past the
    wall; per-step x moves once blocked (steps 3..): true and teacher-forced prediction."""
    rng = np.random.default_rng(seed)
    B, G = len(maps), env.grid
    geo = wall_geometry(maps)
    face = geo[:, 0] / G if against in ("wall", "door") else np.full(B, 1 - 1 / G)
    y = (np.where(geo[:, 1] / G > 0.5, rng.uniform(0.1, 0.3, B), rng.uniform(0.7, 0.9, B)) if against == "wall"
         else (geo[:, 1] + 0.5) / G if against == "door" else rng.uniform(0.2, 0.8, B))
    pos = [np.stack([face - rng.uniform(0.05, 0.12, B), y], 1)]
    acts = np.tile(np.array([1.0, 0.0]), (B, steps, 1))
    for h in range(steps):
        pos.append(step_positions(maps, pos[-1], acts[:, h], env))
    pos = np.stack(pos, 1)  # [B, H+1, 2]
    enc = lambda p_, m_: wm.encode(torch.from_numpy(render(m_, p_, env))).double().numpy()  # noqa: E731
    zs = [torch.from_numpy(enc(pos[:, h], maps)).float() for h in range(steps + 1)]
    a = torch.from_numpy(acts).float()
    roll = wm.predictor.rollout(zs[0][:, None], a)  # [B, H, D]
    tf = torch.stack([wm.predictor(zs[h][:, None], a[:, h:h + 1])[:, 0] for h in range(steps)], 1)
    P = np.concatenate([sample_free(maps, rng) for _ in range(8)])
    M = np.concatenate([maps] * 8)
    Z = np.concatenate([enc(P[i:i + 400], M[i:i + 400]) for i in range(0, len(P), 400)])
    X = np.c_[Z, np.ones(len(Z))]
    W = np.linalg.solve(X.T @ X + 1e-2 * np.eye(X.shape[1]), X.T @ P)
    dec = lambda z: (np.c_[z.reshape(-1, z.shape[-1]).double().numpy(), np.ones(z.shape[0] * z.shape[1])] @ W)[:, 0].reshape(B, -1)  # noqa: E731
    x_roll, x_tf, x_true = dec(roll), dec(tf), dec(torch.stack(zs, 1))
    return {"true": (pos[:, -1, 0] - pos[:, 0, 0]).mean(), "imagined": (x_roll[:, -1] - x_true[:, 0]).mean(),
            "free": steps * env.max_step, "past": (x_roll[:, -1] > face + 2 / G).mean(),
            "true_step": np.diff(pos[:, 2:, 0], axis=1).mean(), "tf_step": (x_tf[:, 2:] - x_true[:, 2:-1]).mean()}


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
    for split in ("heldout", "train"):
        maps = sample_maps(data_cfg.env, 200, 7, split)
        for against in ("wall", "door", "border"):
            r = push_test(wm, data_cfg.env, maps, against)
            print(f"push into the {against} ({split} maps), 8 steps: x moved true {r['true']:.3f}, imagined {r['imagined']:.3f} "
                  f"(free {r['free']:.2f}), imagined past the wall {100 * r['past']:.0f}%; once blocked, per step: true "
                  f"{r['true_step']:.3f}, teacher-forced prediction {r['tf_step']:.3f}")


if __name__ == "__main__":
    main()
