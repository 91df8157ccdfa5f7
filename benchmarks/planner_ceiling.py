"""What the planners can reach with a perfect world model: flat planning (CEM / MPPI of a plan config) with
the TRUE dynamics (state = the agent's position, the environment's own step function with its walls) and
the same cost as with a learned model (sum over the horizon of the Euclidean distance to the goal state),
on the plan config's own task set. If this ceiling is low, a better learned model cannot fix the planner.

    python benchmarks/planner_ceiling.py [--world configs/worldmodel/two_rooms.yaml]
        [--plan configs/plan/two_rooms.yaml] [--layouts heldout] [--method cem] [key.sub=value ...]
        [--geodesic | --learned runs/worldmodel-two_rooms_spatial/wm-latest.pt]

`--geodesic` swaps in the true shortest-path distance (a path-aware cost's ceiling); `--learned CKPT` the world
model's learned goal distance D(encode(frame at a cell), encode(goal frame)), precomputed on every free cell of
each task's map: its ceiling with perfect dynamics, which separates D's errors from the predictor's;
with `--exact`, D of the encoding of each imagined position itself (no per-cell lookup, ~10x slower).

Overrides apply to the plan config (e.g. tasks.per_bin=25 cem.horizon=32). Prints success per distance bin.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.generated.envs import EnvConfig, distance_field, render, step_positions  # noqa: E402
from hjepa.world_model.evaluate import PlanConfig, make_tasks, run_episodes, task_maps  # noqa: E402
from hjepa.world_model.planning import FlatPlanner  # noqa: E402
from hjepa.world_model.train import WorldModelConfig, load_trained  # noqa: E402
from vjepa.engine.config import load_config  # noqa: E402


class TrueDynamics:
    """`ACPredictor`-shaped rollout of the real step function: problems `[B]` each with its own walls; the
    B x N candidates of a planner come problem-major, N per problem."""

    def __init__(self, walls: np.ndarray, env: EnvConfig):
        self.walls, self.env = walls, env

    def rollout(self, z0: torch.Tensor, actions: torch.Tensor, context=None) -> torch.Tensor:
        walls = np.repeat(self.walls, z0.shape[0] // len(self.walls), 0)
        pos = z0[:, -1].numpy().astype(np.float64)
        out = []
        for h in range(actions.shape[1]):
            pos = step_positions(walls, pos, actions[:, h].numpy(), self.env)
            out.append(torch.from_numpy(pos).float())
        return torch.stack(out, 1)


class PositionEncoder:
    """Image -> the agent's position (centroid of the agent channel): a perfect encoder."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        m = frames[:, 1]
        c = (torch.arange(m.shape[-1], dtype=torch.float32) + 0.5) / m.shape[-1]
        w = m / m.sum((1, 2), keepdim=True)
        return torch.stack([(w.sum(1) * c).sum(-1), (w.sum(2) * c).sum(-1)], -1)


def field_replan(planner: FlatPlanner, fields: torch.Tensor):
    """`planner.replan` with distances read from each problem's distance field `[B, G, G]` (walls inf,
    capped at 4 units) at the state's cell instead of the Euclidean distance to the goal state."""
    real = planner.replan
    G = fields.shape[-1]

    def distance(z: torch.Tensor) -> torch.Tensor:  # positions [B, N, H, 2] -> [B, N, H]
        cell = (z * G).long().clamp(0, G - 1)
        B = fields.shape[0]
        b = torch.arange(B).view(B, *([1] * (z.ndim - 2))).expand(z.shape[:-1])
        return fields[b, cell[..., 1], cell[..., 0]].clamp(max=4.0)

    return lambda z_now, z_goal, dist=None, active=None: real(z_now, z_goal, distance)


@torch.no_grad()
def goal_embeddings(wm, walls: np.ndarray, goal: np.ndarray, env: EnvConfig) -> List[torch.Tensor]:
    """The learned distance's embedding of each task's goal frame, one `[1, E]` per map."""
    return [wm.distance.embed(wm.encode(torch.from_numpy(render(walls[b:b + 1], goal[b:b + 1], env))))
            for b in range(len(walls))]


@torch.no_grad()
def distance_at(wm, wall: np.ndarray, pos: np.ndarray, e_goal: torch.Tensor, env: EnvConfig) -> torch.Tensor:
    """Learned distance (world units: steps x max_step) from the frames of positions `[P, 2]` on one map
    `[G, G]` to a goal embedding -> `[P]`."""
    z = wm.encode(torch.from_numpy(render(np.repeat(wall[None], len(pos), 0), pos, env)))
    return wm.distance.pair(wm.distance.embed(z), e_goal) * env.max_step


def learned_fields(wm, walls: np.ndarray, e_goal: List[torch.Tensor], env: EnvConfig) -> torch.Tensor:
    """The learned goal distance from the centre of every free cell of each map to its goal: `[B, G, G]`,
    inf in walls."""
    G = walls.shape[-1]
    centres = (np.stack(np.meshgrid(np.arange(G), np.arange(G), indexing="xy"), -1).reshape(-1, 2) + 0.5) / G
    out = torch.full((len(walls), G, G), float("inf"))
    for b in range(len(walls)):
        free = ~walls[b].reshape(-1)
        out[b].view(-1)[torch.from_numpy(free)] = distance_at(wm, walls[b], centres[free], e_goal[b], env)
    return out


