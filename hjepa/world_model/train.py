"""Train the action-conditioned world model: level 0 (frames, actions), then level 1 (strided frames,
macro-actions) on the frozen level-0 representation.

    python train.py --config configs/worldmodel/two_rooms.yaml [key.sub=value ...] [--dry-run]

Batches are drawn with a generator seeded from (seed, level, step), so a resumed run sees the same
batches without replaying the data. The checkpoint `<write_tag>-latest.pt` holds both levels, their
optimizers, the step of each, and the macro-action bank: macro codes of training chunks, the support
the hierarchical planner is confined to.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from data.seeding import derive_seed
from data.generated.trajectories import TrajectoryConfig, TrajectoryWindows, load_or_generate
from hjepa.world_model.model import EncoderConfig, LossWeights, MacroWorldModel, PredictorConfig, WorldModel
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import to_dict, to_yaml
from vjepa.engine.monitor import feature_std, rankme
from vjepa.pretrain import LoggingConfig, MetaConfig, param_groups
from vjepa.engine.runtime import MetricLog, checkpoint_paths, make_accelerator, resolve_run_dir
from vjepa.engine.schedules import lr_at

logger = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """Optimisation of one level. window: frames per training window. steps / batch_size / lr / warmup
    (steps) / weight_decay / clip_grad: AdamW with linear warmup then cosine to lr / 100."""

    window: int = 6
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    clip_grad: Optional[float] = 1.0


@dataclass
class Level1Config:
    """Args:
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
class WorldModelConfig:
    task: str = "worldmodel"
    data: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    stage: StageConfig = field(default_factory=StageConfig)
    level1: Level1Config = field(default_factory=Level1Config)
    meta: MetaConfig = field(default_factory=lambda: MetaConfig(seed=0, dtype="float32", save_every_freq=500))
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(write_tag="wm", log_every=50))


def build_models(cfg: WorldModelConfig):
    wm = WorldModel(cfg.encoder, cfg.predictor, img_size=cfg.data.env.img_size)
    macro = MacroWorldModel(wm.repr_dim, cfg.level1.stride, cfg.level1.macro_dim, cfg.level1.predictor)
    return wm, macro


def load_trained(path: str | Path):
    """-> (config, level-0 model, level-1 model, macro bank `[M, m]`), in eval mode."""
    state = ckpt.load(path)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WorldModelConfig), state["config"]))
    wm, macro = build_models(cfg)
    ckpt.load_state_strict(wm, state["model"], "world model")
    ckpt.load_state_strict(macro, state["macro"], "macro world model")
    return cfg, wm.eval(), macro.eval(), state["macro_bank"]


def _batch(windows: TrajectoryWindows, batch_size: int, seed: int, level: int, step: int, device):
    rng = np.random.default_rng(derive_seed(seed, level, step))
    b = windows.batch(rng.integers(len(windows), size=batch_size))
    return {k: v.to(device) for k, v in b.items()}


def _set_lr(optimizer, st: StageConfig, step: int) -> float:
    lr = lr_at(step, warmup_steps=st.warmup, total_steps=st.steps, start_lr=st.lr / 10, lr=st.lr, final_lr=st.lr / 100)
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr


def train_step(accelerator, model, optimizer, loss_fn, clip_grad: Optional[float]) -> dict:
    out = loss_fn()
    if not torch.isfinite(out["loss"]):
        raise RuntimeError(f"world-model loss became {out['loss'].item()}; stopping before the update")
    accelerator.backward(out["loss"])
    if clip_grad:
        accelerator.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


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


