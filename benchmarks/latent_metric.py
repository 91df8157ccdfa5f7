"""Is a world model's state a map of the agent's position? Correlation of latent and position distances.

    python -m benchmarks.latent_metric runs/worldmodel-two_rooms/wm-latest.pt [more checkpoints ...]

For each checkpoint: 800 free positions on the training map (the world model's first layout), rendered and
encoded with `wm.encode` (what the planners use); -> Pearson correlation over all pairs between the
latent distance ||z_i - z_j|| and the position distance ||p_i - p_j|| (world units), also for pairs less than
0.3 apart (local metric), and the encode time per frame.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from data.generated.envs import render, sample_free
from data.generated.trajectories import make_layouts
from hjepa.world_model.train import load_trained


def distance_correlation(z: np.ndarray, p: np.ndarray, near: float = 0.3) -> dict:
    """z `[n, D]` states, p `[n, 2]` positions -> {"all": r over all pairs, "near": r over pairs < near apart}."""
    iu = np.triu_indices(len(z), 1)
    dz = np.linalg.norm(z[:, None] - z[None], axis=-1)[iu]
    dp = np.linalg.norm(p[:, None] - p[None], axis=-1)[iu]
    m = dp < near
    return {"all": float(np.corrcoef(dz, dp)[0, 1]), "near": float(np.corrcoef(dz[m], dp[m])[0, 1])}


@torch.no_grad()
def score(path: str, n: int = 800, seed: int = 0) -> dict:
    cfg, wm, _ = load_trained(path)
    env = cfg.data.env
    walls = make_layouts(env, cfg.data.num_layouts, cfg.data.layout_seed)[:1].repeat(n, 0)  # [n, G, G]
    pos = sample_free(walls, np.random.default_rng(seed))
    frames = torch.from_numpy(render(walls, pos, env))
    t0 = time.time()
    z = torch.cat([wm.encode(frames[i:i + 200]) for i in range(0, n, 200)]).numpy()
    out = distance_correlation(z, pos)
    out["ms_per_frame"] = 1e3 * (time.time() - t0) / n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print("| checkpoint | r(all pairs) | r(pairs < 0.3) | encode ms/frame |\n|---|---|---|---|")
    for c in a.checkpoints:
        s = score(c, a.n, a.seed)
        print(f"| {c} | {s['all']:.2f} | {s['near']:.2f} | {s['ms_per_frame']:.2f} |")


if __name__ == "__main__":
    main()
