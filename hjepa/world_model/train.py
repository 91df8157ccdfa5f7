"""Train the hierarchical action-conditioned world model bottom-up: level 0 (frames, actions), then each
level k >= 1 of `levels:` (level k-1's states `stride_k` steps apart, macro-actions) on the frozen levels below.

    python train.py --config configs/worldmodel/two_rooms.yaml [key.sub=value ...] [--dry-run]

Batches come from the engine's rank-sharded sampler (vjepa/engine/sampling.py) seeded from (seed, level):
each rank reads its own slice of a global batch, and a resumed run sees the same batches without
replaying the data. The checkpoint `<write_tag>-latest.pt` holds every level, one optimizer and step
count per level, and per level k >= 1 a macro-action bank: macro codes of training chunks, the support
the hierarchical planner is confined to at that level.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, load_or_generate
from data.seeding import derive_seed
from hjepa.levels import LevelConfig
from hjepa.world_model.cost_stages import (distance_episodes, distance_stage, on_policy_stage, refine_stage, run_distance,
                                           run_refine)
from hjepa.world_model.encoders import EncoderConfig, frozen_part
from hjepa.world_model.feature_cache import FeatureWindows, encode_dataset
from hjepa.world_model.goal_distance import DistanceConfig, check_distance
from hjepa.world_model.model import ActionLevelObjective, LossWeights, PredictorConfig, WorldModel
from hjepa.world_model.on_policy import check_on_policy, collect, encode_episodes
from hjepa.world_model.refine import RefineConfig, check_refine
from hjepa.world_model.stage import StageConfig, stage_loop
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.checkpoint import save_checkpoint
from vjepa.engine.config import ConfigError, check_resume, to_dict, to_yaml, upgrade
from vjepa.engine.monitor import monitor
from vjepa.engine.optim import ema_update, optimizer_step, param_groups, scalars
from vjepa.engine.runtime import checkpoint_paths, make_accelerator, resolve_run_dir
from vjepa.engine.sampling import ResumableBatchSampler
from vjepa.engine.schedules import linear_at
from vjepa.engine.sections import LoggingConfig, MetaConfig, check_logging, due

logger = logging.getLogger(__name__)


def _level_stage() -> StageConfig:
    return StageConfig(window=4)


@dataclass
class WorldLevelConfig(LevelConfig):
    """A world-model level above level 0 (an entry of `levels:`): an H-JEPA level (`hjepa.levels.LevelConfig`,
    with `actions: true`), plus its optimisation `stage` (windows of `stage.window` level steps) and
    `bank_size`: training chunks whose macro codes form the support the hierarchical planner is confined to;
    `rollout_steps`: this level's autoregressive rollout loss steps (None = `loss.rollout_steps`; a level is
    accurate about as far as its training rollout reaches, so a long-horizon level wants `stage.window - 1`).
    Defaults: today's CPU level 1 (stride 8, 2-d macro-actions, a 2 x 32 predictor, `encoder: identity`)."""

    stride: int = 8
    actions: bool = True
    encoder: str = "identity"
    num_heads: int = 2
    pred_embed_dim: int = 32
    pred_depth: int = 2
    stage: StageConfig = field(default_factory=_level_stage)
    bank_size: int = 4096
    rollout_steps: Optional[int] = None


def upgrade_level1(raw: dict) -> dict:
    """A config written before the one level stack: its `level1:` section (the fixed macro model) becomes
    `levels: [...]` (one identity-encoder action level, or none when it was disabled)."""
    if "level1" not in raw:
        return raw
    if "levels" in raw:
        raise ConfigError("config sets both `level1` (old name) and `levels`; keep `levels`")
    old = dict(raw.pop("level1"))
    if not old.pop("enabled", True):
        raw["levels"] = []
        return raw
    new = {"actions": True, "encoder": "identity"}
    pred = old.pop("predictor", {}) or {}
    for src, dst in (("dim", "pred_embed_dim"), ("depth", "pred_depth"), ("num_heads", "num_heads"),
                     ("max_frames", "max_frames")):
        if src in pred:
            new[dst] = pred.pop(src)
    if pred:
        raise ConfigError(f"unknown config keys {sorted(pred)} in level1.predictor")
    new.update(old)  # stride, macro_dim, stage, bank_size (unknown keys fail in the strict merge)
    raw["levels"] = [new]
    logger.info("config: `level1` is now `levels[0]` (level 1 of the level stack)")
    return raw


