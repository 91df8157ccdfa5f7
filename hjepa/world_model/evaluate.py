"""Planning evaluation: random policy, flat CEM, flat MPPI and hierarchical planning on fixed
start/goal tasks binned by shortest-path distance.

    python train.py --config configs/plan/two_rooms.yaml [key.sub=value ...] [--dry-run]

Tasks are a pure function of (`tasks.seed`, the maps they are drawn on): `tasks.per_bin` start/goal
pairs per bin of geodesic distance, each on one of `tasks.num_layouts` maps. `tasks.layouts` names the
map sets, one table each: "heldout" = maps of the held-out split (`data.generated.envs.is_heldout`) that
are not among the world model's training maps, "train" = the first of the training maps (seen). Each
method runs every task once per seed in `seeds` (seeds change the planners' sampling and the random policy). An episode succeeds when the agent comes within
`success_radius` of the goal position (ground truth, never the model's opinion). Standard errors are
binomial over all episodes of a bin, sqrt(p (1 - p) / n), n = tasks x seeds.
Written to the run folder: results.csv, results.md (a table per map set), success_vs_distance.png (all
sets; the first solid), episodes.png (first set) (example episodes over the map: executed path, planned path and subgoals decoded to
positions by a linear probe fitted on training frames, for display only).
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from data.seeding import derive_seed
from data.generated.envs import sample_maps
from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, load_or_generate, make_layouts
from hjepa.world_model.episodes import TaskConfig, make_tasks, run_episodes
from hjepa.world_model.planning import (FlatPlanner, HierarchicalConfig, HierarchicalPlanner, PlannerConfig, RandomPolicy,
                            check_planner, resolve_precision)
from hjepa.world_model.train import load_trained
from vjepa.engine.config import ConfigError, to_yaml
from vjepa.engine.runtime import make_accelerator, resolve_run_dir
from vjepa.plots import save_with_help

logger = logging.getLogger(__name__)
METHODS = ("random", "cem", "mppi", "hierarchical")
LAYOUT_SETS = {"heldout": "held-out layouts (never in training)", "train": "seen layouts (training maps)"}


def _hier_default() -> HierarchicalConfig:
    return HierarchicalConfig(levels=[PlannerConfig(horizon=3, samples=64, iterations=2)],
                              level0=PlannerConfig(horizon=8, samples=64, iterations=3, replan_every=4))


@dataclass
class PlanConfig:
    """Args:
        checkpoint: world-model checkpoint (`wm-latest.pt` of a worldmodel run).
        methods: subset of `METHODS`. seeds: one run of every task per seed.
        max_steps / success_radius: episode length and success distance (world units).
        cem / mppi / hierarchical: planner settings. examples: episodes drawn in episodes.png.
        folder: output folder (None = runs/plan-<time>).
    """

    task: str = "plan"
    checkpoint: str = ""
    tasks: TaskConfig = field(default_factory=TaskConfig)
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    max_steps: int = 60
    success_radius: float = 0.07
    cem: PlannerConfig = field(default_factory=lambda: PlannerConfig(method="cem", horizon=8, samples=64, replan_every=4))
    mppi: PlannerConfig = field(default_factory=lambda: PlannerConfig(method="mppi", horizon=8, samples=64, replan_every=4))
    hierarchical: HierarchicalConfig = field(default_factory=_hier_default)
    examples: int = 4
    folder: Optional[str] = None


def check_tasks(cfg: TaskConfig) -> None:
    bad = [x for x in cfg.layouts if x not in LAYOUT_SETS]
    if bad or not cfg.layouts or len(set(cfg.layouts)) != len(cfg.layouts):
        raise ConfigError(f"tasks.layouts {list(cfg.layouts)} must list distinct map sets of {list(LAYOUT_SETS)}")
    if cfg.num_layouts < 1 or cfg.per_bin < 1:
        raise ConfigError("tasks.num_layouts and tasks.per_bin must be >= 1")
    if cfg.seen_seeds is not None and not cfg.seen_seeds:
        raise ConfigError("tasks.seen_seeds must list at least one seed (or be null: the run's seeds)")


def task_maps(data: TrajectoryConfig, which: str, cfg: TaskConfig) -> np.ndarray:
    """The maps `[L, G, G]` of set `which` for a world model trained on `data`: "train" = its first
    `cfg.num_layouts` training maps; "heldout" = `cfg.num_layouts` held-out-split maps drawn from
    `cfg.seed`, none equal to a training map (even when the model trained on layout_split=all)."""
    train = make_layouts(data.env, data.num_layouts, data.layout_seed, data.layout_split)
    if which == "train":
        return train[:cfg.num_layouts]
    return sample_maps(data.env, cfg.num_layouts, derive_seed(cfg.seed, 11), "heldout",
                       exclude={m.tobytes() for m in train})


def build_policy(method: str, cfg: PlanConfig, wm, banks, batch: int, seed: int):
    if method == "random":
        return RandomPolicy(batch, seed)
    if method in ("cem", "mppi"):
        return FlatPlanner(wm.predictor, getattr(cfg, method), seed, wm.distance, wm.predictors[1:])
    if method == "hierarchical":
        return HierarchicalPlanner(wm, banks, cfg.hierarchical, seed)
    raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")


def position_probe(wm, data, env_cfg, n: int = 2048, seed: int = 0):
    """Ridge regression representation -> position on training frames; used only to draw imagined paths."""
    win = TrajectoryWindows(data, env_cfg, 2, 1)
    b = win.batch(np.random.default_rng(seed).integers(len(win), size=n))
    with torch.no_grad():
        z = wm.encode(b["frames"][:, 0]).double()
    X = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
    W = torch.linalg.solve(X.T @ X + 1e-3 * torch.eye(X.shape[1], dtype=z.dtype), X.T @ b["states"][:, 0].double())
    return lambda zz: (torch.cat([zz.double(), torch.ones(*zz.shape[:-1], 1, dtype=torch.float64)], -1) @ W).numpy()


def run(cfg: PlanConfig, dry_run: bool = False) -> Optional[Path]:
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; valid: {list(METHODS)}")
    for p in (cfg.cem, cfg.mppi, cfg.hierarchical.level0, *cfg.hierarchical.levels):
        check_planner(p)
    if not cfg.checkpoint:
        raise ConfigError("plan: set checkpoint=<worldmodel run>/wm-latest.pt")
    check_tasks(cfg.tasks)
    wm_cfg, wm, banks = load_trained(cfg.checkpoint)
    planners = planners_of(cfg)
    if wm.distance is None and any(p.distance == "learned" for m in cfg.methods for p in planners.get(m, [])):
        raise ConfigError(f"plan: a planner has distance: learned, but {cfg.checkpoint} has no learned goal distance; "
                          "train one (distance.steps > 0 in the world-model config; resuming a trained model adds it) "
                          "or set the planners' distance to l2")
    if len(wm.predictors) == 1 and any(p.ensemble for m in cfg.methods for p in planners.get(m, [])):
        raise ConfigError(f"plan: a planner has ensemble: true, but {cfg.checkpoint} has one level-0 predictor; train "
                          "an ensemble (predictor.ensemble > 1 in the world-model config) or set ensemble: false")
    env_cfg = wm_cfg.data.env
    sets = {}  # map set -> (its maps [L, G, G], its tasks)
    for which in cfg.tasks.layouts:
        maps = task_maps(wm_cfg.data, which, cfg.tasks)
        sets[which] = (maps, make_tasks(maps, cfg.tasks))
    # the world comes from the world model's config, not the plan config's name: say which it is
    counts = {which: f"{which}: {len(tasks['start'])} tasks in {len(cfg.tasks.bins)} bins on {len(maps)} maps "
                     f"({len({m.tobytes() for m in maps})} distinct) of {env_cfg.name}"
              for which, (maps, tasks) in sets.items()}
    if dry_run:
        print(to_yaml(cfg))
        print("\n".join(counts.values()))
        k = len(wm.predictors)
        print("compute per plan: "
              f"cem {cfg.cem.compute(k)}, mppi {cfg.mppi.compute(k)}, hierarchical levels 1..K "
              f"{[c.compute() for c in cfg.hierarchical.levels]} + level-0 {cfg.hierarchical.level0.compute(k)}")
        print(f"predictor rollouts on this machine: {rollout_precisions(cfg) or 'none'}")
        return None
    logger.info("planning with %s (world %s, from its config); %s", cfg.checkpoint, env_cfg.name,
                "; ".join(counts.values()))
    run_dir = resolve_run_dir(cfg.folder, "plan", make_accelerator("float32"))
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    results, episodes = [], {}
    for which, (walls_all, tasks) in sets.items():
        walls = walls_all[tasks["layout"]]
        for method in cfg.methods:
            for seed in seeds_of(cfg, which):
                policy = build_policy(method, cfg, wm, banks, len(walls), seed)
                t0 = time.perf_counter()
                ep = run_episodes(policy, wm, env_cfg, walls, tasks["start"], tasks["goal"], cfg.max_steps,
                                  cfg.success_radius, seed)
                wall = time.perf_counter() - t0
                if which == cfg.tasks.layouts[0]:
                    episodes[(method, seed)] = (ep, policy)
                logger.info("%s layouts, %s seed %d: success %.1f%%, %.0fs, compute/episode %.0f", which, method,
                            seed, 100 * ep["success"].mean(), wall, ep["compute"].mean())
                for b in range(len(cfg.tasks.bins)):
                    sel = tasks["bin"] == b
                    results.append({"layouts": which, "method": method, "seed": seed, "bin": b,
                                    "success": ep["success"][sel], "steps": ep["steps"][sel],
                                    "plan_time": policy.plan_time / len(walls), "compute": ep["compute"][sel].mean()})
    table = "\n\n".join(f"### {LAYOUT_SETS[w]}: {len({m.tobytes() for m in sets[w][0]})} maps\n\n"
                        + summarise(results, cfg, w) for w in cfg.tasks.layouts)
    print(table)
    (run_dir / "results.md").write_text(table + "\n")
    _write_csv(results, cfg, run_dir / "results.csv")
    plot_success(results, cfg.tasks.bins, cfg.methods, run_dir / "success_vs_distance.png", cfg.tasks.layouts)
    if cfg.examples > 0:  # examples=0: no episode figure (and no position probe to fit)
        probe = position_probe(wm, load_or_generate(wm_cfg.data), env_cfg)
        walls_all, tasks = sets[cfg.tasks.layouts[0]]
        plot_episodes(episodes, tasks, walls_all, probe, cfg, run_dir / "episodes.png")
    logger.info("plan evaluation written to %s", run_dir)
    return run_dir


def planners_of(cfg: PlanConfig) -> dict:
    """The planner settings each planning method uses."""
    return {"cem": [cfg.cem], "mppi": [cfg.mppi], "hierarchical": [cfg.hierarchical.level0, *cfg.hierarchical.levels]}


def rollout_precisions(cfg: PlanConfig) -> str:
    """What each method's predictor rollouts ran in on this machine (`precision: auto` resolved)."""
    planners = planners_of(cfg)
    return ", ".join(f"{m} " + "/".join(sorted({resolve_precision(p.precision) for p in planners[m]}))
                     for m in cfg.methods if m in planners)


