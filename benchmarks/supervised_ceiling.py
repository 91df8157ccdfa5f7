"""How high can the quickstart's readouts go for this encoder and budget? Train the quickstart's encoder
*with labels* (cross-entropy through a linear head on its mean-pooled tokens) on the labelled versions of
the pretraining clips, for as many steps and clips as pretraining sees, then read it out exactly as the
quickstart's arms (attentive probe, linear probe and k-NN on pooled tokens, 16-shot attentive probe):

    python benchmarks/supervised_ceiling.py --out OUT [quickstart overrides, e.g. pretrain.meta.seed=1]

It is a diagnostic, not a recipe: the labels it trains on are the benchmark's classes (on other videos of
the same generator; the benchmark's splits use their own seeds). It says how far a representation that
holds motion can move each readout above the random init, so the issue-10 margins can be read against it.
Writes OUT/jepa-latest.pt (the trained encoder under `target_encoder`, as a pretraining checkpoint keeps
its EMA encoder) and OUT/comparison.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.build import build_dataset  # noqa: E402
from vjepa.engine.config import load_config, to_dict, to_yaml  # noqa: E402
from vjepa.engine.runtime import setup_logging  # noqa: E402
from vjepa.pretrain import build_models  # noqa: E402
from vjepa.quickstart import QuickstartConfig, format_table, probe_arm  # noqa: E402


def train_supervised(cfg: QuickstartConfig, lr: float, log_every: int = 50) -> torch.nn.Module:
    """The quickstart encoder (same init as pretraining: seeded as the pretraining job) trained with labels
    for the pretraining run's steps and batch size; AdamW at `lr`, cosine to 0 after a 1-epoch warmup."""
    p = cfg.pretrain
    torch.manual_seed(p.meta.seed)
    encoder, _, _ = build_models(p)
    if p.data.datasets:
        raise ValueError("the supervised ceiling trains on the built-in motion videos: leave pretrain.data.datasets empty")
    ds = build_dataset(p.data, p.data_aug)  # the pretraining clips, float and normalised, with their labels
    head = torch.nn.Sequential(torch.nn.LayerNorm(encoder.embed_dim), torch.nn.Linear(encoder.embed_dim, ds.num_classes))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.04)
    steps, warmup = p.optimization.epochs * p.optimization.ipe, p.optimization.warmup * p.optimization.ipe
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * min(1.0, s / steps))).item()))
    loader = torch.utils.data.DataLoader(ds, batch_size=p.data.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(p.meta.seed))
    encoder.train()
    step, t0, correct, seen = 0, time.time(), 0, 0
    while step < steps:
        for batch in loader:
            logits = head(encoder(batch["clip"]).mean(1))
            loss = F.cross_entropy(logits, batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == batch["label"]).sum())
            seen += len(batch["label"])
            step += 1
            if step % log_every == 0:
                print(f"step {step}/{steps}: loss {loss.item():.3f}, train top-1 over the last {log_every} steps "
                      f"{100 * correct / seen:.1f}%, {time.time() - t0:.0f}s", flush=True)
                correct = seen = 0
            if step == steps:
                break
    return encoder.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW peak LR (the quickstart pretraining's)")
    ap.add_argument("--encoder", help="skip training: read out this script's earlier checkpoint (e.g. with a "
                    "longer probe schedule, probe.optimization.num_epochs=60)")
    ap.add_argument("overrides", nargs="*", help="quickstart config overrides (key.sub=value)")
    args = ap.parse_args()
    setup_logging(True)  # the probes' progress, as in train.py
    cfg = load_config(QuickstartConfig, args.config, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    path = out / f"{cfg.pretrain.logging.write_tag}-latest.pt"
    if args.encoder:
        shutil.copyfile(args.encoder, path)
    else:
        encoder = train_supervised(cfg, args.lr)
        torch.save({"target_encoder": encoder.state_dict(), "encoder": encoder.state_dict(),
                    "step": cfg.pretrain.optimization.epochs * cfg.pretrain.optimization.ipe,
                    "config": to_dict(cfg.pretrain)}, path)
    t_train = time.time() - t0
    (out / "supervised.yaml").write_text(to_yaml(cfg))
    rows = [probe_arm(cfg, out, arm) for arm in ("pretrained", "random_init")]
    rows[0]["name"] = "supervised (frozen)"  # the checkpoint's encoder, read as the pretrained arm
    num_classes = 8 * cfg.pretrain.data.synthetic.num_speeds
    summary = {"rows": rows, "chance_top1": 100.0 / num_classes, "num_classes": num_classes,
               "model": cfg.pretrain.model.model_name, "low_shot": cfg.probe.probe.low_shot, "lr": args.lr,
               "pretrain_steps": cfg.pretrain.optimization.epochs * cfg.pretrain.optimization.ipe,
               "pretrain_seconds": t_train, "total_seconds": time.time() - t0}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2))
    print("Supervised ceiling (the encoder trained with the benchmark's labels, then frozen):")
    print(format_table(summary))


if __name__ == "__main__":
    main()
