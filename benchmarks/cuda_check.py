"""Checks of the CUDA paths that the CPU test suite cannot reach. Run on a GPU machine:

    python benchmarks/cuda_check.py [--size vit_large]

1. Flash attention: the encoder (full clip and masked context) and the predictor run with SDPA
   restricted to the flash kernel under bf16 autocast (an error if any call is not flash-eligible),
   and match the math kernel's output.
2. bf16 vs fp32: one real `jepa_loss` on the same clip and masks in both precisions (relative gap), and
   bf16 gradients that are finite and close in direction (cosine) to the fp32 ones.
Prints a table and exits non-zero if a check fails.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from data.collate import MaskCollator  # noqa: E402
from vjepa.models import ModelConfig  # noqa: E402
from vjepa.objective import LossConfig, jepa_loss  # noqa: E402
from vjepa.pretrain import PretrainConfig, build_models  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="vit_large")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="CPU run of the script's logic (no flash check)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available() and not a.smoke:
        print("no CUDA device: nothing to check")
        return 1
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = PretrainConfig()
    cfg.model = ModelConfig(model_name=a.size)
    if a.smoke:
        cfg.data.num_frames, cfg.data.crop_size, cfg.model.pred_depth, cfg.model.pred_embed_dim = 4, 32, 1, 48
    encoder, predictor, target = build_models(cfg)
    encoder, predictor, target = encoder.to(dev), predictor.to(dev), target.to(dev)
    d = cfg.data
    clips = torch.randn(a.batch, 3, d.num_frames, d.crop_size, d.crop_size)
    collator = MaskCollator(cfg.mask, encoder.grid, seed=0)
    batch = collator([{"clip": c, "label": 0, "seed": i, "step": 0} for i, c in enumerate(clips)])
    batch = {"clip": batch["clip"].to(dev), "masks_ctx": [m.to(dev) for m in batch["masks_ctx"]],
             "masks_tgt": [m.to(dev) for m in batch["masks_tgt"]]}
    rows, ok = [], True

    def check(name, value, limit, fmt="{:.2e}"):
        nonlocal ok
        ok &= value <= limit
        rows.append((name, fmt.format(value), f"<= {limit:g}", "ok" if value <= limit else "FAIL"))

    # 1. flash attention, bf16
    encoder.eval(), predictor.eval()
    backends = (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH) if dev.type == "cuda" else (SDPBackend.MATH,) * 2
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        outs = {}
        for backend in backends:
            with sdpa_kernel([backend]):
                full = encoder(batch["clip"])
                ctx = encoder(batch["clip"], batch["masks_ctx"])
                pred = predictor(ctx, batch["masks_ctx"], batch["masks_tgt"])
            outs[backend] = (full, ctx[0], pred[0])
    for name, f, m in zip(("encoder, full clip", "encoder, context", "predictor"), outs[backends[0]],
                          outs[SDPBackend.MATH]):
        check(f"{backends[0].name.lower()} vs math, bf16: {name} (rel)", rel(f.float(), m.float()), 2e-2)
    if dev.type == "cuda":  # reaching here means no call fell outside the flash kernel
        rows.append(("flash kernel accepted every attention call", "yes", "", "ok"))

    # 2. bf16 vs fp32 loss and gradients
    encoder.train(), predictor.train()
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        encoder.zero_grad(set_to_none=True), predictor.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, _, _ = jepa_loss(encoder, predictor, target, batch, LossConfig())
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in [*encoder.parameters(), *predictor.parameters()]
                           if p.grad is not None])
        results[dtype] = (loss.item(), grads)
    l32, g32 = results[torch.float32]
    l16, g16 = results[torch.bfloat16]
    check("bf16 vs fp32: loss (rel)", abs(l16 - l32) / abs(l32), 2e-2)
    check("bf16 gradients finite (non-finite count)", float((~torch.isfinite(g16)).sum()), 0, "{:.0f}")
    check("bf16 vs fp32: gradient cosine distance", 1 - F.cosine_similarity(g16, g32, dim=0).item(), 0.05)
    rows.append(("fp32 loss / bf16 loss", f"{l32:.4f} / {l16:.4f}", "", ""))
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (smoke)"
    print(f"\nCUDA checks: {a.size}, batch {a.batch}, {d.num_frames}x{d.crop_size}, {name}, "
          f"torch {torch.__version__}")
    w = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0].ljust(w)}  {r[1]:>16s}  {r[2]:>8s}  {r[3]}")
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
