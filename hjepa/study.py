"""Long-horizon study: rolling level 0 forward vs predicting directly at higher, slower levels.

    python train.py --config configs/hjepa/horizon_study.yaml

1. Trains an H-JEPA stack stage-wise with `hjepa.train.train` on generated long videos (level 0, the tiny
   V-JEPA encoder, is trained on single windows in stage 0), or reuses the run folder's checkpoint.
2. Trains a 1-step causal predictor on level-0 window features (teacher forcing): the "fast model".
3. Fits linear probes on each level's target features (train split) for the fast and slow label of each
   window its step spans (one head per window offset), and reports their accuracy on held-out videos.
4. On held-out videos, from the first `context_windows` windows, predicts windows t0 .. t0+H-1:
   (a) level 0 by autoregressive rollout of the fast model, (b) level k directly with its own predictor
   (the step containing each window). Error per horizon h is measured in a common space: the accuracy of
   the probes at decoding the future fast and slow labels from the predictions; also 1 - cosine to the
   level's own target. Probes are frozen (fit on true features) or refit per horizon on train-split
   predictions. References: a linear probe from the true last context windows straight to the future
   label, and a Bayes ceiling (the best any predictor can do, given the true context labels and the
   generator's Markov chain).
Table in the log and `study.md`, numbers in `study.json`, plots `horizon.png` and `probes.png`.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from data.generated.long_videos import LongVideos
from data.transforms import to_float_clip
from hjepa.levels import LevelConfig, TemporalEncoder
from hjepa.model import HJEPA, HJEPAConfig, build, encode_videos, spans
from hjepa.train import train as train_hjepa
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import to_yaml
from vjepa.engine.sections import EpochMetaConfig, LoggingConfig, OptimizationConfig
from vjepa.engine.runtime import make_accelerator, resolve_run_dir

logger = logging.getLogger(__name__)


def _study_stack() -> HJEPAConfig:
    return HJEPAConfig(
        mode="stagewise",
        levels=[LevelConfig(stride=2, pool="concat", max_future=8), LevelConfig(stride=2, pool="concat", max_future=4)],
        optimization=OptimizationConfig(ipe=100, epochs=2, warmup=0.5, start_lr=2e-4, lr=1e-3, final_lr=1e-5),
        meta=EpochMetaConfig(seed=0, dtype="bfloat16", save_every_freq=1),
        logging=LoggingConfig(write_tag="hjepa", log_every=20, rankme_every=100, progress_bar=False))


@dataclass
class FastModelConfig:
    """The level-0 rollout model: a causal temporal transformer predicting the next window's feature."""

    embed_dim: int = 128
    depth: int = 2
    num_heads: int = 4
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3


@dataclass
class HorizonStudyConfig:
    """Args:
        hjepa: the stack to train (its `logging.folder` is set to `<run folder>/hjepa`).
        folder: run folder (None = runs/horizon_study-<time>); a finished stack there is reused.
        probe_videos: train-split videos for the probes and the fast model.
        eval_videos / eval_seed: held-out videos (generator seed) for every reported number.
        context_windows: windows seen before predicting (a multiple of the top level's span).
        horizon: H, predict windows t0 .. t0+H-1 (t0 + H <= data.num_windows).
        probe_steps / probe_lr: full-batch Adam on standardised features.
        cpu_threads: torch threads for this run (0 = torch's default); 1 avoids thread oversubscription
            on small shared CPUs, where 2 threads can be many times slower than 1.
    """

    task: str = "horizon_study"
    hjepa: HJEPAConfig = field(default_factory=_study_stack)
    folder: Optional[str] = None
    probe_videos: int = 192
    eval_videos: int = 64
    eval_seed: int = 1
    context_windows: int = 16
    horizon: int = 16
    fast_model: FastModelConfig = field(default_factory=FastModelConfig)
    probe_steps: int = 300
    probe_lr: float = 1e-2
    cpu_threads: int = 1


