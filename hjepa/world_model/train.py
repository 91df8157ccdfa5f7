"""Train the action-conditioned world model: level 0 (frames, actions), then level 1 (strided frames,
macro-actions) on the frozen level-0 representation.

    python train.py --config configs/worldmodel/two_rooms.yaml [key.sub=value ...] [--dry-run]

Batches come from the engine's rank-sharded sampler (vjepa/engine/sampling.py) seeded from (seed, level):
each rank reads its own slice of a global batch, and a resumed run sees the same batches without
replaying the data. The checkpoint `<write_tag>-latest.pt` holds both levels, their
optimizers, the step of each, and the macro-action bank: macro codes of training chunks, the support
the hierarchical planner is confined to.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, load_or_generate
from data.seeding import derive_seed
from hjepa.world_model.encoders import EncoderConfig
from hjepa.world_model.model import LossWeights, MacroWorldModel, PredictorConfig, WorldModel
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.checkpoint import save_checkpoint
from vjepa.engine.config import to_dict, to_yaml, upgrade
from vjepa.engine.monitor import monitor
from vjepa.engine.optim import optimizer_step, param_groups, scalars
from vjepa.engine.runtime import MetricLog, checkpoint_paths, make_accelerator, resolve_run_dir
from vjepa.engine.sampling import ResumableBatchSampler
from vjepa.engine.schedules import lr_at, set_lr_wd
from vjepa.engine.sections import LoggingConfig, MetaConfig, check_logging, due

logger = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """Optimisation of one level. window: frames per training window. steps / batch_size / lr / warmup
    (steps) / weight_decay / clip_grad: AdamW with linear warmup then cosine to lr / 100."""

    window: int = 6
    steps: int = 1500
    batch_size: int = 64  # per process
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    clip_grad: Optional[float] = 1.0


@dataclass
class MacroModelConfig:
    """The world model's level 1 (section `level1`): its macro-action model (not an H-JEPA level).

    Args:
        enabled: train the level-1 (macro) model. stride: low-level steps per level-1 step.
        macro_dim: macro-action width. predictor: its predictor shape. stage: its optimisation.
        bank_size: training chunks whose macro codes form the planner's support bank.
    """

    enabled: bool = True
    stride: int = 8
    macro_dim: int = 2
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    stage: StageConfig = field(default_factory=lambda: StageConfig(window=4))
    bank_size: int = 4096


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

    task: str = "worldmodel"
    data: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    stage: StageConfig = field(default_factory=StageConfig)
    level1: MacroModelConfig = field(default_factory=MacroModelConfig)
    meta: WorldModelMetaConfig = field(default_factory=lambda: WorldModelMetaConfig(seed=0, dtype="float32"))
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(write_tag="wm", log_every=50))


def build_models(cfg: WorldModelConfig):
    wm = WorldModel(cfg.encoder, cfg.predictor, img_size=cfg.data.env.img_size)
    macro = MacroWorldModel(wm.repr_dim, cfg.level1.stride, cfg.level1.macro_dim, cfg.level1.predictor)
    return wm, macro


def load_trained(path: str | Path):
    """-> (config, level-0 model, level-1 model, macro bank `[M, m]`), in eval mode."""
    state = ckpt.load(path)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WorldModelConfig),
                                              upgrade(WorldModelConfig, state["config"])))
    wm, macro = build_models(cfg)
    ckpt.load_state_strict(wm, state["model"], "world model")
    ckpt.load_state_strict(macro, state["macro"], "macro world model")
    return cfg, wm.eval(), macro.eval(), state["macro_bank"]


def batches(windows: TrajectoryWindows, batch_size: int, seed: int, level: int, start_step: int,
            accelerator) -> Iterator[Dict[str, torch.Tensor]]:
    """This rank's batches from step `start_step` on: its slice of each global batch of the engine's
    sampler (epoch permutations seeded from (seed, level)), on the accelerator's device."""
    sampler = ResumableBatchSampler(len(windows), batch_size, accelerator.process_index, accelerator.num_processes,
                                    derive_seed(seed, level), start_step)
    for keys in sampler:
        b = windows.batch(np.array([index for index, _, _ in keys]))
        yield {k: v.to(accelerator.device) for k, v in b.items()}


