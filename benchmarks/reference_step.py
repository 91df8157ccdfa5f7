"""The project's pretraining step against the public reference's (facebookresearch/jepa), same config,
same machine, in one process: alternated rounds, median seconds per step, and their ratio. Both steps
see the same clips and the same masks (the reference's collator draws them), so both do the same work.

    git clone https://github.com/facebookresearch/jepa /path/to/jepa      # not a dependency: only here
    python benchmarks/reference_step.py --jepa /path/to/jepa                # 2 threads, 3 rounds x 8 steps

Config (both sides): the reference's `configs/pretrain/vitl16.yaml` (its masks, optimizer and schedules;
the project's defaults are the same recipe) with `--model` (vit_tiny), `--crop` (64) and `--batch` (8),
fp32. Each step gets fresh masks and a random clip, made before the clock starts (a data loader's workers
make them in a real run). The masks come from the reference's multiblock3d collator and are given to both
steps (the project's collator draws the same distribution, from other random streams: on a 4 x 4 patch
grid the per-step token counts of the two differ enough to move a ratio over a few steps).

The reference's step is rebuilt from its `app/vjepa/train.py` with its own modules (`init_video_model`,
`init_opt`, its mask collator and `apply_masks`): lr and wd schedulers stepped, target features layer-normed
and gathered per mask, encoder + predictor, L1 loss, the variance regulariser it computes every step even
at weight 0, backward, AdamW, then the EMA update as a per-parameter loop. It clips gradients only after
the warm-up epochs, so not here (the harder comparison for the project, which clips every step). The
project's step is `vjepa.engine.optim.optimizer_step` + `ema_update`, as `vjepa/pretrain.py` runs it.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reference_side(jepa: Path, args, clips):
    """-> (step(i), description, masks: (context, target) lists per step) for the reference's step on
    pre-made batch i."""
    sys.path.insert(0, str(jepa))
    warnings.filterwarnings("ignore", category=FutureWarning)  # its torch.cuda.amp / sdp_kernel calls
    from app.vjepa.utils import init_opt, init_video_model
    from src.masks.multiblock3d import MaskCollator
    from src.masks.utils import apply_masks

    cfg = yaml.safe_load((jepa / "configs/pretrain/vitl16.yaml").read_text())
    d, m, o = cfg["data"], cfg["model"], cfg["optimization"]
    torch.manual_seed(0)
    encoder, predictor = init_video_model(
        device=torch.device("cpu"), patch_size=d["patch_size"], num_frames=args.frames,
        tubelet_size=d["tubelet_size"], model_name=args.model, crop_size=args.crop, pred_depth=m["pred_depth"],
        pred_embed_dim=m["pred_embed_dim"], uniform_power=m.get("uniform_power", True),
        use_mask_tokens=m.get("use_mask_tokens", True), num_mask_tokens=len(cfg["mask"]),
        zero_init_mask_tokens=m.get("zero_init_mask_tokens", True), use_sdpa=cfg["meta"].get("use_sdpa", False))
    target = copy.deepcopy(encoder).requires_grad_(False)
    optimizer, _, scheduler, wd_scheduler = init_opt(
        encoder=encoder, predictor=predictor, wd=float(o["weight_decay"]), final_wd=float(o["final_weight_decay"]),
        start_lr=o["start_lr"], ref_lr=o["lr"], final_lr=o["final_lr"], iterations_per_epoch=o["ipe"],
        warmup=o["warmup"], num_epochs=o["epochs"], ipe_scale=o.get("ipe_scale", 1.0), mixed_precision=False)
    total = int(o["ipe"] * o["epochs"] * o.get("ipe_scale", 1.0))
    momentum = [o["ema"][0] + i * (o["ema"][1] - o["ema"][0]) / total for i in range(total + 1)]
    collator = MaskCollator(crop_size=args.crop, num_frames=args.frames, patch_size=d["patch_size"],
                            tubelet_size=d["tubelet_size"], cfgs_mask=cfg["mask"])
    batches = []
    for c in clips:
        _, m_enc, m_pred = collator([([x], 0) for x in c])
        batches.append((c, m_enc, m_pred))
    loss_exp = cfg["loss"]["loss_exp"]

    def step(i: int) -> float:
        c, m_enc, m_pred = batches[i]
        scheduler.step()
        wd_scheduler.step()
        with torch.no_grad():
            h = target(c)
            h = apply_masks(F.layer_norm(h, (h.size(-1),)), m_pred, concat=False)
        z = predictor(encoder(c, m_enc), h, m_enc, m_pred)
        loss = sum(torch.mean(torch.abs(zi - hi) ** loss_exp) / loss_exp for zi, hi in zip(z, h)) / len(m_pred)
        reg = torch.mean(F.relu(1.0 - sum(torch.sqrt(zi.var(dim=1) + 1e-4) for zi in z) / len(z)))
        (loss + cfg["loss"]["reg_coeff"] * reg).backward()
        optimizer.step()
        optimizer.zero_grad()
        mom = momentum[i]
        with torch.no_grad():
            for q, k in zip(encoder.parameters(), target.parameters()):
                k.data.mul_(mom).add_((1.0 - mom) * q.detach().data)
        return loss.item()

    tokens = [[b[1][j].shape[1] for b in batches] for j in range(len(cfg["mask"]))]
    return step, f"context tokens per mask config and step {tokens}", [(b[1], b[2]) for b in batches]


def project_side(args, clips, masks):
    """-> (step(i), description) for the project's pretraining step on pre-made batch i, with the given
    (context, target) masks per step (token indices in the same t-major order as the project's)."""
    from benchmarks.train_step import jepa_step
    from vjepa.engine.optim import param_groups
    from vjepa.engine.runtime import make_accelerator
    from vjepa.engine.schedules import cosine_at, linear_at, lr_at, set_lr_wd
    from vjepa.engine.speed import build_adamw
    from vjepa.models import ModelConfig
    from vjepa.pretrain import PretrainConfig, build_models

    cfg = PretrainConfig()
    cfg.model = ModelConfig(model_name=args.model)
    cfg.data.num_frames, cfg.data.crop_size, cfg.data.batch_size = args.frames, args.crop, args.batch
    o = cfg.optimization
    torch.manual_seed(0)
    accelerator = make_accelerator("float32")
    encoder, predictor, target = build_models(cfg)
    optimizer = build_adamw(param_groups(encoder, predictor), accelerator.device, o.fused_adamw, lr=o.lr,
                            betas=o.betas, eps=o.eps)
    encoder, predictor, optimizer = accelerator.prepare(encoder, predictor, optimizer)
    # the same normalised clips as the reference's, and its masks
    batches = [{"clip": c, "masks_ctx": list(m_ctx), "masks_tgt": list(m_tgt)}
               for c, (m_ctx, m_tgt) in zip(clips, masks)]
    total = int(o.ipe_scale * o.epochs * o.ipe)

    def step(i: int) -> float:
        set_lr_wd(optimizer, lr_at(i, warmup_steps=int(o.warmup * o.ipe), total_steps=total, start_lr=o.start_lr,
                                   lr=o.lr, final_lr=o.final_lr),
                  cosine_at(i, total_steps=total, start=o.weight_decay, end=o.final_weight_decay))
        out = jepa_step(accelerator, optimizer, encoder, predictor, target, batches[i],
                        linear_at(i, total_steps=total, start=o.ema[0], end=o.ema[1]), i, o.clip_grad, cfg.loss)
        return float(out["loss"])

    return step, "the same clips and masks"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jepa", type=Path, required=True, help="a checkout of facebookresearch/jepa")
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per side and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = args.warmup + args.rounds * args.steps
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(args.batch, 3, args.frames, args.crop, args.crop, generator=g) for _ in range(n)]
    ref_step, about, masks = reference_side(args.jepa, args, clips)
    sides = {"reference": (ref_step, about), "project": project_side(args, clips, masks)}
    for name, (step, about) in sides.items():
        print(f"{name}: {about}")
    times = {name: [] for name in sides}
    for name, (step, _) in sides.items():
        for i in range(args.warmup):
            step(i)
    for r in range(args.rounds):
        for name, (step, _) in sides.items():
            first = args.warmup + r * args.steps
            for i in range(first, first + args.steps):
                t0 = time.perf_counter()
                step(i)
                times[name].append(time.perf_counter() - t0)
    print(f"\n{args.model}, {args.frames} x {args.crop} px, batch {args.batch}, fp32, CPU x{args.threads} threads, "
          f"{args.rounds} alternated rounds x {args.steps} steps")
    print("| round | reference s/step | project s/step | reference / project |")
    print("|---|---|---|---|")
    ratios = []
    for r in range(args.rounds):
        sl = slice(r * args.steps, (r + 1) * args.steps)
        ref, own = statistics.median(times["reference"][sl]), statistics.median(times["project"][sl])
        ratios.append(ref / own)
        print(f"| {r} | {ref:.3f} | {own:.3f} | {ref / own:.2f}x |")
    ref, own = statistics.median(times["reference"]), statistics.median(times["project"])
    print(f"| all | {ref:.3f} | {own:.3f} | {ref / own:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