def seeds_of(cfg: PlanConfig, layouts: str) -> List[int]:
    """The planner seeds run on a map set."""
    return list(cfg.tasks.seen_seeds) if layouts == "train" and cfg.tasks.seen_seeds is not None else list(cfg.seeds)


def _stats(results, layouts, method, b):
    rows = [r for r in results if r.get("layouts") == layouts and r["method"] == method and r["bin"] == b]
    s = np.concatenate([r["success"] for r in rows]).astype(float)
    p = s.mean()
    return p, np.sqrt(p * (1 - p) / len(s)), len(s), rows


def summarise(results, cfg: PlanConfig, layouts: str) -> str:
    """The table of one map set."""
    bins = [f"[{lo:.2f}, {hi:.2f})" for lo, hi in cfg.tasks.bins]
    head = ("| method | " + " | ".join(f"success {b}" for b in bins)
            + " | success, all bins | plan time / episode (s) | compute / episode |")
    lines = [head, "|" + " --- |" * (len(bins) + 4)]
    for m in cfg.methods:
        cells, rows_all = [], []
        for b in range(len(bins)):
            p, se, n, rows = _stats(results, layouts, m, b)
            cells.append(f"{100 * p:.1f} ± {100 * se:.1f}")
            rows_all += rows
        s = np.concatenate([r["success"] for r in rows_all]).astype(float)
        cells.append(f"{100 * s.mean():.1f} ± {100 * np.sqrt(s.mean() * (1 - s.mean()) / len(s)):.1f}")
        t = np.mean([r["plan_time"] for r in rows_all])
        c = np.mean([r["compute"] for r in rows_all])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {t:.3f} | {c:,.0f} |")
    seeds = seeds_of(cfg, layouts)
    n = cfg.tasks.per_bin * len(seeds)
    lines.append(f"\nsuccess % ± binomial s.e. over {cfg.tasks.per_bin} tasks x {len(seeds)} seeds = {n} "
                 f"episodes per cell; bins = shortest-path length; compute = predictor steps "
                 f"(samples x iterations x horizon, summed over replans; per episode, max_steps={cfg.max_steps}); "
                 f"predictor rollouts in {rollout_precisions(cfg) or 'none'}")
    return "\n".join(lines)