@dataclass
class WorldModelMetaConfig(MetaConfig):
    """The shared `meta:` section plus save_every_steps: checkpoint every this many steps of each level
    (and at the end). `max_steps` counts the steps of both levels together."""

    save_every_steps: int = 500


@dataclass
class WorldModelConfig:
    # Accepted and ignored before the engine (the value every config then carried): dropped on load;
    # `meta.save_every_freq` counted steps here (epochs in the other jobs), hence its new name.
    RETIRED_KEYS: ClassVar[Dict[str, Any]] = {"meta.eval_freq": 100, "logging.knn_monitor": False}
    RENAMED_KEYS: ClassVar[Dict[str, str]] = {"meta.save_every_freq": "meta.save_every_steps"}
    UPGRADE: ClassVar = staticmethod(upgrade_level1)

    task: str = "worldmodel"
    data: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    stage: StageConfig = field(default_factory=StageConfig)
    levels: List[WorldLevelConfig] = field(default_factory=lambda: [WorldLevelConfig()])
    distance: DistanceConfig = field(default_factory=DistanceConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    meta: WorldModelMetaConfig = field(default_factory=lambda: WorldModelMetaConfig(seed=0, dtype="float32"))
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(write_tag="wm", log_every=50))


def build_model(cfg: WorldModelConfig) -> WorldModel:
    check_distance(cfg.distance)
    check_refine(cfg.refine, cfg.distance.steps, cfg.stage.window)
    check_on_policy(cfg.refine.on_policy, cfg.refine.steps, cfg.data)
    return WorldModel(cfg.encoder, cfg.predictor, cfg.levels, img_size=cfg.data.env.img_size, distance=cfg.distance)


def upgrade_state(state: dict) -> dict:
    """A checkpoint written before the one level stack (level 0 in `model`, level 1 in `macro`, two
    optimizers, one macro bank) in today's layout (`model` = the whole stack, `opts`, `banks`)."""
    if "macro" not in state:
        return state
    model = {f"levels.0.{k}": v for k, v in state["model"].items()}
    model.update({f"levels.1.{k}": v for k, v in state.pop("macro").items()})
    state["model"] = model
    state["opts"] = [state.pop("opt"), state.pop("opt1")]
    state["banks"] = [state.pop("macro_bank")]
    return state


def load_trained(path: str | Path):
    """-> (config, world model in eval mode, macro banks: one `[M, m_k]` per level k >= 1)."""
    state = upgrade_state(ckpt.load(path))
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WorldModelConfig),
                                              upgrade(WorldModelConfig, state["config"])))
    wm = build_model(cfg)
    ckpt.load_state_strict(wm, state["model"], "world model")
    return cfg, wm.eval(), list(state["banks"])


def batches(windows: TrajectoryWindows, batch_size: int, seed: int, level: int, start_step: int,
            accelerator) -> Iterator[Dict[str, torch.Tensor]]:
    """This rank's batches from step `start_step` on: its slice of each global batch of the engine's
    sampler (epoch permutations seeded from (seed, level)), on the accelerator's device."""
    sampler = ResumableBatchSampler(len(windows), batch_size, accelerator.process_index, accelerator.num_processes,
                                    derive_seed(seed, level), start_step)
    for keys in sampler:
        b = windows.batch(np.array([index for index, _, _ in keys]))
        yield {k: v.to(accelerator.device) for k, v in b.items()}


def objective(model, *inputs):
    """The step's objective for `optimizer_step`: (total loss, the other loss terms and `z`)."""
    out = model(*inputs)
    return out.pop("loss"), out


@torch.no_grad()
def macro_bank(wm: WorldModel, k: int, data: dict, cfg: WorldModelConfig) -> torch.Tensor:
    """Level-k macro codes `[M, m_k]` of `bank_size` training action chunks (fixed seed)."""
    acts = torch.from_numpy(data["actions"])  # [N, T, A]
    S, M = wm.span(k), cfg.levels[k - 1].bank_size
    rng = np.random.default_rng(derive_seed(cfg.meta.seed, 99 + k - 1))
    n = rng.integers(acts.shape[0], size=M)
    t = rng.integers(acts.shape[1] - S + 1, size=M)
    chunks = torch.stack([acts[i, j:j + S] for i, j in zip(n, t)])  # [M, S, A]
    return wm.macro(chunks, k)


