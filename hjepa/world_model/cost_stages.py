"""The stages after the levels: the learned goal distance (the planners' cost, goal_distance.py), then the
refine stage (the level-0 predictor(s) fitted to that cost, refine.py), then optionally the on-policy refine
stage (the same on the planner's own episodes too, on_policy.py). All read the frozen level-0 states of the
distance's training episodes; `save_fn` writes the run's checkpoint."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Callable, Optional

import torch

from data.generated.trajectories import TrajectoryConfig, load_or_generate
from data.seeding import derive_seed
from hjepa.world_model.encoders import frozen_part
from hjepa.world_model.feature_cache import encode_dataset
from hjepa.world_model.goal_distance import DistanceConfig, distance_loss, imagine, pair_batch, set_normalisation
from hjepa.world_model.model import WorldModel
from hjepa.world_model.on_policy import on_policy_batch
from hjepa.world_model.refine import refine_batch, refine_loss
from hjepa.world_model.stage import StageConfig, stage_loop
from vjepa.engine.optim import optimizer_step, scalars

if TYPE_CHECKING:
    from hjepa.world_model.train import WorldModelConfig

logger = logging.getLogger(__name__)


def distance_stage(d: DistanceConfig) -> StageConfig:
    """The goal distance's optimisation as a stage (same warmup-cosine schedule as the levels)."""
    return StageConfig(window=1, steps=d.steps, batch_size=d.batch_size, lr=d.lr, weight_decay=d.weight_decay)


@torch.no_grad()
def representations(wm: WorldModel, data: dict, cfg: WorldModelConfig, feats: Optional[torch.Tensor]) -> torch.Tensor:
    """Level-0 states of every training state `[N, T+1, D]` (CPU), from the frozen level 0."""
    wm.levels[0].eval()
    if feats is None:
        return encode_dataset(wm.encoder, data, cfg.data.env)
    return torch.cat([wm.levels[0].from_features(f) for f in feats.split(256)])


def distance_data(cfg: WorldModelConfig) -> TrajectoryConfig:
    """The data config of the distance's own episodes (`distance.length` > 0)."""
    d = cfg.distance
    return replace(cfg.data, length=d.length, num_trajectories=d.episodes or cfg.data.num_trajectories,
                   seed=derive_seed(cfg.data.seed, 100))


def distance_episodes(wm, data, cfg: WorldModelConfig, accelerator, feats: Optional[torch.Tensor]) -> tuple:
    """The goal distance's training episodes as (frozen level-0 states `[N, T+1, D]`, actions `[N, T, A]`), on
    the CPU: the world model's own, or with `distance.length` their own longer ones (same maps and policies,
    another seed; encoded here, without the feature cache)."""
    if cfg.distance.length:
        data = load_or_generate(distance_data(cfg))
        feats = encode_dataset(frozen_part(wm.encoder), data, cfg.data.env) if feats is not None else None
    z = representations(wm, data, cfg, feats.to(accelerator.device) if feats is not None else None).cpu()
    return z, torch.from_numpy(data["actions"])


def run_distance(wm, model, opt, st: StageConfig, steps, stop, cfg: WorldModelConfig, accelerator, run_dir,
                 save_fn: Callable[[], None], episodes: Callable[[], tuple]) -> None:
    """Train the learned goal distance (`goal_distance.py`) on the frozen level-0 states of the training
    episodes (`episodes()`: `distance_episodes`'s output): expectile regression of D(z_t, z_u) on |u - t|.
    Logs to `<run>/distance/`."""
    k = wm.num_levels
    t0 = time.time()
    z, actions = episodes()  # actions: for `distance.imagined`
    if steps[k] == 0:  # on resume the checkpoint holds the statistics of the first start
        set_normalisation(accelerator.unwrap_model(model), z)
    logger.info("goal distance: %d episodes x %d states of the frozen level 0 (%.0fs)", *z.shape[:2], time.time() - t0)
    for level in wm.levels:
        level.eval()
    model.train()
    world, rank = accelerator.num_processes, accelerator.process_index

    def step():
        # one global batch (this rank's slice below); the next states only for the Bellman term
        b = pair_batch(z, st.batch_size * world, cfg.meta.seed, steps[k], with_next=cfg.distance.bootstrap > 0)
        if cfg.distance.imagined:
            b = imagine(b, z, actions, wm.predictor, cfg.distance.imagined, cfg.distance.imagined_steps,
                        cfg.meta.seed, steps[k])
        b = {kk: v[rank * st.batch_size:(rank + 1) * st.batch_size].to(accelerator.device) for kk, v in b.items()}

        objective_fn = partial(distance_loss, model, b, cfg.distance)
        return optimizer_step(accelerator, opt, objective_fn, (model,), sum(steps), st.clip_grad, {"": model})

    def metrics(out, lr, end):
        m = {kk: v for kk, v in scalars(out).items() if kk != "grad_norm"}
        m["lr"] = lr
        return {f"distance/{kk}": v for kk, v in m.items()}, dict(loss=f"{m['loss']:.3f}", mean=f"{m['mean_distance']:.1f}")

    stage_loop(k, st, steps, stop, opt, cfg, accelerator, run_dir / "distance", "goal distance", step, metrics,
               save_fn)