def _write_csv(results, cfg: PlanConfig, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layouts", "method", "bin_low", "bin_high", "success", "stderr", "episodes", "mean_steps_success",
                    "plan_time_per_episode_s", "compute_per_episode"])
        for x, m, (b, (lo, hi)) in product(cfg.tasks.layouts, cfg.methods, enumerate(cfg.tasks.bins)):
            p, se, n, rows = _stats(results, x, m, b)
            succ = np.concatenate([r["success"] for r in rows])
            steps = np.concatenate([r["steps"] for r in rows])[succ]
            w.writerow([x, m, lo, hi, f"{p:.4f}", f"{se:.4f}", n, f"{steps.mean() if len(steps) else float('nan'):.1f}",
                        f"{np.mean([r['plan_time'] for r in rows]):.4f}", int(np.mean([r["compute"] for r in rows]))])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success(results, bins, methods, out_png: Path, layouts: Optional[List[str]] = None) -> None:
    """Success rate (± s.e.) against the distance bin's centre, one line per method and map set: the
    first set solid, the others dashed in the same colour (layouts None: rows carry no map set)."""
    layouts = layouts or [None]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [0.5 * (lo + hi) for lo, hi in bins]
    for k, which in enumerate(layouts):
        for i, m in enumerate(methods):
            stats = [_stats(results, which, m, b)[:2] for b in range(len(bins))]
            p = np.array([s[0] for s in stats]) * 100
            se = np.array([s[1] for s in stats]) * 100
            ax.errorbar(x, p, yerr=se, marker="o" if k == 0 else "x", capsize=3, color=f"C{i}",
                        ls="-" if k == 0 else "--", alpha=1.0 if k == 0 else 0.5,
                        label=m if which is None else f"{m} ({which})")
    ax.set_xlabel("shortest-path distance start -> goal (bin centre)")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_with_help(fig, out_png, f"Success falls with distance; solid: {layouts[0] or 'all'} maps. A planner that keeps its success\n"
                   "in the far bins plans long horizons; bars: ± 1 s.e. over tasks and seeds.", dpi=110)