def save(accelerator, path: Path, wm, opts, steps, data: dict, cfg: WorldModelConfig, extra: Optional[dict] = None) -> None:
    inner = accelerator.unwrap_model(wm)
    state = {"model": accelerator.get_state_dict(wm), "opts": [o.state_dict() for o in opts], "steps": list(steps),
             "banks": [macro_bank(inner, k, data, cfg) for k in range(1, inner.num_levels)], "config": to_dict(cfg),
             **(extra or {})}
    save_checkpoint(accelerator, path, state, step=sum(steps), finite=[inner], replicated=[inner])


def level_inputs(wm: WorldModel, k: int, b: Dict[str, torch.Tensor]) -> tuple:
    """Inputs of level k >= 1 from a window batch at its span: (level k-1 states `[B, W, D]`, chunks of level
    k-1 actions `[B, W-1, stride_k, A_{k-1}]`), from the frozen levels below (no gradient)."""
    with torch.no_grad():
        z0 = wm.levels[0].from_features(b["features"]) if "features" in b else wm.encode(b["frames"])
        u = wm.state(z0, k - 1)
        a = b["actions"]  # [B, W-1, span_k, A]
        sub = wm.span(k - 1)
        chunks = wm.macro(a.reshape(*a.shape[:2], -1, sub, a.shape[-1]), k - 1)  # [B, W-1, stride_k, A_{k-1}]
    return u, chunks


def level_objectives(wm: WorldModel, cfg: WorldModelConfig) -> List[torch.nn.Module]:
    """The module each level trains through: level 0 itself, then an `ActionLevelObjective` per level
    (with its own rollout steps where `levels[k].rollout_steps` is set)."""
    out: List[torch.nn.Module] = [wm.levels[0]]
    for level, lv in zip(wm.levels[1:], cfg.levels):
        w = cfg.loss if lv.rollout_steps is None else replace(cfg.loss, rollout_steps=lv.rollout_steps)
        out.append(ActionLevelObjective(level, w))
    return out