def refine_stage(cfg: WorldModelConfig) -> StageConfig:
    """The refine stage's optimisation: cosine from `refine.lr`, no warmup (the predictor is trained already)."""
    r = cfg.refine
    return StageConfig(window=cfg.stage.window, steps=r.steps, batch_size=r.batch_size, lr=r.lr, warmup=0,
                       weight_decay=r.weight_decay, clip_grad=cfg.stage.clip_grad)


def on_policy_stage(cfg: WorldModelConfig) -> StageConfig:
    """The on-policy refine stage's optimisation: as the refine stage's, with `refine.on_policy`'s steps and lr."""
    o = cfg.refine.on_policy
    return replace(refine_stage(cfg), steps=o.steps, lr=o.lr)


def run_refine(wm, opt, st: StageConfig, steps, stop, cfg: WorldModelConfig, accelerator, run_dir,
               save_fn: Callable[[], None], episodes: Callable[[], tuple], planned: Optional[dict] = None) -> None:
    """Fine-tune the level-0 predictor(s) so that the goal distance of their imagined states matches that of
    the true states (refine.py), on the distance's training episodes (`episodes()`, as `run_distance`);
    everything else stays frozen. Logs to `<run>/refine/`. The predictors are used unwrapped: their
    gradients are averaged over ranks here. With `planned` (the planner's episodes, `on_policy.encode_episodes`)
    this is the on-policy stage: `refine.on_policy.share` of each batch are windows of those; logs to
    `<run>/on_policy/`."""
    on = planned is not None
    k = wm.num_levels + 1 + on
    name, folder = ("on-policy refine", "on_policy") if on else ("refine", "refine")  # log name, run sub-folder
    t0 = time.time()
    z, actions = episodes()
    logger.info("%s: %d episodes x %d states of the frozen level 0 (%.0fs)", name, *z.shape[:2], time.time() - t0)
    for level in wm.levels:
        level.eval()
    predictors, distance = wm.predictors, wm.distance
    distance.eval().requires_grad_(False)
    params = [p for m in predictors for p in m.parameters()]
    world, rank, r = accelerator.num_processes, accelerator.process_index, cfg.refine

    def average_grads():
        if world > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))

    def global_batch() -> dict:
        n = st.batch_size * world
        if not on:
            return refine_batch(z, actions, n, r.horizon, cfg.meta.seed, steps[k])
        m = round(n * r.on_policy.share)
        parts = [refine_batch(z, actions, n - m, r.horizon, derive_seed(cfg.meta.seed, 107), steps[k])] if n > m else []
        parts.append(on_policy_batch(planned, m, r.horizon, cfg.meta.seed, steps[k]))
        return {kk: torch.cat([p[kk] for p in parts]) for kk in parts[0]}

    def step():
        b = global_batch()  # this rank's slice of one global batch
        b = {kk: v[rank * st.batch_size:(rank + 1) * st.batch_size].to(accelerator.device) for kk, v in b.items()}
        objective_fn = partial(refine_loss, predictors, distance, b, cfg.stage.window, cfg.loss.rollout_steps,
                               cfg.loss.rollout, r.coeff)
        return optimizer_step(accelerator, opt, objective_fn, (), sum(steps), st.clip_grad, {"": params},
                              sync_grads=average_grads)

    def metrics(out, lr, end):
        m = {kk: v for kk, v in scalars(out).items() if kk != "grad_norm"}
        m["lr"] = lr
        return {f"{folder}/{kk}": v for kk, v in m.items()}, dict(loss=f"{m['loss']:.4f}", gap=f"{m['distance_gap']:.2f}")

    try:
        stage_loop(k, st, steps, stop, opt, cfg, accelerator, run_dir / folder, name, step, metrics, save_fn)
    finally:
        distance.requires_grad_(True)