def plot_episodes(episodes, tasks, walls_all, probe, cfg: PlanConfig, out_png: Path) -> None:
    """Rows: example tasks from the longest bin; columns: methods (first seed). Executed path (solid),
    the first imagined path decoded to positions (dashed), subgoals (triangles), start (o), goal (*)."""
    plt = _pyplot()
    methods = [m for m in cfg.methods if (m, cfg.seeds[0]) in episodes]
    idx = np.flatnonzero(tasks["bin"] == tasks["bin"].max())[: cfg.examples]
    fig, axes = plt.subplots(len(idx), len(methods), figsize=(2.6 * len(methods), 2.6 * len(idx)), squeeze=False)
    for col, m in enumerate(methods):
        ep, policy = episodes[(m, cfg.seeds[0])]
        planned = getattr(policy, "first_planned_z", None)
        if isinstance(policy, HierarchicalPlanner):
            planned = policy.planned_z1
        for row, i in enumerate(idx):
            ax = axes[row][col]
            ax.imshow(walls_all[tasks["layout"][i]], cmap="Greys", extent=(0, 1, 1, 0), vmin=0, vmax=1.5)
            path = ep["path"][i]
            ax.plot(path[:, 0], path[:, 1], "-", color="tab:blue", lw=1.5, label="executed")
            if planned is not None:
                pp = np.concatenate([path[:1], probe(planned[i])], 0)
                ax.plot(pp[:, 0], pp[:, 1], "--", color="tab:orange", lw=1.2, label="planned (first plan)")
            if isinstance(policy, HierarchicalPlanner) and policy.subgoals:
                sg = probe(torch.stack([s[i] for s in policy.subgoals]))
                ax.plot(sg[:, 0], sg[:, 1], "^", color="tab:purple", ms=4, label="subgoals")
            ax.plot(*tasks["start"][i], "o", color="tab:green", ms=6)
            ax.plot(*tasks["goal"][i], "*", color="tab:red", ms=10)
            ax.set_xlim(0, 1)
            ax.set_ylim(1, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(m, fontsize=9)
            ax.set_xlabel(("success" if ep["success"][i] else "failure") + f", d={tasks['dist'][i]:.2f}", fontsize=7)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, bbox_to_anchor=(0.5, 0.045))
    save_with_help(fig, out_png, "Longest-distance tasks, start o, goal *. A good plan heads for the door\nand its "
                   "executed path ends at the goal; a path that hugs a wall is stuck.", bottom=0.04)