def exact_replan(planner: FlatPlanner, wm, walls: np.ndarray, e_goal: List[torch.Tensor], env: EnvConfig):
    """`planner.replan` with the learned distance of the encoding of each imagined position itself (rendered
    and encoded per candidate state: slow), instead of a per-cell lookup."""
    real = planner.replan

    def distance(z: torch.Tensor) -> torch.Tensor:  # positions [B, N, H, 2] -> [B, N, H]
        pos = z.reshape(len(walls), -1, 2).numpy().astype(np.float64)
        return torch.stack([distance_at(wm, walls[b], pos[b], e_goal[b], env)
                            for b in range(len(walls))]).view(z.shape[:-1])

    return lambda z_now, z_goal, dist=None, active=None: real(z_now, z_goal, distance)


def field_rank_correlation(learned: torch.Tensor, true: np.ndarray) -> float:
    """Mean over maps of the Spearman correlation between two distance fields on the cells both reach."""
    rs = []
    for a, b in zip(learned.numpy(), true):
        ok = np.isfinite(a) & np.isfinite(b)
        ra, rb = np.argsort(np.argsort(a[ok])), np.argsort(np.argsort(b[ok]))
        rs.append(np.corrcoef(ra, rb)[0, 1])
    return float(np.mean(rs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="configs/worldmodel/two_rooms.yaml", help="world-model config (its maps)")
    p.add_argument("--plan", default="configs/plan/two_rooms.yaml")
    p.add_argument("--layouts", default="heldout", choices=["heldout", "train"])
    p.add_argument("--method", default="cem", choices=["cem", "mppi"])
    p.add_argument("--geodesic", action="store_true", help="cost = shortest-path distance to the goal (the "
                   "environment's distance field) instead of the Euclidean one: a path-aware cost's ceiling")
    p.add_argument("--learned", metavar="CKPT", help="cost = this world model's learned goal distance (its "
                   "config's maps replace --world's)")
    p.add_argument("--exact", action="store_true", help="with --learned: the distance of each imagined "
                   "position's own encoding (no per-cell lookup; ~10x slower)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(1)
    wm_cfg, wm, _ = load_trained(args.learned) if args.learned else (load_config(WorldModelConfig, args.world), None, None)
    if wm is not None and wm.distance is None:
        raise SystemExit(f"{args.learned} has no learned goal distance (train it with distance.steps > 0)")
    cfg = load_config(PlanConfig, args.plan, overrides=args.overrides)
    env = wm_cfg.data.env
    maps = task_maps(wm_cfg.data, args.layouts, cfg.tasks)
    tasks = make_tasks(maps, cfg.tasks)
    walls = maps[tasks["layout"]]
    pc = getattr(cfg, args.method)
    pc.distance = "l2"  # this script supplies the cost itself (the Euclidean one, or a field below)
    cost = "learned" if args.learned else "geodesic" if args.geodesic else "Euclidean"
    print(f"{env.name}, {args.layouts} maps, {cost} cost, {args.method} horizon {pc.horizon} samples {pc.samples} "
          f"iterations {pc.iterations} replan_every {pc.replan_every}, true dynamics, seeds {cfg.seeds}")
    fields = torch.from_numpy(distance_field(walls, tasks["goal"])).float() if args.geodesic else None
    if args.learned:
        t0 = time.perf_counter()
        e_goal = goal_embeddings(wm, walls, tasks["goal"], env)
        fields = learned_fields(wm, walls, e_goal, env)
        print(f"learned distance on every free cell ({time.perf_counter() - t0:.0f} s): Spearman with the shortest "
              f"path, per map, mean {field_rank_correlation(fields, distance_field(walls, tasks['goal'])):.3f}")
    print("| seed | " + " | ".join(f"[{lo}, {hi})" for lo, hi in cfg.tasks.bins) + " | all | s/episode |")
    print("|---" * (len(cfg.tasks.bins) + 3) + "|")
    for seed in cfg.seeds:
        planner = FlatPlanner(TrueDynamics(walls, env), pc, seed)
        if args.learned and args.exact:
            planner.replan = exact_replan(planner, wm, walls, e_goal, env)
        elif fields is not None:  # the planner calls replan(z_now, z_goal): swap in the distance-field lookup
            planner.replan = field_replan(planner, fields)
        t0 = time.perf_counter()
        ep = run_episodes(planner, PositionEncoder(), env, walls, tasks["start"], tasks["goal"], cfg.max_steps,
                          cfg.success_radius, seed, skip_finished=False)  # TrueDynamics and the fields index by row
        s = ep["success"]
        cells = [f"{100 * s[tasks['bin'] == b].mean():.0f}" for b in range(len(cfg.tasks.bins))]
        print(f"| {seed} | " + " | ".join(cells) + f" | {100 * s.mean():.1f} | {(time.perf_counter() - t0) / len(s):.3f} |")


if __name__ == "__main__":
    main()
