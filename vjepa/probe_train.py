"""Frozen-encoder evaluation: probes trained on a frozen encoder's tokens, V-JEPA's protocol.

    python train.py --config configs/probe/motion.yaml pretrain.checkpoint=runs/.../jepa-latest.pt
    python train.py --config configs/probe/vitl16_k400_16x8x3.yaml       # reference eval YAMLs run as they are

Per step, the frozen encoder encodes every (segment, view) of a batch once, under no_grad; every probe
of the LR x WD grid trains on those same tokens (their losses are independent, so one backward serves
all), as V-JEPA 2's multi-head evaluation. Evaluation averages the softmax over segments x views and
reports top-1 / top-5 of every probe and the best one. With `optimization.cache_features` the encoder
runs once per sample for the whole run (exact when the training transform draws nothing random, as on
the motion benchmark), which makes probing a small model on CPU a matter of seconds. Under `accelerate
launch` each of N processes encodes, trains and evaluates on 1/N of the data with the results of one
process (vjepa/probe_dist.py).

Config keys follow the reference `video_classification_frozen` YAMLs (`data`, `optimization`,
`pretrain` sections); `probe`, `meta` and `logging` are this codebase's additions (vjepa/probe_config.py).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa.engine import checkpoint as ckpt
from vjepa.engine.checkpoint import save_checkpoint
from vjepa.engine.config import ConfigError, to_yaml
from vjepa.engine.errors import RunExists
from vjepa.engine.optim import optimizer_step, param_groups
from vjepa.engine.runtime import MetricLog, make_accelerator, resolve_run_dir
from vjepa.engine.schedules import cosine_at, lr_at, set_lr_wd
from vjepa.official import load_encoder, random_encoder_like
from vjepa.probe_config import ProbeConfig, ProbeOptimizationConfig
from vjepa.probe import average_softmax, build_probe, knn_predict, topk_correct
from vjepa.probe_data import is_motion_benchmark, build_split, make_loader, encode, encode_dataset
from vjepa.probe_dist import Ranks, ShardedBatches

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ probe grid
@dataclass
class GridPoint:
    lr: float
    wd: float


def grid_points(o: ProbeOptimizationConfig) -> List[GridPoint]:
    return [GridPoint(lr, wd) for lr in (o.lr_grid or [o.lr]) for wd in (o.wd_grid or [o.weight_decay])]


class ProbeGrid:
    """Several probes, one per (lr, wd), trained on the same inputs; one AdamW with a param group each.

    Args:
        probes: the probe modules. points: their (lr, wd). opt: the optimisation section (schedules).
        steps_per_epoch: optimizer steps per epoch (schedules are functions of the global step).
        accelerator: the run's Accelerator (the engine's step runs under its autocast).
        ranks: the processes sharing the work: each trains on its share of every global batch and the
            probes' gradients are averaged across them before clipping and the update (default: this
            process alone).
    """

    def __init__(self, probes: Sequence[nn.Module], points: Sequence[GridPoint], opt: ProbeOptimizationConfig,
                 steps_per_epoch: int, accelerator, ranks: Ranks = Ranks()):
        self.probes, self.points, self.opt, self.ranks = list(probes), list(points), opt, ranks
        self.accelerator = accelerator
        groups = []
        for p, pt in zip(self.probes, self.points):
            decay, no_decay = param_groups(p)
            groups += [{**decay, "weight_decay": pt.wd}, no_decay]
        self.optimizer = torch.optim.AdamW(groups)
        self.total = max(1, opt.num_epochs * steps_per_epoch)
        self.warmup = int(opt.warmup * steps_per_epoch)

    def set_schedules(self, step: int) -> None:
        o = self.opt
        for i, pt in enumerate(self.points):
            s = pt.lr / o.lr if o.lr > 0 else 1.0
            lr = lr_at(step, warmup_steps=self.warmup, total_steps=self.total, start_lr=o.start_lr * s, lr=pt.lr,
                       final_lr=o.final_lr * s)
            wd = pt.wd if o.final_weight_decay is None else cosine_at(
                step, total_steps=self.total, start=pt.wd, end=o.final_weight_decay * (pt.wd / max(o.weight_decay, 1e-12)))
            set_lr_wd(self.optimizer.param_groups[2 * i: 2 * i + 2], lr, wd)

    def objective(self, inputs: torch.Tensor, targets: torch.Tensor):
        """(summed loss, {"losses": each probe's `[n_probes]`}); probes share no parameters, so each gets
        its own gradient from the sum."""
        losses = []
        for p in self.probes:
            p.train()
            losses.append(F.cross_entropy(p(inputs), targets))
        losses = torch.stack(losses)
        return losses.sum(), {"losses": losses.detach()}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> List[float]:
        """x `[B, P, M, D]` (P inputs per video, each labelled y) -> the loss of every probe."""
        self.set_schedules(step)
        B, P = x.shape[:2]
        inputs, targets = x.flatten(0, 1), y.repeat_interleave(P)  # [B*P, M, D], [B*P]
        # With one process (or the quickstart's probes, which only the main process runs) the NaN check
        # needs no collective; sharded over ranks, every rank sees a different loss, so all check the mean.
        params = [q for p in self.probes for q in p.parameters()]
        out = optimizer_step(self.accelerator, self.optimizer, partial(self.objective, inputs, targets), self.probes,
                             step, self.opt.clip_grad, {str(i): p for i, p in enumerate(self.probes)},
                             across_ranks=self.ranks.world > 1,
                             sync_grads=partial(self.ranks.average_grads, params))  # = the global batch's
        return self.ranks.mean(out["losses"].tolist())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x `[B, P, M, D]` -> per probe the softmax averaged over the P views `[B, C]`."""
        B, P = x.shape[:2]
        out = []
        for p in self.probes:
            p.eval()
            out.append(average_softmax(p(x.flatten(0, 1)).reshape(B, P, -1)))
        return out

    def state_dict(self) -> dict:
        return {"probes": [p.state_dict() for p in self.probes], "opt": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if len(state["probes"]) != len(self.probes):
            raise ckpt.CheckpointMismatch(f"checkpoint has {len(state['probes'])} probes, the grid {len(self.probes)}")
        for i, (p, s) in enumerate(zip(self.probes, state["probes"])):
            ckpt.load_state_strict(p, s, f"probe {i}")
        self.optimizer.load_state_dict(state["opt"])


class Scores:
    """Accumulates top-1 / top-5 counts of every probe over an evaluation pass."""

    def __init__(self, n: int):
        self.counts = [{"top1": 0, "top5": 0} for _ in range(n)]
        self.total = 0

    def add(self, probs: Sequence[torch.Tensor], labels: torch.Tensor) -> None:
        for c, p in zip(self.counts, probs):
            for k, v in topk_correct(p.cpu(), labels.cpu()).items():
                c[k] += v
        self.total += len(labels)

    def percent(self, ranks: Ranks = Ranks()) -> List[Dict[str, float]]:
        """Scores over every rank's predictions (counts summed across ranks)."""
        keys = ("top1", "top5")
        local = torch.tensor([[c[k] for k in keys] for c in self.counts] + [[self.total, 0]], dtype=torch.float64)
        summed = ranks.sum(local)
        total = max(1.0, float(summed[-1, 0]))
        return [{k: 100.0 * float(v) / total for k, v in zip(keys, row)} for row in summed[:-1]]


# ------------------------------------------------------------------------------------------ the job
def clip_geometry(cfg: ProbeConfig) -> Tuple[int, int]:
    """(frames, crop size) of the clips the probe's data gives."""
    d = cfg.data
    if is_motion_benchmark(d):
        return d.motion.num_frames, d.motion.size
    frames = d.frames_per_clip
    if cfg.eval_name == "image_classification_frozen" or d.dataset_type == "ImageDataset":
        frames = cfg.pretrain.frames_per_clip or frames  # images repeat over the encoder's clip length
    return frames, d.resolution or cfg.optimization.resolution


def build_encoder_for(cfg: ProbeConfig, device, frames: int, crop: int) -> nn.Module:
    """The frozen encoder `pretrain` describes. A checkpoint's stored position table fixes the geometry
    it was built for; other clip sizes are handled by the encoder's position-table resize."""
    p = cfg.pretrain
    if p.use_silu:
        raise ValueError("pretrain.use_silu=true: SiLU MLP encoders are not supported here")
    geometry = dict(model_name=p.model_name, patch_size=p.patch_size, tubelet_size=p.tubelet_size,
                    num_frames=p.frames_per_clip or frames, uniform_power=p.uniform_power, use_rope=p.use_rope,
                    num_heads=p.num_heads, img_size=crop)
    if p.checkpoint is None:
        if not p.random_init:
            raise ConfigError("pretrain.checkpoint is not set: give a checkpoint (pretrain.checkpoint=PATH) "
                             "or pretrain.random_init=true")
        encoder = random_encoder_like(None, seed=p.seed, **geometry)
    else:
        path = Path(p.checkpoint)
        if p.folder and not path.is_absolute() and not path.exists():
            path = Path(p.folder) / path
        encoder = (random_encoder_like(path, seed=p.seed, key=p.checkpoint_key, **geometry) if p.random_init
                   else load_encoder(path, key=p.checkpoint_key, **geometry))
    return encoder.to(device).eval().requires_grad_(False)


def run_folder(cfg: ProbeConfig, accelerator) -> Path:
    folder = cfg.logging.folder
    if folder is None and cfg.pretrain.folder:
        folder = str(Path(cfg.pretrain.folder) / cfg.eval_name / (cfg.tag or "probe"))
    return resolve_run_dir(folder, "probe", accelerator)


def train(cfg: ProbeConfig, dry_run: bool = False, ranks: Optional[Ranks] = None) -> Optional[dict]:
    """Train the probe grid on a frozen encoder and evaluate it; returns the results dict (also written
    to `results.json` in the run folder).

    `ranks`: the processes that run this job. None: every process of the launch, each doing its share;
    `Ranks()`: this process alone, with no collective (the quickstart probes on the main process only)."""
    o, d = cfg.optimization, cfg.data
    accelerator = make_accelerator(cfg.meta.dtype if o.use_bfloat16 else "float32")
    device = accelerator.device
    ranks = Ranks.of(accelerator) if ranks is None else ranks
    ranks.check_batch(o.batch_size)
    torch.manual_seed(cfg.meta.seed)
    frames, crop = clip_geometry(cfg)
    encoder = build_encoder_for(cfg, device, frames, crop)
    train_ds, num_classes = build_split(cfg, True, frames, crop)
    val_ds, _ = build_split(cfg, False, frames, crop)
    heads = cfg.probe.num_heads or encoder.num_heads
    points = grid_points(o)
    torch.manual_seed(cfg.meta.seed)
    probes = [build_probe(cfg.probe.type, encoder.embed_dim, heads, num_classes, cfg.probe.num_probe_blocks,
                          cfg.probe.use_proj).to(device) for _ in points]
    steps_per_epoch = len(train_ds) // o.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"train split of {len(train_ds)} samples is smaller than one batch ({o.batch_size})")
    grid = ProbeGrid(probes, points, o, steps_per_epoch, accelerator, ranks)
    if dry_run:
        n = sum(q.numel() for q in probes[0].parameters())
        print(to_yaml(cfg))
        print(f"encoder: D={encoder.embed_dim}, heads={encoder.num_heads}, grid {encoder.grid}; "
              f"{len(points)} {cfg.probe.type} probes of {n / 1e6:.2f}M params; {num_classes} classes; "
              f"train {len(train_ds)} / val {len(val_ds)} videos, {steps_per_epoch} steps per epoch")
        return None

    run_dir = run_folder(cfg, accelerator)
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    latest = run_dir / "probe-latest.pt"
    start_epoch, history = 0, []
    if cfg.resume_checkpoint and latest.exists():
        state = ckpt.load(latest)
        grid.load_state_dict(state["grid"])
        start_epoch, history = state["epoch"], json.loads(state["history"])
        logger.info("resumed probes from %s at epoch %d", latest, start_epoch)
    elif latest.exists():
        raise RunExists(latest, "resume_checkpoint=true")

    log = MetricLog(run_dir, enabled=accelerator.is_main_process, tensorboard=cfg.logging.tensorboard)
    autocast = accelerator.autocast
    t0 = time.time()
    cached = None
    if o.cache_features:
        cached = tuple(encode_dataset(encoder, ds, o.batch_size, o.attend_across_segments, device, autocast,
                                      d.num_workers, ranks=ranks) for ds in (train_ds, val_ds))
        logger.info("encoded %d train + %d val videos in %.1fs", len(train_ds), len(val_ds), time.time() - t0)

    for epoch in range(start_epoch, o.num_epochs):
        losses = train_epoch(grid, encoder, train_ds, cached and cached[0], cfg, epoch, steps_per_epoch, device,
                             autocast, log)
        scores = evaluate(grid, encoder, val_ds, cached and cached[1], cfg, device, autocast)
        ranks.barrier()  # rank 0 saves below; no rank starts the next epoch before
        best = max(range(len(points)), key=lambda i: scores[i]["top1"])
        history.append({"epoch": epoch + 1, "train_loss": losses, "val": scores})
        log.log((epoch + 1) * steps_per_epoch, {"val_top1_best": scores[best]["top1"], "train_loss_min": min(losses)})
        logger.info("epoch %d/%d: best probe (lr %.1e, wd %.1e) val top-1 %.2f%% top-5 %.2f%%", epoch + 1,
                    o.num_epochs, points[best].lr, points[best].wd, scores[best]["top1"], scores[best]["top5"])
        save_checkpoint(accelerator, latest, {"grid": grid.state_dict(), "epoch": epoch + 1, "history": json.dumps(history)},
                        step=epoch + 1, finite=probes, replicated=probes, across_ranks=ranks.world > 1)

    results = summarize(history, points, cfg)
    if cached is not None and cfg.probe.knn_k > 0:
        results["knn_top1"] = knn_score(cached, num_classes, cfg.probe.knn_k)
    if cfg.probe.linear_readout or cfg.probe.low_shot > 0:
        if cached is None:
            raise ValueError("probe.linear_readout / probe.low_shot need optimization.cache_features=true")
        from vjepa.readouts import extra_readouts  # builds on this module's probe grid

        results.update(extra_readouts(cached, cfg, num_classes, encoder.embed_dim, heads, accelerator))
    results["seconds"] = time.time() - t0
    log.close()
    if accelerator.is_main_process:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        logger.info("probe results: best val top-1 %.2f%% (top-5 %.2f%%)%s; %s", results["top1"], results["top5"],
                    f", k-NN top-1 {results['knn_top1']:.2f}%" if "knn_top1" in results else "", run_dir / "results.json")
    ranks.barrier()  # ranks leave together: one exiting while another still runs can abort gloo
    return results


def _batches(cached, ds, cfg: ProbeConfig, epoch: int, shuffle: bool, encoder, device, autocast, ranks: Ranks):
    """This rank's share of the (inputs `[B, P, M, D]`, labels) batches: from cached (features, labels) or
    by encoding on the fly. The global batches are the same for any number of ranks."""
    o = cfg.optimization
    if cached is not None:
        x, y = cached
        for idx in ShardedBatches(len(y), o.batch_size, shuffle, cfg.meta.seed, epoch, ranks):
            yield x[idx].to(device).float(), y[idx].to(device)
        return
    for clips, labels in make_loader(ds, o.batch_size, shuffle, cfg.meta.seed, epoch, cfg.data.num_workers, ranks):
        yield encode(encoder, clips.to(device), o.attend_across_segments, autocast), labels.to(device)


def train_epoch(grid: ProbeGrid, encoder, ds, cached, cfg: ProbeConfig, epoch: int, steps_per_epoch: int, device,
                autocast, log: MetricLog) -> List[float]:
    sums, n = None, 0
    for i, (x, y) in enumerate(_batches(cached, ds, cfg, epoch, True, encoder, device, autocast, grid.ranks)):
        step = epoch * steps_per_epoch + i
        losses = grid.train_step(x, y, step)
        sums = losses if sums is None else [a + b for a, b in zip(sums, losses)]
        n += 1
        if (step + 1) % cfg.logging.log_every == 0:
            log.log(step + 1, {"train_loss_min": min(losses)})
    return [s / max(1, n) for s in (sums or [float("nan")] * len(grid.probes))]


@torch.no_grad()
def evaluate(grid: ProbeGrid, encoder, ds, cached, cfg: ProbeConfig, device, autocast) -> List[Dict[str, float]]:
    scores = Scores(len(grid.probes))
    for x, y in _batches(cached, ds, cfg, 0, False, encoder, device, autocast, grid.ranks):
        scores.add(grid.predict(x), y)
    return scores.percent(grid.ranks)


def knn_score(cached, num_classes: int, k: int) -> float:
    """k-NN top-1 on tokens mean-pooled over each input and averaged over the P inputs of a video."""
    (xt, yt), (xv, yv) = cached
    pool = lambda x: x.float().mean(dim=2).mean(dim=1)  # [M, P, N, D] -> [M, D]
    probs = knn_predict(pool(xt), yt, pool(xv), num_classes, k=k)
    return 100.0 * float((probs.argmax(-1) == yv).float().mean())


def summarize(history: List[dict], points: Sequence[GridPoint], cfg: ProbeConfig) -> dict:
    """Best probe of the final epoch (V-JEPA 2 reports the best head), with every probe's scores."""
    last = history[-1]["val"]
    best = max(range(len(points)), key=lambda i: last[i]["top1"])
    return {
        "top1": last[best]["top1"], "top5": last[best]["top5"],
        "best_probe": {"lr": points[best].lr, "weight_decay": points[best].wd},
        "probes": [{"lr": p.lr, "weight_decay": p.wd, **s} for p, s in zip(points, last)],
        "probe_type": cfg.probe.type, "epochs": len(history),
    }