def set_lr(optimizer, st: StageConfig, step: int) -> float:
    """Linear warmup from lr / 10, then cosine to lr / 100; weight decay stays `st.weight_decay`."""
    lr = lr_at(step, warmup_steps=st.warmup, total_steps=st.steps, start_lr=st.lr / 10, lr=st.lr, final_lr=st.lr / 100)
    set_lr_wd(optimizer, lr, st.weight_decay)
    return lr


def objective(model, *inputs):
    """The step's objective for `optimizer_step`: (total loss, the other loss terms and `z`)."""
    out = model(*inputs)
    return out.pop("loss"), out


@torch.no_grad()
def macro_bank(wm: WorldModel, macro: MacroWorldModel, data: dict, cfg: WorldModelConfig) -> torch.Tensor:
    """Macro codes `[M, m]` of `bank_size` training action chunks (fixed seed)."""
    acts = torch.from_numpy(data["actions"])  # [N, T, A]
    S = cfg.level1.stride
    rng = np.random.default_rng(derive_seed(cfg.meta.seed, 99))
    n = rng.integers(acts.shape[0], size=cfg.level1.bank_size)
    t = rng.integers(acts.shape[1] - S + 1, size=cfg.level1.bank_size)
    chunks = torch.stack([acts[i, j:j + S] for i, j in zip(n, t)])  # [M, S, A]
    return macro.macro(chunks)


def save(accelerator, path: Path, wm, macro, opt0, opt1, steps, data: dict, cfg: WorldModelConfig) -> None:
    inner_wm, inner_macro = accelerator.unwrap_model(wm), accelerator.unwrap_model(macro)
    state = {"model": accelerator.get_state_dict(wm), "macro": accelerator.get_state_dict(macro),
             "opt": opt0.state_dict(), "opt1": opt1.state_dict(), "steps": list(steps),
             "macro_bank": macro_bank(inner_wm, inner_macro, data, cfg), "config": to_dict(cfg)}
    save_checkpoint(accelerator, path, state, step=sum(steps), finite=[inner_wm, inner_macro],
                    replicated=[inner_wm, inner_macro])