class FastModel(nn.Module):
    """Causal transformer over level-0 features `[B, S, D0]` -> prediction of the next feature `[B, S, D0]`."""

    def __init__(self, dim: int, cfg: FastModelConfig, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.body = TemporalEncoder(dim, cfg.embed_dim, cfg.depth, cfg.num_heads, 4.0, causal=True)
        self.head = nn.Linear(cfg.embed_dim, dim)
        # Works on standardised features: raw level-0 features are dominated by a few high-variance,
        # static (appearance) channels, and an L1 loss on them mostly teaches "copy the last window".
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((x - self.mean) / self.std)) * self.std + self.mean

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, steps: int) -> torch.Tensor:
        """context `[B, t0, D0]` -> `steps` predicted features `[B, steps, D0]`, each fed back as input."""
        seq = context
        for _ in range(steps):
            seq = torch.cat([seq, self(seq)[:, -1:]], 1)
        return seq[:, context.shape[1]:]


def train_fast_model(x0: torch.Tensor, cfg: FastModelConfig, seed: int) -> FastModel:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    flat = x0.reshape(-1, x0.shape[-1])
    model = FastModel(x0.shape[-1], cfg, flat.mean(0), flat.std(0) + 1e-6)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x0), (cfg.batch_size,), generator=g)
        x = x0[idx]
        loss = ((model(x[:, :-1]) - x[:, 1:]) / model.std).abs().mean()  # teacher forcing, L1 as the levels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 200 == 0:
            logger.info("fast model step %d: L1 %.4f", step + 1, loss.item())
    return model.eval()


class Probe:
    """Linear probe from one step's feature to the labels of the `span` windows it covers (one head per
    window offset), on standardised features."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int, lr: float, seed: int):
        """x `[N, D]`, y `[N, span]` int."""
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        self.span, self.num_classes = y.shape[1], num_classes
        torch.manual_seed(seed)
        self.linear = nn.Linear(x.shape[1], self.span * num_classes)
        opt = torch.optim.Adam(self.linear.parameters(), lr=lr, weight_decay=1e-4)
        xs = (x - self.mean) / self.std
        for _ in range(steps):
            loss = F.cross_entropy(self.logits(xs, True).reshape(-1, num_classes), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def logits(self, x: torch.Tensor, standardised: bool = False) -> torch.Tensor:
        xs = x if standardised else (x - self.mean) / self.std
        return self.linear(xs).reshape(len(x), self.span, self.num_classes)  # [N, span, C]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, offset: Optional[int] = None) -> torch.Tensor:
        """Predicted labels `[N, span]`, or `[N]` for one window offset."""
        out = self.logits(x).argmax(-1)
        return out if offset is None else out[:, offset]


def level_features(model: HJEPA, x0: torch.Tensor) -> List[torch.Tensor]:
    """[x0 `[N, W, D0]`, level-1 targets `[N, W/span_1, D1]`, ...] (all causal, no gradient)."""
    xs = [x0]
    with torch.no_grad():
        for level in model.levels:
            xs.append(level.targets(level.pool(xs[-1])))
    return xs


def blocks(x: torch.Tensor, span: int) -> torch.Tensor:
    """`[N, S, D]` -> aligned blocks of `span` steps, concatenated `[N, S/span, span*D]`."""
    return rearrange(x, "n (s k) d -> n s (k d)", k=span)


def bayes_ceiling(videos: LongVideos, t0: int, horizon: int) -> Dict[str, np.ndarray]:
    """Best possible accuracy per horizon for the future fast / slow labels, knowing the true compound
    action in progress at t0 and the generator's Markov chain (t0 must start a compound action)."""
    cfg, table, succ = videos.cfg, videos.table, videos.successor
    A, L = cfg.num_actions, cfg.action_len
    trans = cfg.p_successor * np.eye(A)[succ] + (1 - cfg.p_successor) / A  # [A, A], row = from
    out = {"fast": np.zeros(horizon), "slow": np.zeros(horizon)}
    for h in range(1, horizon + 1):
        n, o = (h - 1) // L + 1, (h - 1) % L  # compound transitions after the last context one, offset
        dist = np.linalg.matrix_power(trans, n)  # [A, A]: from the last context compound
        out["slow"][h - 1] = dist.max(1).mean()
        fast = np.zeros((A, 4))
        for a in range(A):
            fast[:, table[a, o]] += dist[:, a]
        out["fast"][h - 1] = fast.max(1).mean()
    return out


