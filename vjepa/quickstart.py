"""The built-in quickstart: `python train.py` with no arguments.

1. Pretrain a tiny V-JEPA on generated motion videos (`vjepa.pretrain.train`, no labels).
2. Probe it frozen on the motion benchmark (`data.generated.motion_benchmark`: held-out videos whose class only
   motion tells), against two baselines: the same probe on a randomly initialised encoder of the same
   size, and on the pretrained encoder fed single-frame clips (the middle frame repeated), which must
   sit near chance because the labels need motion.
3. Print the table and save it as `comparison.json` and `comparison.png` in the run folder.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from vjepa.engine.config import ConfigError, to_yaml
from vjepa.engine.errors import RunExists
from vjepa.pretrain import PretrainConfig
from vjepa.pretrain import train as pretrain
from vjepa.probe_dist import Ranks
from vjepa.probe_train import ProbeConfig
from vjepa.probe_train import train as train_probe
from vjepa.engine.runtime import make_accelerator, resolve_run_dir

logger = logging.getLogger(__name__)

ARMS = {
    # name -> (what the table calls it, random init?, control)
    "pretrained": ("V-JEPA pretrained (frozen)", False, "none"),
    "random_init": ("random init (frozen)", True, "none"),
    "single_frame": ("pretrained, single-frame control", False, "single_frame"),
    "shuffled": ("pretrained, shuffled-frames control", False, "shuffled"),
    # the online (context) encoder instead of its EMA target: where the target is heading
    "online": ("V-JEPA online encoder (frozen)", False, "none"),
}


@dataclass
class QuickstartConfig:
    """Pretraining settings (`pretrain:`, a `PretrainConfig`) and the probe run on each arm (`probe:`, a
    `ProbeConfig` whose motion benchmark is given the pretraining clips' geometry).

    Args:
        arms: which comparisons to run, from `ARMS`.
        folder: run folder (None = runs/quickstart-<time>).
    """

    task: str = "quickstart"
    folder: Optional[str] = None
    arms: List[str] = field(default_factory=lambda: ["pretrained", "random_init", "single_frame"])
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def check_arms(arms: List[str]) -> None:
    """Unknown arms are a config error before pretraining starts, not after it."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown quickstart arm(s) {unknown}; valid arms: {sorted(ARMS)}")


def probe_config(cfg: QuickstartConfig, run_dir: Path, arm: str) -> ProbeConfig:
    check_arms([arm])
    _, random_init, control = ARMS[arm]
    p = copy.deepcopy(cfg.probe)
    d = cfg.pretrain.data
    # The benchmark's clips must look like the pretraining clips: same length, size and classes.
    p.data.motion.num_frames, p.data.motion.size = d.num_frames, d.crop_size
    p.data.motion.num_speeds, p.data.motion.distractor = d.synthetic.num_speeds, d.synthetic.distractor
    p.data.motion.control = control
    if control != "none":  # the controls answer one question (does the attentive probe need motion?)
        p.probe.linear_readout, p.probe.low_shot = False, 0
    p.data_aug.mean, p.data_aug.std = cfg.pretrain.data_aug.mean, cfg.pretrain.data_aug.std
    p.pretrain.checkpoint = str(run_dir / f"{cfg.pretrain.logging.write_tag}-latest.pt")
    p.pretrain.random_init = random_init
    p.pretrain.checkpoint_key = "encoder" if arm == "online" else "target_encoder"
    p.pretrain.seed = cfg.pretrain.meta.seed  # the random arm starts where pretraining started
    p.logging.folder = str(run_dir / f"probe-{arm}")
    # One process holds one Accelerator state: the probes run in the pretraining's precision.
    p.meta.dtype = cfg.pretrain.meta.dtype
    p.optimization.use_bfloat16 = cfg.pretrain.meta.dtype in ("bfloat16", "bf16")
    return p


def probe_arm(cfg: QuickstartConfig, run_dir: Path, arm: str) -> dict:
    """The probes of one arm on the run folder's checkpoint -> its row of the comparison table."""
    t = time.time()
    try:
        res = train_probe(probe_config(cfg, run_dir, arm), ranks=Ranks())  # main process only: no collective
    except RunExists as e:  # the probe's message names its own keys; a quickstart's are nested
        raise RunExists(e.path, "probe.resume_checkpoint=true (reads the finished probe back)",
                        f"delete {run_dir / f'probe-{arm}'} to probe this arm afresh") from e
    return {"arm": arm, "name": ARMS[arm][0], "top1": res["top1"], "top5": res["top5"],
            "knn_top1": res.get("knn_top1"), "linear_top1": res.get("linear_top1"),
            "low_shot_top1": res.get("low_shot_top1"), "best_probe": res["best_probe"], "seconds": time.time() - t}


def pretrain_in_run_folder(cfg, name: str, pretrain_fn) -> tuple:
    """A quickstart's first half: its run folder (`cfg.folder`, else `runs/<name>-<time>`) with the resolved
    quickstart config, and `pretrain_fn(cfg.pretrain)` writing into it. Returns (accelerator, run folder)."""
    accelerator = make_accelerator(cfg.pretrain.meta.dtype)
    run_dir = resolve_run_dir(cfg.folder or cfg.pretrain.logging.folder, name, accelerator)
    (run_dir / "quickstart.yaml").write_text(to_yaml(cfg))
    pcfg = copy.deepcopy(cfg.pretrain)
    pcfg.logging.folder = str(run_dir)
    try:
        pretrain_fn(pcfg)
    except RunExists as e:  # the pretraining's message names its own keys; a quickstart's are nested
        raise RunExists(e.path, "pretrain.meta.load_checkpoint=true (probes it again)",
                        "choose another folder=PATH") from e
    return accelerator, run_dir


