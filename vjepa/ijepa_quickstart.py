"""The image quickstart: `python train.py --config configs/ijepa/quickstart.yaml` (CPU, a few minutes).

1. Pretrain a tiny I-JEPA (`vjepa.ijepa`, the pretraining job in I-JEPA mode) on the training split of
   scikit-learn's handwritten digits (1,797 8x8 images, upscaled; labels unused).
2. Freeze the EMA target encoder, mean-pool its tokens, and score the held-out digits with a linear probe
   (logistic regression, its L2 strength picked by 5-fold cross-validation on the training split) and a
   cosine k-NN, next to a randomly initialised encoder of the same size (the weights pretraining started from).
3. Print the table; `comparison.json` in the run folder.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from data.images import DigitsImages, ImageTransform, build_image_dataset
from vjepa.engine import checkpoint as ckpt
from vjepa.engine.config import to_yaml
from vjepa.ijepa import IJEPAConfig, build_models
from vjepa.ijepa import train as pretrain
from vjepa.quickstart import pretrain_in_run_folder

logger = logging.getLogger(__name__)


@dataclass
class IJEPAQuickstartConfig:
    """Pretraining (`pretrain:`, an `IJEPAConfig` with `data.builtin: digits`) and the frozen evaluation.

    Args:
        folder: run folder (None = runs/ijepa_quickstart-<time>).
        probe_c_grid: inverse L2 strengths tried by the linear probe (5-fold CV on the training split).
        knn_k: neighbours of the cosine k-NN.
        lowshot / lowshot_draws: labels per class of the low-shot linear probe, and how many random label
            draws its score averages.
    """

    task: str = "ijepa_quickstart"
    folder: Optional[str] = None
    probe_c_grid: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    knn_k: int = 10
    lowshot: int = 5
    lowshot_draws: int = 10
    pretrain: IJEPAConfig = field(default_factory=IJEPAConfig)


@torch.no_grad()
def pooled_features(encoder, dataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled tokens `[N, D]` and labels `[N]` of every image of `dataset` (no augmentation)."""
    feats, labels = [], []
    for i in range(0, len(dataset), batch_size):
        samples = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        x = torch.stack([s["clip"] for s in samples])  # [b, C, H, W]
        feats.append(encoder(x).mean(dim=1))  # [b, N, D] -> [b, D]
        labels += [s["label"] for s in samples]
    return torch.cat(feats).numpy(), np.asarray(labels)


def evaluate(encoder, train_set, val_set, c_grid: List[float], k: int, lowshot: int = 5, lowshot_draws: int = 10,
             seed: int = 0) -> dict:
    """Held-out top-1 (%) on frozen pooled features: a linear probe trained on every training label, the
    same probe trained on `lowshot` labels per class (mean over `lowshot_draws` random draws), and a
    cosine k-NN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = pooled_features(encoder, train_set)
    xva, yva = pooled_features(encoder, val_set)

    def probe(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))

    def fit_best(x, y):
        folds = min(5, int(np.bincount(y).min()))
        cv = {c: float(cross_val_score(probe(c), x, y, cv=folds).mean()) for c in c_grid}
        return probe(max(cv, key=cv.get)).fit(x, y)

    linear = 100.0 * fit_best(xtr, ytr).score(xva, yva)
    rng = np.random.default_rng(seed)
    few = []
    for _ in range(lowshot_draws):
        idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), lowshot, replace=False) for c in np.unique(ytr)])
        few.append(100.0 * fit_best(xtr[idx], ytr[idx]).score(xva, yva))
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(xtr, ytr)
    return {"linear_top1": linear, "lowshot_top1": float(np.mean(few)), "knn_top1": 100.0 * knn.score(xva, yva)}


def run(cfg: IJEPAQuickstartConfig, dry_run: bool = False) -> Optional[dict]:
    t0 = time.time()
    if cfg.pretrain.data.builtin != "digits":
        raise ValueError("the image quickstart evaluates on the digits: pretrain.data.builtin must be 'digits'")
    if dry_run:
        print(to_yaml(cfg))
        return None
    accelerator, run_dir = pretrain_in_run_folder(cfg, "ijepa_quickstart", pretrain)
    t_pretrain = time.time() - t0
    if not accelerator.is_main_process:
        return None

    train_set = build_image_dataset(cfg.pretrain.data, train=False)  # the pretraining images, unaugmented
    val_set = DigitsImages(cfg.pretrain.data.crop_size, "val", ImageTransform(cfg.pretrain.data, train=False))
    torch.manual_seed(cfg.pretrain.meta.seed)  # the weights pretraining started from
    random_init, _, _ = build_models(cfg.pretrain)
    pretrained, _, _ = build_models(cfg.pretrain)
    state = ckpt.load(run_dir / f"{cfg.pretrain.logging.write_tag}-latest.pt")
    ckpt.load_state_strict(pretrained, state["target_encoder"], "target_encoder")
    rows = []
    for name, enc in (("I-JEPA pretrained (frozen)", pretrained), ("random init (frozen)", random_init)):
        res = evaluate(enc.eval(), train_set, val_set, cfg.probe_c_grid, cfg.knn_k, cfg.lowshot, cfg.lowshot_draws)
        rows.append({"name": name, **res})
    summary = {"rows": rows, "seed": cfg.pretrain.meta.seed, "model": cfg.pretrain.meta.model_name,
               "pretrain_steps": int(state["step"]),
               "num_train": len(train_set), "num_val": len(val_set), "pretrain_seconds": t_pretrain,
               "total_seconds": time.time() - t0,
               "lowshot": cfg.lowshot,
               "gain_linear": rows[0]["linear_top1"] - rows[1]["linear_top1"],
               "gain_lowshot": rows[0]["lowshot_top1"] - rows[1]["lowshot_top1"],
               "gain_knn": rows[0]["knn_top1"] - rows[1]["knn_top1"]}
    (run_dir / "comparison.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f"saved {run_dir / 'comparison.json'}")
    return summary


def format_table(summary: dict) -> str:
    rows = summary["rows"]
    w = max(len(r["name"]) for r in rows)
    lines = [f"Frozen probes on held-out digits ({summary['num_val']} images, 10 classes), {summary['model']} "
             f"I-JEPA {summary['pretrain_steps']} steps, seed {summary['seed']}",
             f"{'encoder'.ljust(w)}  linear (all labels)  linear ({summary['lowshot']}/class)  k-NN top-1",
             "-" * (w + 56)]
    for r in rows:
        lines.append(f"{r['name'].ljust(w)}  {r['linear_top1']:18.1f}%  {r['lowshot_top1']:16.1f}%  "
                     f"{r['knn_top1']:9.1f}%")
    lines.append(f"gain over random init: linear {summary['gain_linear']:+.1f}, low-shot linear "
                 f"{summary['gain_lowshot']:+.1f}, k-NN {summary['gain_knn']:+.1f} points")
    lines.append(f"wall time: pretraining {summary['pretrain_seconds']:.0f}s, total {summary['total_seconds']:.0f}s")
    return "\n".join(lines)