def train(cfg: WorldModelConfig, dry_run: bool = False) -> Optional[Path]:
    accelerator = make_accelerator(cfg.meta.dtype)
    torch.manual_seed(cfg.meta.seed)
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
    dev = accelerator.device

    t0 = time.time()
    data = load_or_generate(cfg.data)
    logger.info("dataset: %d trajectories of %d steps (%.1fs)", *data["actions"].shape[:2], time.time() - t0)
    win0 = TrajectoryWindows(data, cfg.data.env, cfg.stage.window, 1)
    log = MetricLog(run_dir, enabled=accelerator.is_main_process, tensorboard=cfg.logging.tensorboard)
    log.truncate_after(steps[0])

    def save():
        accelerator.wait_for_everyone()
        state = {"model": accelerator.get_state_dict(wm), "macro": accelerator.get_state_dict(macro),
                 "opt": opt0.state_dict(), "opt1": opt1.state_dict(), "steps": steps, "rng": ckpt.rng_state(),
                 "macro_bank": macro_bank(accelerator.unwrap_model(wm), accelerator.unwrap_model(macro), data, cfg),
                 "config": to_dict(cfg)}
        if accelerator.is_main_process:
            ckpt.save_atomic(state, latest)

    # level 0: encoder + predictor (+ inverse dynamics) on consecutive frames
    st = cfg.stage
    pbar = tqdm(total=st.steps, initial=steps[0], desc="level 0", disable=not cfg.logging.progress_bar)
    wm.train()
    while steps[0] < st.steps:
        lr = _set_lr(opt0, st, steps[0])
        b = _batch(win0, st.batch_size, cfg.meta.seed, 0, steps[0], dev)
        out = train_step(accelerator, wm, opt0,
                         lambda: wm.loss(b["frames"], b["actions"][:, :, 0], cfg.loss), st.clip_grad)
        steps[0] += 1
        pbar.update(1)
        if steps[0] % cfg.logging.log_every == 0 or steps[0] == st.steps:
            m = {k: float(v.detach()) for k, v in out.items() if k != "z"}
            m.update(lr=lr, feature_std=feature_std(out["z"]), rankme=rankme(out["z"]))
            log.log(steps[0], {f"l0/{k}": v for k, v in m.items()})
            pbar.set_postfix(loss=f"{m['loss']:.4f}", tf=f"{m['teacher_forcing']:.4f}", std=f"{m['feature_std']:.3f}")
        if steps[0] % cfg.meta.save_every_freq == 0:
            save()
    pbar.close()

    # level 1: macro encoder + strided predictor on the frozen level-0 representation
    l1 = cfg.level1
    if l1.enabled:
        win1 = TrajectoryWindows(data, cfg.data.env, l1.stage.window, l1.stride)
        (run_dir / "level1").mkdir(exist_ok=True)
        log1 = MetricLog(run_dir / "level1", enabled=accelerator.is_main_process, tensorboard=cfg.logging.tensorboard)
        log1.truncate_after(steps[1])
        enc = accelerator.unwrap_model(wm).eval()
        pbar = tqdm(total=l1.stage.steps, initial=steps[1], desc="level 1", disable=not cfg.logging.progress_bar)
        while steps[1] < l1.stage.steps:
            lr = _set_lr(opt1, l1.stage, steps[1])
            b = _batch(win1, l1.stage.batch_size, cfg.meta.seed, 1, steps[1], dev)
            with torch.no_grad():
                z = enc.encode(b["frames"])  # [B, W, D]
            out = train_step(accelerator, macro, opt1, lambda: macro.loss(z, b["actions"], cfg.loss),
                             l1.stage.clip_grad)
            steps[1] += 1
            pbar.update(1)
            if steps[1] % cfg.logging.log_every == 0 or steps[1] == l1.stage.steps:
                m = {f"l1/{k}": float(v.detach()) for k, v in out.items()}
                m["l1/lr"] = lr
                log1.log(steps[1], m)
                pbar.set_postfix(loss=f"{m['l1/loss']:.4f}")
            if steps[1] % cfg.meta.save_every_freq == 0:
                save()
        pbar.close()
        log1.close()
    save()
    log.close()
    logger.info("done in %.0fs: checkpoint %s", time.time() - t0, latest)
    return run_dir