def run(cfg: QuickstartConfig, dry_run: bool = False) -> Optional[dict]:
    t0 = time.time()
    check_arms(cfg.arms)
    if dry_run:
        print(to_yaml(cfg))
        return None
    accelerator, run_dir = pretrain_in_run_folder(cfg, "quickstart", pretrain)
    t_pretrain = time.time() - t0
    if not accelerator.is_main_process:
        return None

    monitor = _monitor_rows(run_dir / "metrics.csv")
    rows = [probe_arm(cfg, run_dir, arm) for arm in cfg.arms]
    num_classes = 8 * cfg.pretrain.data.synthetic.num_speeds
    summary = {"rows": rows, "chance_top1": 100.0 / num_classes, "num_classes": num_classes,
               "pretrain_seconds": t_pretrain, "total_seconds": time.time() - t0,
               "model": cfg.pretrain.model.model_name, "pretrain_steps": cfg.pretrain.optimization.epochs
               * cfg.pretrain.optimization.ipe, "monitor": monitor, "low_shot": cfg.probe.probe.low_shot}
    summary = merge_earlier(summary, run_dir / "comparison.json")
    rows = summary["rows"]
    (run_dir / "comparison.json").write_text(json.dumps(summary, indent=2))
    if not rows:  # pretraining only (arms: []), e.g. a sweep screening variants by the quality monitor
        return summary
    plot_comparison(summary, run_dir / "comparison.png")
    print(format_table(summary))
    print(f"saved {run_dir / 'comparison.json'} and {run_dir / 'comparison.png'}")
    return summary


def merge_earlier(summary: dict, path: Path) -> dict:
    """A run folder probed again (`pretrain.meta.load_checkpoint=true arms=[...]`) keeps the rows of the arms
    it probed before: the new arms' rows replace or join them (in `ARMS` order), and the seconds add up (the
    time spent in this folder). Without an earlier comparison the summary is returned as it is."""
    if not path.exists():
        return summary
    earlier = json.loads(path.read_text())
    new = {r["arm"] for r in summary["rows"]}
    rows = [r for r in earlier.get("rows", []) if r["arm"] not in new] + summary["rows"]
    order = list(ARMS)
    rows.sort(key=lambda r: order.index(r["arm"]) if r["arm"] in order else len(order))
    return dict(summary, rows=rows, pretrain_seconds=earlier.get("pretrain_seconds", 0.0) + summary["pretrain_seconds"],
                total_seconds=earlier.get("total_seconds", 0.0) + summary["total_seconds"])


def _monitor_rows(metrics_csv: Path) -> list:
    """The pretraining quality monitor's rows (step, knn_top1, linear_top1) from metrics.csv, if it ran."""
    if not metrics_csv.exists():
        return []
    import csv

    with open(metrics_csv) as f:
        return [{"step": int(r["step"]), "knn_top1": float(r["knn_top1"]), "linear_top1": float(r["linear_top1"])}
                for r in csv.DictReader(f) if r.get("linear_top1") not in (None, "")]


def format_table(summary: dict) -> str:
    rows = summary["rows"]
    w = max(len(r["name"]) for r in rows)
    shots = summary.get("low_shot", 0)
    lines = [f"Frozen readouts on the motion benchmark ({summary['num_classes']} classes, chance "
             f"{summary['chance_top1']:.1f}%), {summary['model']} pretrained {summary['pretrain_steps']} steps, "
             "top-1 on held-out clips",
             f"{'encoder'.ljust(w)}  attentive  (top-5)  linear   k-NN  {shots}-shot attentive",
             "-" * (w + 56)]

    def pct(v):
        return f"{v:5.1f}%" if v is not None else "     -"

    for r in rows:
        lines.append(f"{r['name'].ljust(w)}  {pct(r['top1'])}    {pct(r['top5'])}  {pct(r.get('linear_top1'))}  "
                     f"{pct(r.get('knn_top1'))}  {pct(r.get('low_shot_top1'))}")
    lines.append(f"wall time: pretraining {summary['pretrain_seconds']:.0f}s, total {summary['total_seconds']:.0f}s")
    return "\n".join(lines)


def plot_comparison(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    bars = ax.barh([r["name"] for r in rows][::-1], [r["top1"] for r in rows][::-1], color="#4c72b0")
    ax.bar_label(bars, fmt="%.1f%%", padding=3)
    ax.axvline(summary["chance_top1"], color="gray", ls="--", lw=1, label=f"chance ({summary['chance_top1']:.1f}%)")
    ax.set_xlim(0, 110)
    ax.set_xlabel("val top-1 (%)")
    ax.set_title("Frozen attentive probe, motion benchmark")
    ax.legend(loc="lower right", fontsize=8)
    from vjepa.plots import save_with_help

    save_with_help(fig, path, "Higher is better. Pretraining helps when its bar clears the random-init encoder's "
                   "by more than\nthe seed-to-seed spread (a few points here); a bar near the dashed line learned "
                   "nothing usable.", dpi=120)