@torch.no_grad()
def horizon_predictions(model: HJEPA, fast_model: "FastModel", xs: List[torch.Tensor], t0: int, H: int,
                        sp: List[int]):
    """Predictions of windows t0 .. t0+H-1 from windows < t0, per method.

    Returns ({method: (features `[N, H, D]`, probe view, window offset per h)}, {method/cos_err: [H]}).
    Level 0 rolls its fast model forward; `L0xS` reads the rolled-out aligned block of S windows; level k
    predicts the step holding each window directly from its context steps.
    """
    top, windows = sp[-1], range(t0, t0 + H)
    roll = fast_model.rollout(xs[0][:, :t0], H)  # [N, H, D0]
    seq = torch.cat([xs[0][:, :t0], roll], 1)
    out = {"L0 rollout": (roll, "L0", [0] * H),
           f"L0x{top} rollout": (torch.stack([seq[:, t // top * top:(t // top + 1) * top].flatten(1) for t in windows], 1),
                                 f"L0x{top}", [t % top for t in windows])}
    cos = {"L0 rollout/cos_err": (1 - F.cosine_similarity(roll, xs[0][:, t0:t0 + H], dim=-1)).mean(0).tolist()}
    for k, level in enumerate(model.levels, start=1):
        u = level.pool(xs[k - 1])
        first, last = t0 // sp[k], (t0 + H - 1) // sp[k] + 1
        ctx = torch.arange(first).expand(len(u), -1)
        tgt = torch.arange(first, last).expand(len(u), -1)
        pred, _ = level.predict(u, ctx, tgt)  # [N, last - first, Dk]
        step = [t // sp[k] - first for t in windows]
        out[f"L{k} direct"] = (pred[:, step], f"L{k}", [t % sp[k] for t in windows])
        err = 1 - F.cosine_similarity(pred, xs[k][:, first:last], dim=-1)  # [N, steps]
        cos[f"L{k} direct/cos_err"] = err[:, step].mean(0).tolist()
    return out, cos


def run(cfg: HorizonStudyConfig, dry_run: bool = False) -> Optional[Path]:
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    hj = cfg.hjepa
    sp = spans(hj)
    t0, H, W = cfg.context_windows, cfg.horizon, hj.data.num_windows
    if t0 % sp[-1] or t0 + H > W or H < 1:
        raise ValueError(f"need context_windows ({t0}) a multiple of the top span {sp[-1]}, horizon >= 1 and "
                         f"context_windows + horizon <= data.num_windows ({W})")
    if t0 % hj.data.action_len:
        raise ValueError(f"context_windows ({t0}) must be a multiple of data.action_len ({hj.data.action_len})")
    if cfg.probe_videos > hj.data.num_videos:
        raise ValueError(f"probe_videos ({cfg.probe_videos}) > hjepa.data.num_videos ({hj.data.num_videos})")
    if dry_run:
        print(to_yaml(cfg))
        return None
    accelerator = make_accelerator(hj.meta.dtype, 1)
    run_dir = resolve_run_dir(cfg.folder, "horizon_study", accelerator)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    hj_dir = run_dir / "hjepa"
    latest = hj_dir / f"{hj.logging.write_tag}-latest.pt"
    hj = replace(hj, logging=replace(hj.logging, folder=str(hj_dir)),
                 meta=replace(hj.meta, load_checkpoint=latest.exists()))
    tick = time.time()
    train_hjepa(hj, dry_run=False)  # resumes (and returns at once) when a finished stack is there
    logger.info("stack trained in %.0f s", time.time() - tick)
    if not accelerator.is_main_process:
        return run_dir

    model = build(hj)
    ckpt.load_state_strict(model, ckpt.load(latest)["model"], "hjepa model")
    model.eval()
    transform = partial(to_float_clip, mean=hj.level0.mean, std=hj.level0.std)
    train_videos = LongVideos(replace(hj.data, num_videos=cfg.probe_videos), transform=transform)
    eval_videos = LongVideos(replace(hj.data, num_videos=cfg.eval_videos, seed=cfg.eval_seed), transform=transform)
    tick = time.time()
    tr = encode_videos(model, train_videos, hj.batch_size, "cpu", nullcontext)
    ev = encode_videos(model, eval_videos, hj.batch_size, "cpu", nullcontext)
    logger.info("encoded %d + %d videos in %.0f s", len(tr), len(ev), time.time() - tick)
    xs_tr, xs_ev = level_features(model, tr.feats), level_features(model, ev.feats)

    # Probes: per level, per label kind; level 0 also over aligned blocks of the top span (same time extent
    # as the top level's step, so "single window vs integration over time" is separated from "which level").
    n_cls = {"fast": train_videos.num_fast, "slow": train_videos.num_slow}
    lab_tr, lab_ev = {"fast": tr.fast, "slow": tr.slow}, {"fast": ev.fast, "slow": ev.slow}
    probes, probe_acc = {}, {}
    views = {f"L{k}": (k, sp[k]) for k in range(len(sp))}
    views[f"L0x{sp[-1]}"] = (0, sp[-1])
    for name, (k, span) in views.items():
        for kind in ("fast", "slow"):
            xtr = blocks(xs_tr[k], span // sp[k]) if name.startswith("L0x") else xs_tr[k]
            xev = blocks(xs_ev[k], span // sp[k]) if name.startswith("L0x") else xs_ev[k]
            ytr = rearrange(lab_tr[kind], "n (s k) -> (n s) k", k=span)
            yev = rearrange(lab_ev[kind], "n (s k) -> (n s) k", k=span)
            p = Probe(xtr.reshape(-1, xtr.shape[-1]), ytr, n_cls[kind], cfg.probe_steps, cfg.probe_lr, hj.meta.seed)
            probes[name, kind] = p
            probe_acc[name, kind] = (p.predict(xev.reshape(-1, xev.shape[-1])) == yev).float().mean().item()

    # Fast model, then the horizon comparison on held-out videos.
    tick = time.time()
    fast_model = train_fast_model(xs_tr[0], cfg.fast_model, hj.meta.seed)
    logger.info("fast model trained in %.0f s", time.time() - tick)
    pred_tr, _ = horizon_predictions(model, fast_model, xs_tr, t0, H, sp)
    pred_ev, curves = horizon_predictions(model, fast_model, xs_ev, t0, H, sp)
    for name, (feats, probe_name, offsets) in pred_ev.items():
        for kind in ("fast", "slow"):
            y_tr, y_ev = lab_tr[kind][:, t0:t0 + H], lab_ev[kind][:, t0:t0 + H]  # [N, H]
            # Frozen probe: trained on the level's true features, applied to the prediction.
            curves[f"{name}/{kind}"] = [(probes[probe_name, kind].predict(feats[:, h], offsets[h]) == y_ev[:, h])
                                        .float().mean().item() for h in range(H)]
            # Refit probe: trained on train-split predictions for this horizon (what the prediction
            # carries about the future label, even when it lies off the manifold of true features).
            curves[f"{name}/{kind}_refit"] = [
                (Probe(pred_tr[name][0][:, h], y_tr[:, h:h + 1], n_cls[kind], cfg.probe_steps, cfg.probe_lr,
                       hj.meta.seed).predict(feats[:, h], 0) == y_ev[:, h]).float().mean().item() for h in range(H)]
    # Reference: a linear probe from the true features of the last `top` context windows straight to the
    # label h windows ahead (trained per h): what a linear readout of level 0's context already knows.
    top = sp[-1]
    for kind in ("fast", "slow"):
        ctx_tr, ctx_ev = xs_tr[0][:, t0 - top:t0].flatten(1), xs_ev[0][:, t0 - top:t0].flatten(1)
        curves[f"context probe/{kind}_refit"] = [
            (Probe(ctx_tr, lab_tr[kind][:, t0 + h:t0 + h + 1], n_cls[kind], cfg.probe_steps, cfg.probe_lr,
                   hj.meta.seed).predict(ctx_ev, 0) == lab_ev[kind][:, t0 + h]).float().mean().item() for h in range(H)]
    ceiling = bayes_ceiling(eval_videos, t0, H)
    for kind in ("fast", "slow"):
        curves[f"Bayes ceiling/{kind}"] = curves[f"Bayes ceiling/{kind}_refit"] = ceiling[kind].tolist()

    report = _report(cfg, probe_acc, curves, H, sp)
    print(report)
    (run_dir / "study.md").write_text(report)
    (run_dir / "study.json").write_text(json.dumps(
        {"probe_accuracy": {f"{a}/{b}": v for (a, b), v in probe_acc.items()}, "horizon": curves}, indent=1))
    _plots(run_dir, probe_acc, curves, H, views)
    logger.info("study written to %s", run_dir)
    return run_dir


def _report(cfg: HorizonStudyConfig, probe_acc, curves, H: int, sp: List[int]) -> str:
    lines = [f"## Probe accuracy on held-out videos (true target features; chance fast 0.25, slow "
             f"{1 / cfg.hjepa.data.num_actions:.2f})", "", "| level | step (windows) | fast | slow |", "|---|---|---|---|"]
    for name in dict.fromkeys(a for a, _ in probe_acc):
        span = sp[-1] if name.startswith("L0x") else sp[int(name[1:])]
        lines.append(f"| {name} | {span} | {probe_acc[name, 'fast']:.3f} | {probe_acc[name, 'slow']:.3f} |")
    for kind, title in (("slow", "slow-label accuracy, frozen probe"), ("slow_refit", "slow-label accuracy, refit probe"),
                        ("fast", "fast-label accuracy, frozen probe"), ("fast_refit", "fast-label accuracy, refit probe"),
                        ("cos_err", "1 - cosine to the level's own target")):
        cols = [c for c in curves if c.endswith("/" + kind)]
        lines += ["", f"## Future {title} vs horizon h (windows ahead; context {cfg.context_windows} windows)", "",
                  "| h | " + " | ".join(c.split("/")[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for h in range(H):
            lines.append(f"| {h + 1} | " + " | ".join(f"{curves[c][h]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _plots(run_dir: Path, probe_acc, curves, H: int, views) -> None:
    from vjepa.plots import _pyplot, save_with_help

    plt = _pyplot()
    hs = np.arange(1, H + 1)
    methods = list(dict.fromkeys(c.split("/")[0] for c in curves if not c.startswith("Bayes")))
    color = {m: f"C{i}" for i, m in enumerate(methods)} | {"Bayes ceiling": "k"}  # same colour in every panel
    fig, axes = plt.subplots(1, 5, figsize=(26, 4.2))
    for ax, kind, title in zip(axes, ("slow", "slow_refit", "fast", "fast_refit", "cos_err"),
                               ("future slow label, frozen probe", "future slow label, refit probe",
                                "future fast label, frozen probe", "future fast label, refit probe",
                                "1 - cos to own target")):
        for c in (c for c in curves if c.endswith("/" + kind)):
            ax.plot(hs, curves[c], marker="o", ms=3, label=c.split("/")[0],
                    ls="--" if c.startswith("Bayes") else "-", color=color[c.split("/")[0]])
        ax.set_xlabel("horizon h (windows)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_with_help(fig, run_dir / "horizon.png", "Accuracy of the label h windows ahead, predicted from each "
                   "level's features (higher is better; 1 - cos: lower is better). Curves fall with h; a level "
                   "that stays above the flat baseline for larger h predicts further ahead. Dashed: the best "
                   "any predictor can do.")
    names = list(views)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(names))
    for i, kind in enumerate(("fast", "slow")):
        ax.bar(x + (i - 0.5) * 0.38, [probe_acc[n, kind] for n in names], 0.38, label=f"{kind} label")
    ax.set_xticks(x, names)
    ax.set_ylabel("probe accuracy (held-out)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    save_with_help(fig, run_dir / "probes.png", "Held-out probe accuracy on each view's features. Higher levels "
                   "should keep the slow label (long time scale)\nat least as well as level 0, which should hold "
                   "the fast one; a bar at chance means that information is gone.")