def train(cfg: WorldModelConfig, dry_run: bool = False) -> Optional[Path]:
    check_logging(cfg.logging)
    if cfg.data.layout_split == "heldout":
        raise ConfigError("data.layout_split=heldout: held-out maps are for evaluation (plan, crossover); "
                          "train on `train` (or `all`)")
    accelerator = make_accelerator(cfg.meta.dtype)
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    wm = build_model(cfg)
    stages = [cfg.stage] + [lv.stage for lv in cfg.levels]
    modules = list(wm.levels) + ([wm.distance] if wm.distance is not None else [])
    if wm.distance is not None:  # the learned goal distance trains after the levels, as one more stage
        stages.append(distance_stage(cfg.distance))
    if cfg.refine.steps:  # then the level-0 predictor(s) are fine-tuned against it (refine.py)
        stages.append(refine_stage(cfg))
        modules.append(torch.nn.ModuleList(wm.predictors))
    on_policy = cfg.refine.on_policy
    if on_policy.episodes:  # ... and on the refined planner's own episodes (on_policy.py): its own optimizer
        stages.append(on_policy_stage(cfg))
        modules.append(torch.nn.ModuleList(wm.predictors))
    opts = [torch.optim.AdamW(param_groups(m), lr=st.lr, weight_decay=st.weight_decay)
            for m, st in zip(modules, stages)]
    if dry_run:
        print(to_yaml(cfg))
        n = [sum(p.numel() for p in level.parameters() if p.requires_grad) for level in wm.levels]
        ens = f", {len(wm.predictors)} predictors" if len(wm.predictors) > 1 else ""
        print(f"level 0: {n[0] / 1e3:.1f}k trainable params (representation {wm.repr_dim}-d{ens})")
        for k in range(1, wm.num_levels):
            lv = cfg.levels[k - 1]
            print(f"level {k}: {n[k] / 1e3:.1f}k params, stride {lv.stride} (span {wm.span(k)} steps), "
                  f"macro-actions {lv.macro_dim}-d, encoder {lv.encoder}, state {wm.levels[k].embed_dim}-d")
        if wm.distance is not None:
            print(f"goal distance: {sum(p.numel() for p in wm.distance.parameters()) / 1e3:.1f}k params, "
                  f"{cfg.distance.steps} steps")
        if cfg.refine.steps:
            print(f"refine: level-0 predictor(s) against the goal distance, {cfg.refine.steps} steps, coeff "
                  f"{cfg.refine.coeff}, horizon {cfg.refine.horizon}")
        if on_policy.episodes:
            print(f"on-policy refine: {on_policy.episodes} flat-planner episodes on training maps from "
                  f"{on_policy.first_map}, then {on_policy.steps} steps, {on_policy.share:.0%} of each batch from them")
        return None

    run_dir = resolve_run_dir(cfg.logging.folder, "worldmodel", accelerator)
    latest, resume_from = checkpoint_paths(run_dir, cfg.logging.write_tag, cfg.meta.load_checkpoint,
                                           cfg.meta.read_checkpoint)
    steps = [0] * len(stages)
    held = {"on_policy": None}  # the planner's episodes of the on-policy stage, once collected (checkpointed)
    if resume_from is not None:
        state = upgrade_state(ckpt.load(resume_from))
        check_resume(state.get("config"), cfg, resume_from, (("meta", "seed"),))
        if wm.distance is not None and len(state["opts"]) == wm.num_levels:  # a trained model gains a distance
            state["model"].update({f"distance.{k}": v for k, v in wm.distance.state_dict().items()})
            state["opts"].append(opts[wm.num_levels].state_dict())
            state["steps"] = list(state["steps"]) + [0]
            logger.info("%s has no goal distance: the levels are kept, the distance trains from scratch", resume_from)
        for i, why in ((wm.num_levels + 1, "was not refined: the refine stage starts from its level-0 predictor"),
                       (wm.num_levels + 2, "has no on-policy refine stage: it starts from its refined predictor")):
            if len(state["opts"]) == i < len(opts):  # ... or a refine stage: its optimizer starts fresh
                state["opts"].append(opts[i].state_dict())
                state["steps"] = list(state["steps"]) + [0]
                logger.info("%s %s", resume_from, why)
        held["on_policy"] = state.get("on_policy")
        ckpt.load_state_strict(wm, state["model"], "world model")
        if len(state["opts"]) != len(opts):
            raise ckpt.CheckpointMismatch(f"{resume_from} holds {len(state['opts'])} stages (levels, goal distance, "
                                          f"refine, on-policy refine), this config has {len(opts)}: resume with the "
                                          "config that wrote it")
        for o, so in zip(opts, state["opts"]):
            o.load_state_dict(so)
        steps = list(state["steps"])
        ckpt.set_rng_state(state["rng"])
        logger.info("resumed from %s at steps %s", resume_from, steps)
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    wrapped = level_objectives(wm, cfg) + ([wm.distance] if wm.distance is not None else [])
    prepared = accelerator.prepare(*wrapped, *opts)
    wrapped, opts = list(prepared[:len(wrapped)]), list(prepared[len(wrapped):])
    stop = cfg.meta.max_steps  # over all levels

    t0 = time.time()
    data = load_or_generate(cfg.data)
    logger.info("dataset: %d trajectories of %d steps (%.1fs)", *data["actions"].shape[:2], time.time() - t0)
    feats = None
    if wm.levels[0].cacheable:  # frozen encoder: its outputs on every state, once (feature_cache.py)
        t1 = time.time()
        feats = encode_dataset(frozen_part(wm.encoder), data, cfg.data.env, cache_dir=cfg.encoder.cache_dir)
        logger.info("frozen-encoder features %s (%.0fs)", tuple(feats.shape), time.time() - t1)

    def save_fn():  # the whole run's checkpoint, as every stage saves it
        save(accelerator, latest, wm, opts, steps, data, cfg, {k: v for k, v in held.items() if v is not None})

    # the goal distance's episodes as frozen level-0 states: encoded once, on first use, for both later stages
    episodes = functools.cache(partial(distance_episodes, wm, data, cfg, accelerator, feats))

    for k, st in enumerate(stages[:wm.num_levels]):
        if stop and sum(steps) >= stop:
            break
        if steps[k] >= st.steps:
            continue
        run_level(k, wm, wrapped[k], opts[k], st, steps, stop, data, cfg, accelerator, run_dir, save_fn, feats)
    kd = wm.num_levels  # the goal distance's stage, then the refine and on-policy refine stages
    if wm.distance is not None and steps[kd] < stages[kd].steps and not (stop and sum(steps) >= stop):
        run_distance(wm, wrapped[kd], opts[kd], stages[kd], steps, stop, cfg, accelerator, run_dir, save_fn, episodes)
    if cfg.refine.steps and steps[kd + 1] < stages[kd + 1].steps and not (stop and sum(steps) >= stop):
        run_refine(wm, opts[kd + 1], stages[kd + 1], steps, stop, cfg, accelerator, run_dir, save_fn, episodes)
    if on_policy.episodes and steps[kd + 2] < stages[kd + 2].steps and not (stop and sum(steps) >= stop):
        if held["on_policy"] is None:  # collected once, with the refined model, and kept in the checkpoint
            t1 = time.time()
            held["on_policy"] = collect(wm, data["walls"], cfg.data.env, on_policy, cfg.meta.seed)
            logger.info("on-policy refine: %d flat-planner episodes on training maps, success %.1f%% (%.0fs)",
                        on_policy.episodes, 100 * held["on_policy"]["success"].float().mean(), time.time() - t1)
            save_fn()
        planned = encode_episodes(wm, data["walls"], cfg.data.env, held["on_policy"])
        run_refine(wm, opts[kd + 2], stages[kd + 2], steps, stop, cfg, accelerator, run_dir, save_fn, episodes, planned)
    save_fn()
    logger.info("done in %.0fs: steps %s, checkpoint %s", time.time() - t0, steps, latest)
    return run_dir


