"""How well a world model's goal cost follows paths, on maps it never saw: the learned goal distance
(`distance: learned`, hjepa/world_model/goal_distance.py) and the Euclidean latent distance (`l2`) against the
true shortest-path length, on the plan config's own held-out task set (start and goal frames).

    python -m benchmarks.goal_distance --wm-checkpoint runs/worldmodel-two_rooms_spatial/wm-latest.pt \
        [--plan configs/plan/two_rooms_spatial.yaml] [--layouts heldout]

Prints Spearman rank correlations with the shortest-path length (and, beside it, with the straight-line
distance, which a cost that ignores walls tracks best), and per distance bin the mean of each cost; the
learned distance is in steps (shortest path / env.max_step is the fewest steps, diagonal moves aside).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from data.generated.envs import render
from hjepa.world_model.evaluate import PlanConfig, make_tasks, task_maps
from hjepa.world_model.train import load_trained
from vjepa.engine.config import load_config


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wm-checkpoint", required=True)
    p.add_argument("--plan", default="configs/plan/two_rooms_spatial.yaml", help="its task set (tasks:)")
    p.add_argument("--layouts", default="heldout", choices=["heldout", "train"])
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg, wm, _ = load_trained(args.wm_checkpoint)
    env = cfg.data.env
    pc = load_config(PlanConfig, args.plan)
    maps = task_maps(cfg.data, args.layouts, pc.tasks)
    tasks = make_tasks(maps, pc.tasks)
    walls = maps[tasks["layout"]]
    z = wm.encode(torch.from_numpy(render(walls, tasks["start"], env)))
    g = wm.encode(torch.from_numpy(render(walls, tasks["goal"], env)))
    costs = {"l2": (z - g).norm(dim=-1).numpy()}
    if wm.distance is not None:
        costs["learned"] = wm.distance(z, g).numpy()
    geo, line = tasks["dist"], np.linalg.norm(tasks["start"] - tasks["goal"], axis=-1)
    print(f"{env.name}, {args.layouts} maps, {len(geo)} tasks of {args.plan}; shortest path vs straight line: "
          f"Spearman {spearman(geo, line):.3f}")
    print("| cost | Spearman vs shortest path | vs straight line | " +
          " | ".join(f"mean, [{lo}, {hi})" for lo, hi in pc.tasks.bins) + " |")
    print("|---" * (3 + len(pc.tasks.bins)) + "|")
    print("| shortest path / max_step | 1.000 | " + f"{spearman(geo, line):.3f} | " +
          " | ".join(f"{geo[tasks['bin'] == b].mean() / env.max_step:.1f}" for b in range(len(pc.tasks.bins))) + " |")
    for name, c in costs.items():
        print(f"| {name} | {spearman(c, geo):.3f} | {spearman(c, line):.3f} | " +
              " | ".join(f"{c[tasks['bin'] == b].mean():.2f}" for b in range(len(pc.tasks.bins))) + " |")


if __name__ == "__main__":
    main()
