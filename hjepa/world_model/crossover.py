"""Long-horizon crossover: does a higher level of the world model predict far ahead better than rolling
level 0 forward step by step? (issue 11, item 4)

    python train.py --config configs/hjepa/crossover.yaml checkpoint=<worldmodel run>/wm-latest.pt

In these worlds the agent's position is known, so every level's prediction is scored in one space:
1. Position probe per level: a ridge regression from level-k states (`wm.state(wm.encode(frames), k)`)
   to the true (x, y), fitted on true latents of a fresh draw of the checkpoint's own training data
   (`probe.seed`); its error on held-out episodes of that draw is the floor a level's prediction can reach.
2. Held-out episodes (`episodes`, a trajectory config of their own: same world, another seed).
3. From start times t0 of those episodes, for each horizon h (low-level steps):
   (a) level 0 rolls out h steps under the true actions from the encoded start frame;
   (b) each level k >= 1 whose span divides h rolls out h / span_k steps from the start frame's level-k
       state, driven by the macro-actions of the true action chunks.
   Each prediction is decoded by its level's probe; error = distance to the true position at t0 + h
   (world units; the square is 1 wide). Baselines: "copy the start" (the true start position, i.e. no
   motion) and the probe floor (the probe on the true level-k latent at t0 + h, same samples).
Means come with percentile-bootstrap bands over episodes (start times of one episode are not independent);
the level-k minus level-0 difference has its own paired bootstrap band. Crossover horizon of level k: the
smallest h from which on (at every measured h' >= h) level k's mean error is below level 0's.

Written to the run folder: crossover.md (the table and the crossover lines), crossover.csv, probes.csv,
error_vs_horizon.png.
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from data.generated.envs import render
from data.generated.trajectories import TrajectoryConfig, generate, make_layouts
from hjepa.world_model.model import WorldModel
from hjepa.world_model.train import load_trained
from vjepa.engine.config import ConfigError, to_yaml
from vjepa.engine.runtime import make_accelerator, resolve_run_dir
from vjepa.plots import _pyplot, save_with_help

logger = logging.getLogger(__name__)


@dataclass
class PositionProbeConfig:
    """Args:
        episodes: episodes of the fresh draw of the checkpoint's training data (every frame is used).
        held_out: fraction of those episodes kept out of the fit, to measure the probe's error.
        ridge: L2 penalty, relative to the mean squared (standardised) feature, i.e. per sample.
        seed: trajectory seed of the draw (the training data used the checkpoint's `data.seed`).
    """

    episodes: int = 256
    held_out: float = 0.25
    ridge: float = 1e-3
    seed: int = 1001


def _episodes() -> TrajectoryConfig:
    return TrajectoryConfig(num_trajectories=256, length=72, seed=2, cache_dir=None)


@dataclass
class CrossoverConfig:
    """Args:
        checkpoint: world-model checkpoint (`wm-latest.pt` of a `task: worldmodel` run).
        episodes: the held-out episodes; `env` must be the checkpoint's world, `length` >= max horizon.
        horizons: h, in low-level steps.
        starts_per_episode: start times t0 per episode, drawn uniformly where t0 + max horizon fits.
        context: frames the predictors see while rolling out (None = each predictor's max_frames).
        probe: the position probes.
        bootstrap / confidence: resamples of episodes and the level of the bands.
        batch_size: samples per forward pass. seed: start times and bootstrap draws.
        cpu_threads: torch threads (0 = torch's default; 1 on small shared CPUs).
        folder: run folder (None = runs/crossover-<time>).
    """

    task: str = "crossover"
    checkpoint: str = ""
    episodes: TrajectoryConfig = field(default_factory=_episodes)
    horizons: List[int] = field(default_factory=lambda: [8, 16, 24, 32, 48, 64])
    starts_per_episode: int = 4
    context: Optional[int] = None
    probe: PositionProbeConfig = field(default_factory=PositionProbeConfig)
    bootstrap: int = 2000
    confidence: float = 0.95
    batch_size: int = 256
    seed: int = 0
    cpu_threads: int = 1
    folder: Optional[str] = None


class RidgeProbe:
    """Linear map features `[N, D]` -> targets `[N, P]`, fitted in closed form (float64) on standardised
    features with an L2 penalty `ridge` x N (so its strength does not depend on the sample count)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3):
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(f"probe needs x [N, D] and y [N, P], got {tuple(x.shape)} and {tuple(y.shape)}")
        if len(x) <= 1:
            raise ValueError("probe needs at least 2 samples")
        x, y = x.double(), y.double()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-8
        xs = (x - self.mean) / self.std
        y_mean = y.mean(0)
        gram = xs.T @ xs + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
        self.weight = torch.linalg.solve(gram, xs.T @ (y - y_mean))  # [D, P]
        self.bias = y_mean

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., D]` -> `[..., P]` (float64)."""
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias


def crossover_horizon(horizons: Sequence[int], err_low: Sequence[float], err_high: Sequence[float]) -> Optional[int]:
    """Smallest h such that the higher level's error is below the low level's at h and at every larger
    measured horizon (NaN = not measured there, skipped); None when there is no such h."""
    pts = [(h, lo, hi) for h, lo, hi in sorted(zip(horizons, err_low, err_high))
           if np.isfinite(lo) and np.isfinite(hi)]
    found = None
    for h, lo, hi in reversed(pts):
        if hi < lo:
            found = h
        else:
            break
    return found


def bootstrap_bands(per_episode: np.ndarray, resamples: int, confidence: float, seed: int) -> np.ndarray:
    """per_episode `[E, H]` (one mean per episode and horizon, NaN = not measured) -> `[H, 3]` (mean, low,
    high): the mean over episodes and its percentile-bootstrap band (episodes resampled with replacement)."""
    E, H = per_episode.shape
    out = np.full((H, 3), np.nan)
    if E == 0:
        return out
    idx = np.random.default_rng(seed).integers(E, size=(resamples, E))
    a = (1 - confidence) / 2
    for j in range(H):
        col = per_episode[:, j]
        if not np.isfinite(col).all():
            continue
        means = col[idx].mean(1)  # [resamples]
        out[j] = col.mean(), np.quantile(means, a), np.quantile(means, 1 - a)
    return out


def check(cfg: CrossoverConfig) -> None:
    hs = cfg.horizons
    if not hs or min(hs) < 1 or len(set(hs)) != len(hs):
        raise ConfigError(f"horizons must be distinct positive step counts, got {hs}")
    if cfg.episodes.length < max(hs):
        raise ConfigError(f"episodes.length ({cfg.episodes.length}) must be >= the longest horizon ({max(hs)}): "
                          "the true position at t0 + h must exist")
    if cfg.starts_per_episode < 1 or cfg.batch_size < 1 or cfg.bootstrap < 10:
        raise ConfigError("need starts_per_episode >= 1, batch_size >= 1 and bootstrap >= 10")
    if not 0 < cfg.confidence < 1 or not 0 < cfg.probe.held_out < 1:
        raise ConfigError("confidence and probe.held_out must lie in (0, 1)")
    if cfg.probe.episodes < 4 or cfg.probe.ridge < 0:
        raise ConfigError("probe.episodes must be >= 4 and probe.ridge >= 0")
    if cfg.context is not None and cfg.context < 1:
        raise ConfigError(f"context must be >= 1 (or null), got {cfg.context}")
    if not cfg.checkpoint:
        raise ConfigError("crossover: set checkpoint=<worldmodel run>/wm-latest.pt")


def check_world(episodes: TrajectoryConfig, trained: TrajectoryConfig) -> None:
    """The held-out episodes must live in the checkpoint's world (same rendering and dynamics)."""
    diff = [f"{f.name}: {getattr(episodes.env, f.name)!r} (checkpoint {getattr(trained.env, f.name)!r})"
            for f in fields(trained.env) if getattr(episodes.env, f.name) != getattr(trained.env, f.name)]
    if diff:
        raise ConfigError("episodes.env must be the checkpoint's world; differs in " + "; ".join(diff))


def measured_levels(wm: WorldModel, horizons: Sequence[int]) -> Dict[int, List[int]]:
    """level k -> the horizons it is scored at (level 0: all; level k: those its span divides)."""
    out = {0: list(horizons)}
    for k in range(1, wm.num_levels):
        hs = [h for h in horizons if h % wm.span(k) == 0]
        if hs:
            out[k] = hs
        else:
            logger.warning("level %d (span %d) divides none of the horizons %s: not scored", k, wm.span(k),
                           list(horizons))
    return out


@torch.no_grad()
def encode_states(wm: WorldModel, frames: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    """frames `[N, C, H, W]` -> [level-k states `[N, D_k]` for k = 0..K] (batched)."""
    z0 = torch.cat([wm.encode(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])
    return [wm.state(z0, k) for k in range(wm.num_levels)]


def fit_probes(wm: WorldModel, data: dict, env, pcfg: PositionProbeConfig, batch_size: int):
    """-> ([probe per level], [held-out mean position error per level]) on every frame of `data`
    (episodes split into fit / held-out)."""
    N, T1 = data["states"].shape[:2]
    n_out = min(N - 1, max(1, int(round(pcfg.held_out * N))))  # at least one episode on each side
    walls = data["walls"][data["layout"]]  # [N, G, G]
    frames = render(np.repeat(walls, T1, axis=0), data["states"].reshape(-1, 2), env,
                    data["distractors"].reshape(N * T1, *data["distractors"].shape[2:]))
    zs = encode_states(wm, torch.from_numpy(frames), batch_size)  # [N * T1, D_k] per level
    pos = torch.from_numpy(data["states"].reshape(-1, 2))
    fit = torch.arange(N * T1) < (N - n_out) * T1  # episodes 0 .. N - n_out - 1 fit, the rest are held out
    probes, errors = [], []
    for z in zs:
        p = RidgeProbe(z[fit], pos[fit], pcfg.ridge)
        probes.append(p)
        errors.append((p(z[~fit]) - pos[~fit].double()).norm(dim=-1).mean().item())
    return probes, errors


def draw_starts(length: int, num_episodes: int, per_episode: int, max_h: int, seed: int) -> np.ndarray:
    """-> `[num_episodes, per_episode]` start times t0 with t0 + max_h <= length."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, length - max_h + 1, size=(num_episodes, per_episode))


@torch.no_grad()
def predict_positions(wm: WorldModel, probes, data: dict, env, starts: np.ndarray, levels: Dict[int, List[int]],
                      context: Optional[int], batch_size: int) -> Dict[str, np.ndarray]:
    """Errors per sample: {"L<k>": `[S, H_k]` (rollout of level k), "L<k> floor": probe on true latents,
    "copy": `[S, H]`}, samples in (episode, start) order, horizons as in `levels`."""
    E, P = starts.shape
    ep = np.repeat(np.arange(E), P)  # [S]
    t0 = starts.reshape(-1)
    hs = levels[0]
    H = max(hs)
    walls = data["walls"][data["layout"][ep]]  # [S, G, G]
    out: Dict[str, list] = {}
    for lo in range(0, len(ep), batch_size):
        e, t, w = ep[lo:lo + batch_size], t0[lo:lo + batch_size], walls[lo:lo + batch_size]
        B = len(e)
        steps = t[:, None] + np.arange(H)[None]  # [B, H]
        actions = torch.from_numpy(data["actions"][e[:, None], steps])  # [B, H, A]
        states = data["states"]
        dis = data["distractors"]
        frame0 = torch.from_numpy(render(w, states[e, t], env, dis[e, t]))  # [B, C, S, S]
        z0 = wm.encode(frame0)  # [B, D0]
        res = {"copy": np.stack([np.linalg.norm(states[e, t + h] - states[e, t], axis=-1) for h in hs], 1)}
        for k, hk in levels.items():
            span = wm.span(k)
            n = max(hk) // span
            chunks = actions[:, :n * span].reshape(B, n, span, actions.shape[-1])
            codes = wm.macro(chunks, k) if k else actions[:, :n]  # [B, n, A_k]
            pred = wm.predictor_of(k).rollout(wm.state(z0, k)[:, None], codes, context)  # [B, n, D_k]
            xy = probes[k](pred[:, [h // span - 1 for h in hk]]).numpy()  # [B, H_k, 2]
            truth = np.stack([states[e, t + h] for h in hk], 1)  # [B, H_k, 2]
            res[f"L{k}"] = np.linalg.norm(xy - truth, axis=-1)
            # floor: the probe on the true level-k latent at t0 + h (the best a perfect prediction can score)
            frames_h = render(np.repeat(w, len(hk), 0), truth.reshape(-1, 2), env,
                              dis[e[:, None], t[:, None] + np.array(hk)[None]].reshape(B * len(hk), *dis.shape[2:]))
            z_h = wm.state(wm.encode(torch.from_numpy(frames_h)), k)  # [B * H_k, D_k]
            res[f"L{k} floor"] = np.linalg.norm(probes[k](z_h).numpy().reshape(B, len(hk), 2) - truth, axis=-1)
        for name, v in res.items():
            out.setdefault(name, []).append(v)
    return {name: np.concatenate(v) for name, v in out.items()}


def summarise(errors: Dict[str, np.ndarray], levels: Dict[int, List[int]], num_episodes: int,
              cfg: CrossoverConfig) -> Dict[str, np.ndarray]:
    """-> {method: `[H, 3]` (mean, band low, band high) over all horizons (NaN where not scored)}, plus
    "L<k> - L0" paired differences."""
    hs = levels[0]

    def per_episode(name: str) -> np.ndarray:
        hk = levels[int(name[1:].split()[0])] if name.startswith("L") else hs
        full = np.full((len(errors[name]), len(hs)), np.nan)
        full[:, [hs.index(h) for h in hk]] = errors[name]
        return full.reshape(num_episodes, -1, len(hs)).mean(1)  # [E, H]

    per = {name: per_episode(name) for name in errors}
    for k in levels:
        if k:
            per[f"L{k} - L0"] = per[f"L{k}"] - per["L0"]
    return {name: bootstrap_bands(v, cfg.bootstrap, cfg.confidence, cfg.seed + 1) for name, v in per.items()}


def crossover_lines(bands: Dict[str, np.ndarray], levels: Dict[int, List[int]], wm: WorldModel) -> List[str]:
    """Per level k >= 1: the crossover horizon (CI-aware: do the two bands overlap there, does the paired band
    of the difference exclude 0), and every horizon where level k is better, or worse, than level 0."""
    lines = []
    for k, hk in levels.items():
        if not k:
            continue
        idx = [levels[0].index(h) for h in hk]
        lo, hi, d = bands["L0"][idx], bands[f"L{k}"][idx], bands[f"L{k} - L0"][idx]  # [H_k, 3] each
        h = crossover_horizon(hk, lo[:, 0], hi[:, 0])

        def listed(sel) -> str:
            return ", ".join(f"{hh}{'*' if d[j, 2] < 0 or d[j, 1] > 0 else ''}" for j, hh in enumerate(hk) if sel(j))

        better, worse = listed(lambda j: hi[j, 0] < lo[j, 0]), listed(lambda j: hi[j, 0] >= lo[j, 0])
        name = f"level {k} (span {wm.span(k)})"
        if h is None:
            head = f"- crossover {name}: none (not more accurate than level-0 rollout at every horizon from some h on)"
        else:
            j = hk.index(h)
            overlap = "overlap" if hi[j, 2] >= lo[j, 1] else "do not overlap"
            sig = "excludes 0" if d[j, 2] < 0 else "includes 0"
            first = " (the shortest horizon it is scored at: the crossover lies at or below it)" if h == hk[0] else ""
            head = (f"- crossover {name}: h = {h} steps{first}; there level {k} {hi[j, 0]:.4f} vs level 0 "
                    f"{lo[j, 0]:.4f}, bands {overlap}, paired difference {d[j, 0]:+.4f} [{d[j, 1]:+.4f}, "
                    f"{d[j, 2]:+.4f}] {sig}")
        lines.append(f"{head}. More accurate at h = {better or 'none'}; less at h = {worse or 'none'} "
                     "(* = the paired band of the difference excludes 0)")
    return lines


def floors(bands: Dict[str, np.ndarray], levels: Dict[int, List[int]]) -> Dict[str, List[int]]:
    """Distinct probe floors: {"L<k> floor": the levels sharing it} (an `encoder: identity` level's state is the
    level below's, so its probe and floor are the same)."""
    out: Dict[str, List[int]] = {}
    for k in levels:
        key = f"L{k} floor"
        ok = np.isfinite(bands[key][:, 0])  # level k's horizons are a subset of those of the levels below
        same = next((f for f in out if np.array_equal(bands[f][ok], bands[key][ok])), None)
        if same is None:
            out[key] = [k]
        else:
            out[same].append(k)
    return out


def report(bands: Dict[str, np.ndarray], levels: Dict[int, List[int]], wm: WorldModel, probe_err: List[float],
           cfg: CrossoverConfig, info: str) -> str:
    hs = levels[0]
    pct = round(100 * cfg.confidence)
    fl = floors(bands, levels)
    diffs = [f"L{k} - L0" for k in levels if k]
    cols = ["copy"] + [f"L{k}" for k in levels] + list(fl) + diffs
    title = {"copy": "copy start"} | {f"L{k}": f"level {k} (span {wm.span(k)})" for k in levels} | \
            {f: "probe floor L" + "=L".join(map(str, ks)) for f, ks in fl.items()} | \
            {c: f"level {c[1:].split()[0]} - level 0 (paired)" for c in diffs}
    lines = [f"## Position error vs horizon (world units; mean [{pct}% bootstrap band over episodes])", "", info, "",
             "| h (steps) | " + " | ".join(title[c] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for i, h in enumerate(hs):
        cells = []
        for c in cols:
            m, lo, hi = bands[c][i]
            cells.append("—" if not np.isfinite(m) else f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]" if " - " in c else
                         f"{m:.4f} [{lo:.4f}, {hi:.4f}]")
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    lines += ["", "Crossover (smallest h from which level k beats level-0 rollout at every longer horizon):"]
    lines += crossover_lines(bands, levels, wm)
    lines += ["", "Position probes (ridge, true latents -> (x, y)); mean error on held-out episodes of a fresh "
              "training-data draw:"]
    lines += [f"- level {k}: {e:.4f}" for k, e in enumerate(probe_err)]
    return "\n".join(lines) + "\n"


def write_csv(bands: Dict[str, np.ndarray], levels: Dict[int, List[int]], wm: WorldModel, samples: int,
              episodes: int, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["horizon", "method", "level", "span", "mean", "band_low", "band_high", "samples", "episodes"])
        for name, b in bands.items():
            k = int(name[1:].split()[0]) if name.startswith("L") else ""
            for i, h in enumerate(levels[0]):
                if np.isfinite(b[i, 0]):
                    w.writerow([h, name, k, wm.span(k) if k != "" else "", *(f"{v:.5f}" for v in b[i]), samples,
                                episodes])


def plot(bands: Dict[str, np.ndarray], levels: Dict[int, List[int]], wm: WorldModel, cfg: CrossoverConfig,
         out_png: Path) -> None:
    plt = _pyplot()
    hs = np.array(levels[0])
    fl = floors(bands, levels)
    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    for k in levels:
        b = bands[f"L{k}"]
        ok = np.isfinite(b[:, 0])
        label = "level 0: autoregressive rollout, true actions" if k == 0 else \
            f"level {k}: rollout over {wm.span(k)}-step macro-actions"
        line, = ax.plot(hs[ok], b[ok, 0], marker="o", ms=4, label=label)
        ax.fill_between(hs[ok], b[ok, 1], b[ok, 2], color=line.get_color(), alpha=0.2, lw=0)
        if f"L{k} floor" in fl:
            f = bands[f"L{k} floor"]
            ax.plot(hs[ok], f[ok, 0], ls=":", color=line.get_color(), lw=1,
                    label=("levels " if len(fl[f"L{k} floor"]) > 1 else "level ") + ", ".join(map(str, fl[f"L{k} floor"]))
                    + " probe floor (true latent)")
    c = bands["copy"]
    ax.plot(hs, c[:, 0], ls="--", color="gray", label="copy the start (no motion)")
    ax.fill_between(hs, c[:, 1], c[:, 2], color="gray", alpha=0.15, lw=0)
    ax.set_xlabel("horizon h (low-level steps ahead of the start frame)")
    ax.set_ylabel("position error at t0 + h (world units)")
    ax.set_title("Predicted-position error vs horizon, per level (held-out episodes)", fontsize=10)
    ax.set_xticks(hs)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: curves fill the axes
    save_with_help(fig, out_png, f"Lower is better. Bands: {round(100 * cfg.confidence)}% bootstrap over episodes. "
                   "A level pays off from the horizon\nwhere its curve drops below level 0's; dotted: the best its "
                   "probe can decode from true latents.", dpi=110)


def layout_note(data: dict, trained: TrajectoryConfig) -> str:
    """How many of the episodes' wall maps the checkpoint was trained on."""
    seen_maps = {m.tobytes() for m in make_layouts(trained.env, trained.num_layouts, trained.layout_seed,
                                                     trained.layout_split)}
    maps = data["walls"][data["layout"]]  # [N, G, G]
    seen = sum(m.tobytes() in seen_maps for m in maps)
    return f"{seen} of {len(maps)} episodes on a wall map the world model was trained on"


def run(cfg: CrossoverConfig, dry_run: bool = False) -> Optional[Path]:
    check(cfg)
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    wm_cfg, wm, _ = load_trained(cfg.checkpoint)
    check_world(cfg.episodes, wm_cfg.data)
    levels = measured_levels(wm, cfg.horizons)
    if dry_run:
        print(to_yaml(cfg))
        print(f"{cfg.episodes.num_trajectories} episodes x {cfg.starts_per_episode} starts; levels scored at "
              + "; ".join(f"level {k} (span {wm.span(k)}): h = {hk}" for k, hk in levels.items()))
        return None
    run_dir = resolve_run_dir(cfg.folder, "crossover", make_accelerator("float32"))
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    env = wm_cfg.data.env
    tick = time.time()
    probe_data = generate(replace(wm_cfg.data, num_trajectories=cfg.probe.episodes, seed=cfg.probe.seed,
                                  cache_dir=None))
    probes, probe_err = fit_probes(wm, probe_data, env, cfg.probe, cfg.batch_size)
    logger.info("position probes fitted in %.0fs; held-out error per level %s", time.time() - tick,
                [round(e, 4) for e in probe_err])
    data = generate(cfg.episodes)
    starts = draw_starts(cfg.episodes.length, cfg.episodes.num_trajectories, cfg.starts_per_episode,
                         max(cfg.horizons), cfg.seed)
    tick = time.time()
    errors = predict_positions(wm, probes, data, env, starts, levels, cfg.context, cfg.batch_size)
    logger.info("rollouts of %d samples in %.0fs", starts.size, time.time() - tick)
    bands = summarise(errors, levels, cfg.episodes.num_trajectories, cfg)
    info = (f"{cfg.episodes.num_trajectories} held-out episodes (episodes.seed {cfg.episodes.seed}, "
            f"{layout_note(data, wm_cfg.data)}) x {cfg.starts_per_episode} start times = {starts.size} samples; "
            f"checkpoint {cfg.checkpoint}; rollout context {cfg.context or 'max_frames'} frames.")
    table = report(bands, levels, wm, probe_err, cfg, info)
    print(table)
    (run_dir / "crossover.md").write_text(table)
    write_csv(bands, levels, wm, starts.size, cfg.episodes.num_trajectories, run_dir / "crossover.csv")
    with open(run_dir / "probes.csv", "w", newline="") as f:
        csv.writer(f).writerows([["level", "held_out_error"], *[[k, f"{e:.5f}"] for k, e in enumerate(probe_err)]])
    plot(bands, levels, wm, cfg, run_dir / "error_vs_horizon.png")
    logger.info("crossover study written to %s", run_dir)
    return run_dir