def train(cfg: WorldModelConfig, dry_run: bool = False) -> Optional[Path]:
    check_logging(cfg.logging)
    accelerator = make_accelerator(cfg.meta.dtype)
    torch.manual_seed(cfg.meta.seed)  # identical initial weights on every rank
    wm, macro = build_models(cfg)
    opt0 = torch.optim.AdamW(param_groups(wm), lr=cfg.stage.lr, weight_decay=cfg.stage.weight_decay)
    opt1 = torch.optim.AdamW(param_groups(macro), lr=cfg.level1.stage.lr, weight_decay=cfg.level1.stage.weight_decay)
    n0 = sum(p.numel() for p in wm.parameters() if p.requires_grad)
    n1 = sum(p.numel() for p in macro.parameters())
    if dry_run:
        print(to_yaml(cfg))
        print(f"level 0: {n0 / 1e3:.1f}k trainable params (representation {wm.repr_dim}-d); "
              f"level 1: {n1 / 1e3:.1f}k params, stride {cfg.level1.stride}, macro-actions {cfg.level1.macro_dim}-d")
        return None

    run_dir = resolve_run_dir(cfg.logging.folder, "worldmodel", accelerator)
    latest, resume_from = checkpoint_paths(run_dir, cfg.logging.write_tag, cfg.meta.load_checkpoint,
                                           cfg.meta.read_checkpoint)
    steps = [0, 0]
    if resume_from is not None:
        state = ckpt.load(resume_from)
        ckpt.load_state_strict(wm, state["model"], "world model")
        ckpt.load_state_strict(macro, state["macro"], "macro world model")
        opt0.load_state_dict(state["opt"])
        opt1.load_state_dict(state["opt1"])
        steps = list(state["steps"])
        ckpt.set_rng_state(state["rng"])
        logger.info("resumed from %s at steps %s", resume_from, steps)
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    wm, macro, opt0, opt1 = accelerator.prepare(wm, macro, opt0, opt1)
    main, lg = accelerator.is_main_process, cfg.logging
    stop = cfg.meta.max_steps  # over both levels

    t0 = time.time()
    data = load_or_generate(cfg.data)
    logger.info("dataset: %d trajectories of %d steps (%.1fs)", *data["actions"].shape[:2], time.time() - t0)
    log = MetricLog(run_dir, enabled=main, tensorboard=lg.tensorboard)
    log.truncate_after(steps[0])

    # level 0: encoder + predictor (+ inverse dynamics) on consecutive frames
    st = cfg.stage
    data0 = batches(TrajectoryWindows(data, cfg.data.env, st.window, 1), st.batch_size, cfg.meta.seed, 0, steps[0],
                    accelerator)
    pbar = tqdm(total=st.steps, initial=steps[0], desc="level 0", disable=not (main and lg.progress_bar))
    wm.train()
    while steps[0] < st.steps and not (stop and sum(steps) >= stop):
        lr = set_lr(opt0, st, steps[0])
        b = next(data0)
        out = optimizer_step(accelerator, opt0, partial(objective, wm, b["frames"], b["actions"][:, :, 0], cfg.loss),
                             (wm,), sum(steps), st.clip_grad, {"": wm})
        steps[0] += 1
        pbar.update(1)
        end = steps[0] == st.steps
        if steps[0] % lg.log_every == 0 or end:
            m = {k: v for k, v in scalars(out).items() if k != "grad_norm"}
            m["lr"] = lr
            m.update(monitor(out["z"], "world-model level-0", lg.collapse_std_floor, steps[0],
                             with_rank=due(steps[0], lg.rankme_every, last=end)))
            log.log(steps[0], {f"l0/{k}": v for k, v in m.items()})
            pbar.set_postfix(loss=f"{m['loss']:.4f}", tf=f"{m['teacher_forcing']:.4f}", std=f"{m['feature_std']:.3f}")
        if steps[0] % cfg.meta.save_every_steps == 0:
            save(accelerator, latest, wm, macro, opt0, opt1, steps, data, cfg)
    pbar.close()

    # level 1: macro encoder + strided predictor on the frozen level-0 representation
    l1 = cfg.level1
    if l1.enabled and not (stop and sum(steps) >= stop):
        data1 = batches(TrajectoryWindows(data, cfg.data.env, l1.stage.window, l1.stride), l1.stage.batch_size,
                        cfg.meta.seed, 1, steps[1], accelerator)
        (run_dir / "level1").mkdir(exist_ok=True)
        log1 = MetricLog(run_dir / "level1", enabled=main, tensorboard=lg.tensorboard)
        log1.truncate_after(steps[1])
        enc = accelerator.unwrap_model(wm).eval()
        pbar = tqdm(total=l1.stage.steps, initial=steps[1], desc="level 1", disable=not (main and lg.progress_bar))
        while steps[1] < l1.stage.steps and not (stop and sum(steps) >= stop):
            lr = set_lr(opt1, l1.stage, steps[1])
            b = next(data1)
            with torch.no_grad():
                z = enc.encode(b["frames"])  # [B, W, D]
            out = optimizer_step(accelerator, opt1, partial(objective, macro, z, b["actions"], cfg.loss), (macro,),
                                 sum(steps), l1.stage.clip_grad, {"": macro})
            steps[1] += 1
            pbar.update(1)
            if steps[1] % lg.log_every == 0 or steps[1] == l1.stage.steps:
                m = {f"l1/{k}": v for k, v in scalars(out).items() if k != "grad_norm"}
                m["l1/lr"] = lr
                log1.log(steps[1], m)
                pbar.set_postfix(loss=f"{m['l1/loss']:.4f}")
            if steps[1] % cfg.meta.save_every_steps == 0:
                save(accelerator, latest, wm, macro, opt0, opt1, steps, data, cfg)
        pbar.close()
        log1.close()
    save(accelerator, latest, wm, macro, opt0, opt1, steps, data, cfg)
    log.close()
    logger.info("done in %.0fs: steps %s, checkpoint %s", time.time() - t0, steps, latest)
    return run_dir