def run_level(k, wm, model, opt, st: StageConfig, steps, stop, data, cfg: WorldModelConfig, accelerator, run_dir,
              save_fn: Callable[[], None], feats: Optional[torch.Tensor] = None) -> None:
    """Train level k (level 0: frames and actions; k >= 1: on the frozen levels below) until its stage ends
    or the run's `max_steps` is reached, logging to `<run>/metrics.csv` (level 0) or `<run>/level<k>/`.
    `feats`: the frozen encoder's cached outputs `[N, T+1, F]`, read in place of rendered frames."""
    span = wm.span(k)
    windows = (FeatureWindows(feats, data, st.window, span) if feats is not None
               else TrajectoryWindows(data, cfg.data.env, st.window, span))
    stream = batches(windows, st.batch_size, cfg.meta.seed, k, steps[k], accelerator)
    for j, level in enumerate(wm.levels):  # the levels below are frozen: eval mode (BatchNorm statistics)
        level.train(j == k)
    level = wm.levels[k]

    def step():
        b = next(stream)
        x = b["features"] if "features" in b else b["frames"]
        inputs = (x, b["actions"][:, :, 0], cfg.loss) if k == 0 else level_inputs(wm, k, b)
        out = optimizer_step(accelerator, opt, partial(objective, model, *inputs), (model,), sum(steps),
                             st.clip_grad, {"": model})
        if k and level.target is not None:  # momentum linear from ema[0] to ema[1] over the level's stage
            ema_update(level.target, level.encoder,
                       linear_at(steps[k] + 1, total_steps=st.steps, start=level.cfg.ema[0], end=level.cfg.ema[1]))
        return out

    def metrics(out, lr, end):
        m = {kk: v for kk, v in scalars(out).items() if kk != "grad_norm"}
        m["lr"] = lr
        m.update(monitor(out["z"], f"world-model level-{k}", level.cfg.collapse_std_floor if k else
                         cfg.logging.collapse_std_floor, steps[k], with_rank=due(steps[k], cfg.logging.rankme_every, last=end)))
        return ({f"l{k}/{kk}": v for kk, v in m.items()},
                dict(loss=f"{m['loss']:.4f}", tf=f"{m['teacher_forcing']:.4f}", std=f"{m['feature_std']:.3f}"))

    stage_loop(k, st, steps, stop, opt, cfg, accelerator, run_dir / f"level{k}" if k else run_dir, f"level {k}",
               step, metrics, save_fn)
