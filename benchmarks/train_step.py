"""Seconds per V-JEPA training step, clips/s, peak memory and (on GPU) MFU, per model size.

    python benchmarks/train_step.py                                    # CPU: vit_tiny, vit_small, vit_base
    python benchmarks/train_step.py --sizes vit_large --batch 24 --peak-tflops 989   # one H100, bf16
    python benchmarks/train_step.py --ab --sizes vit_large --batch 24                 # speed-ups as ratios

Each size runs in its own subprocess so peak memory is that size's alone. A step is the real
`vjepa.pretrain.train_step` (target forward, context encoder + predictor for both published mask
configs, backward, clipping, AdamW, EMA) on random clips; FLOPs are counted by torch's FlopCounterMode
on one step, so MFU = counted FLOPs / step time / the card's peak (`--peak-tflops`, or the dense bf16
peak of an H100/H200/A100 recognised by name).

`--ab` measures each speed-up as a ratio within one run, on one model and one batch: today's step
(eager, foreach AdamW, the finiteness check read every step) against the same step with one option
changed (compiled models, fused AdamW, the deferred check), and with all three. The variants take turns,
`--rounds` times `--steps` steps each, so drift in the machine's load hits all of them alike; ratios
are medians over rounds, with their min-max spread.

`--pad-ab` times the step with the masks truncated to the batch minimum (the published default) against the
same step with `pad_to_longest` masks (every clip keeps its whole context and target, padded; attention
skips the padding), alternated, on the quickstart's pretraining config (vit_micro, 16 x 64 px, 8 px patches,
batch 16, 4 x 96 predictor and its masks; `--published` takes the published recipe at --sizes / --batch /
--frames / --crop instead). A third row runs the padded masks in `--length-groups` groups of clips of similar
length (`model.length_groups`), each cut to its longest clip. Padding processes more tokens by design, so the
table reports the real (unpadded) tokens per step, the tokens the predictor processes with padding, and the
time per 1,000 real tokens beside seconds per step.

`--fsdp-ab --nproc N` launches N processes (torchrun; gloo on CPU, NCCL on GPU) that time the same step
with the models replicated (DDP, today's default) and sharded (FSDP2, `meta.fsdp`, vjepa/engine/fsdp.py),
alternated in the same way; the ratio is DDP time / FSDP time (> 1: FSDP faster). Both variants live in
each process, so the table reports time and the parameters each rank holds, not peak memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 peaks (TFLOP/s, no sparsity) from the vendors' data sheets; the first name found in the
# device name wins, so the PCIe H100 comes before the generic H100 (SXM).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0))


def detect_peak(device_name: str):
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


def jepa_step(accelerator, optimizer, encoder, predictor, target, batch: dict, momentum: float = 0.999,
              step: int = 0, clip: float = 10.0, loss=None):
    """One pretraining step as `vjepa/pretrain.py` runs it: the objective through the engine's `optimizer_step`
    (backward, clipping, AdamW), then the EMA update of the target from the online encoder. -> its output."""
    from functools import partial

    from vjepa.engine.optim import ema_update, optimizer_step
    from vjepa.pretrain import LossConfig, objective

    out = optimizer_step(accelerator, optimizer, partial(objective, encoder, predictor, target, batch,
                                                          loss or LossConfig()),
                         (encoder, predictor), step, clip, {"enc": encoder, "pred": predictor})
    ema_update(target, accelerator.unwrap_model(encoder), momentum)
    return out


def run_one(size: str, batch: int, frames: int, crop: int, steps: int, warmup: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from vjepa.engine.optim import param_groups

    accelerator, encoder, predictor, target, batch_data = _setup(size, batch, frames, crop)
    optimizer = accelerator.prepare(torch.optim.AdamW(param_groups(encoder, predictor), lr=1e-4))
    n_params = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    cuda = accelerator.device.type == "cuda"

    def step():
        jepa_step(accelerator, optimizer, encoder, predictor, target, batch_data)

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "params_m": n_params / 1e6, "batch": batch, "s_per_step": dt, "clips_per_s": batch / dt, "peak_gib": peak / 2**30, "gflop_per_step": flops / 1e9,
            "device": torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads",
            "precision": "bf16" if cuda else "fp32"}


def _setup(size: str, batch: int, frames: int, crop: int):
    from data.collate import MaskCollator
    from vjepa.engine.runtime import make_accelerator
    from vjepa.models import ModelConfig
    from vjepa.pretrain import PretrainConfig, build_models

    cfg = PretrainConfig()
    cfg.model = ModelConfig(model_name=size)
    cfg.data.num_frames, cfg.data.crop_size, cfg.data.batch_size = frames, crop, batch
    accelerator = make_accelerator("bfloat16")
    encoder, predictor, target = build_models(cfg)
    collator = MaskCollator(cfg.mask, encoder.grid, seed=0)
    encoder, predictor = accelerator.prepare(encoder, predictor)
    target.to(accelerator.device)
    clips = torch.randn(batch, 3, frames, crop, crop)
    data = collator([{"clip": c, "label": 0, "seed": i, "step": 0} for i, c in enumerate(clips)])
    data["clip"] = data["clip"].to(accelerator.device)
    data["masks_ctx"] = [m.to(accelerator.device) for m in data["masks_ctx"]]
    data["masks_tgt"] = [m.to(accelerator.device) for m in data["masks_tgt"]]
    return accelerator, encoder, predictor, target, data


def run_ab(size: str, batch: int, frames: int, crop: int, steps: int, warmup: int, rounds: int,
           compile_too: bool, peak_tflops, json_path=None) -> dict:
    """Alternated timings of the step variants (see the module docstring) on one model and batch."""
    from functools import partial

    from torch.utils.flop_counter import FlopCounterMode

    from vjepa.engine.optim import FiniteWatch, ema_update, optimizer_step, param_groups
    from vjepa.engine.speed import compile_prerequisites, fused_supported
    from vjepa.pretrain import LossConfig, objective

    accelerator, encoder, predictor, target, data = _setup(size, batch, frames, crop)
    dev = accelerator.device
    cuda = dev.type == "cuda"
    groups = param_groups(encoder, predictor)
    optimizers = {"plain": torch.optim.AdamW(groups, lr=1e-5)}
    if fused_supported(dev):
        optimizers["fused"] = torch.optim.AdamW(param_groups(encoder, predictor), lr=1e-5, fused=True)
    models = {"eager": (encoder, predictor, target)}
    why_not = compile_prerequisites(dev) if compile_too else "left out (--no-compile)"
    if why_not is None:
        # separate compiled wrappers over the same parameters, so eager and compiled steps alternate
        models["compiled"] = tuple(torch.compile(m) for m in (encoder, predictor, target))
    inner = accelerator.unwrap_model(encoder)

    def step(model: str, opt: str, watch):
        enc, pred, tgt = models[model]
        optimizer_step(accelerator, optimizers[opt], partial(objective, enc, pred, tgt, data, LossConfig()),
                       (encoder, predictor), 0, 10.0, {"enc": encoder, "pred": predictor}, watch=watch)
        ema_update(target, inner, 0.9999)

    variants = {"today (eager, foreach AdamW, check every step)": ("eager", "plain", False)}
    if "compiled" in models:
        variants["compiled"] = ("compiled", "plain", False)
    if "fused" in optimizers:
        variants["fused AdamW"] = ("eager", "fused", False)
    variants["deferred check"] = ("eager", "plain", True)
    variants["all"] = ("compiled" if "compiled" in models else "eager", "fused" if "fused" in optimizers else "plain",
                       True)
    with FlopCounterMode(display=False) as counter:
        step("eager", "plain", None)
    flops = counter.get_total_flops()
    t_compile = {}
    for name, (model, opt, deferred) in variants.items():  # warm-up, compilation included
        t0 = time.perf_counter()
        for _ in range(warmup):
            step(model, opt, FiniteWatch(dev, 10**9) if deferred else None)
        if cuda:
            torch.cuda.synchronize()
        t_compile[name] = time.perf_counter() - t0
        print(f"warm-up of '{name}': {t_compile[name]:.1f} s", file=sys.stderr, flush=True)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (model, opt, deferred) in variants.items():
            watch = FiniteWatch(dev, 10**9) if deferred else None
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step(model, opt, watch)
            if watch is not None:
                watch.check(0)  # the one sync the deferred variant still pays, once per `steps`
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / steps)
    base = next(iter(variants))
    rows = []
    for name in variants:
        ratios = [b / t for b, t in zip(times[base], times[name])]
        med = statistics.median(times[name])
        rows.append({"variant": name, "s_per_step": med, "s_min": min(times[name]), "s_max": max(times[name]),
                     "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
                     "tflops": flops / med / 1e12, "warmup_s": t_compile[name]})
    name = torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads"
    result = {"size": size, "batch": batch, "frames": frames, "crop": crop, "device": name, "rows": rows,
            "gflop_per_step": flops / 1e9, "peak_tflops": peak_tflops or (detect_peak(name) if cuda else None),
            "compile": "on" if "compiled" in models else f"off: {why_not}", "rounds": rounds, "steps": steps,
            "precision": "bf16" if cuda else "fp32"}
    print_ab(result)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
    if cuda:  # after the table is out, so a failure here costs only this line
        print_syncs(step, variants, base, dev)
    return result


def _grouped_tokens(batch: dict, groups: int) -> int:
    """Tokens the predictor processes when its rows run in `groups` length groups (`model.length_groups`):
    per mask config, rows sorted by real context + target tokens, each chunk cut to its longest row."""
    total = 0
    for vc, vt in zip(batch["valid_ctx"], batch["valid_tgt"]):
        counts = vc.sum(1) + vt.sum(1)
        total += sum(len(c) * int(c.max()) for c in counts.sort(stable=True).values.chunk(groups))
    return total


def run_pad_ab(size: str, batch: int, frames: int, crop: int, steps: int, warmup: int, rounds: int,
               quickstart: bool, groups: int = 4) -> None:
    """Alternated timings of the step with truncated vs padded (`pad_to_longest`) masks, and padded masks run
    in `groups` length groups (`model.length_groups`); see the docstring."""
    from dataclasses import replace

    from data.collate import MaskCollator
    from vjepa.engine.optim import param_groups
    from vjepa.engine.runtime import make_accelerator
    from vjepa.engine.config import load_config
    from vjepa.models import ModelConfig
    from vjepa.pretrain import PretrainConfig, build_models

    if quickstart:
        from vjepa.quickstart import QuickstartConfig

        root = Path(__file__).resolve().parents[1]
        cfg = load_config(QuickstartConfig, str(root / "configs/quickstart.yaml")).pretrain
    else:
        cfg = PretrainConfig()
        cfg.model = ModelConfig(model_name=size)
        cfg.data.num_frames, cfg.data.crop_size, cfg.data.batch_size = frames, crop, batch
    d = cfg.data
    torch.manual_seed(0)
    accelerator = make_accelerator("bfloat16")  # bf16 autocast on a GPU; the CPU runs fp32
    dev = accelerator.device
    encoder, predictor, target = build_models(cfg)
    encoder, predictor = accelerator.prepare(encoder, predictor)
    target.to(dev)
    optimizer = accelerator.prepare(torch.optim.AdamW(param_groups(encoder, predictor), lr=1e-5))
    n = warmup + rounds * steps
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(d.batch_size, 3, d.num_frames, d.crop_size, d.crop_size, generator=g) for _ in range(n)]
    variants = {}
    for name, pad in (("truncated to the batch minimum", False), ("pad_to_longest", True)):
        collator = MaskCollator([replace(m, pad_to_longest=pad) for m in cfg.mask],
                                accelerator.unwrap_model(encoder).grid, seed=0)
        batches = [collator([{"clip": x, "label": 0, "seed": len(c) * i + j, "step": i} for j, x in enumerate(c)])
                   for i, c in enumerate(clips)]
        real = [sum(int(v.sum()) if pad else v.numel() for key in ("ctx", "tgt")
                    for v in (b[f"valid_{key}"] if pad else b[f"masks_{key}"])) for b in batches]
        processed = [sum(v.numel() for key in ("ctx", "tgt") for v in b[f"masks_{key}"]) for b in batches]
        for b in batches:
            for key in ("masks_ctx", "masks_tgt", "valid_ctx", "valid_tgt"):
                if key in b:
                    b[key] = [v.to(dev) for v in b[key]]
            b["clip"] = b["clip"].to(dev)
        variants[name] = (batches, real, processed, 1)
    if groups > 1:
        batches, real, _, _ = variants["pad_to_longest"]
        variants[f"pad_to_longest, {groups} length groups"] = (batches, real,
                                                               [_grouped_tokens(b, groups) for b in batches], groups)
    models = [accelerator.unwrap_model(m) for m in (encoder, predictor)]

    def step(batch, groups):
        for m in models:
            m.length_groups = groups
        jepa_step(accelerator, optimizer, encoder, predictor, target, batch)

    for batches, _, _, groups_ in variants.values():
        for i in range(warmup):
            step(batches[i], groups_)
    times = {name: [] for name in variants}
    for r in range(rounds):
        for name, (batches, _, _, groups_) in variants.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            for i in range(warmup + r * steps, warmup + (r + 1) * steps):
                t0 = time.perf_counter()
                step(batches[i], groups_)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
    model = cfg.model.model_name
    where = (f"{torch.cuda.get_device_name()}, bf16" if dev.type == "cuda"
             else f"CPU x{torch.get_num_threads()} threads, fp32")
    print(f"\nV-JEPA train step, {model}, batch {d.batch_size}, {d.num_frames}x{d.crop_size}px, patch {d.patch_size}, "
          f"{where}; {rounds} alternated rounds of {steps} steps\n")
    print("| masks | s/step (median, min-max) | real context + target tokens / step | with padding | ms per 1k real "
          "tokens |")
    print("|---|---|---|---|---|")
    per_k = {}
    for name, (batches, real, processed, _) in variants.items():
        t = times[name]
        tokens = statistics.mean(real[warmup:])
        per_k[name] = statistics.median(t) / tokens * 1e6
        print(f"| {name} | {statistics.median(t):.4f} ({min(t):.4f}-{max(t):.4f}) | {tokens:.0f} | "
              f"{statistics.mean(processed[warmup:]):.0f} | {per_k[name]:.3f} |")
    base = per_k["truncated to the batch minimum"]
    for name, cost in list(per_k.items())[1:]:
        print(f"\ncost per real token, {name} / truncated: {cost / base:.2f}x")


def run_fsdp_ab(size: str, batch: int, frames: int, crop: int, steps: int, warmup: int, rounds: int,
                json_path=None) -> None:
    """One rank of `--fsdp-ab`: DDP and FSDP2 copies of the same models, timed in alternated rounds."""
    import copy

    import torch.distributed as dist

    from data.collate import MaskCollator
    from vjepa.engine import fsdp
    from vjepa.engine.optim import param_groups
    from vjepa.engine.runtime import make_accelerator
    from vjepa.models import ModelConfig
    from vjepa.pretrain import PretrainConfig, build_models

    cfg = PretrainConfig()
    cfg.model = ModelConfig(model_name=size)
    cfg.data.num_frames, cfg.data.crop_size, cfg.data.batch_size = frames, crop, batch
    accelerator = make_accelerator("bfloat16")
    dev, cuda = accelerator.device, accelerator.device.type == "cuda"
    torch.manual_seed(0)
    encoder, predictor, target = build_models(cfg)
    copies = [copy.deepcopy(m) for m in (encoder, predictor, target)]
    full = sum(p.numel() for m in (encoder, predictor, target) for p in m.parameters())
    opt = torch.optim.AdamW(param_groups(encoder, predictor), lr=1e-5)
    encoder, predictor, opt = accelerator.prepare(encoder, predictor, opt)
    target.to(dev)
    s_enc, s_pred, s_tgt = copies
    s_enc, s_pred, s_tgt, s_opt = fsdp.prepare(accelerator, s_enc, s_pred, s_tgt,
                                               torch.optim.AdamW(param_groups(s_enc, s_pred), lr=1e-5))
    held = sum(fsdp.local(p).numel() for m in (s_enc, s_pred, s_tgt) for p in m.parameters())
    collator = MaskCollator(cfg.mask, s_enc.grid, seed=0)
    clips = torch.randn(batch, 3, frames, crop, crop)
    data = collator([{"clip": c, "label": 0, "seed": i, "step": 0} for i, c in enumerate(clips)])
    data = {k: (v.to(dev) if torch.is_tensor(v) else [m.to(dev) for m in v] if isinstance(v, list) else v)
            for k, v in data.items()}
    variants = {"DDP (replicated)": (encoder, predictor, target, opt),
                "FSDP2 (sharded, meta.fsdp)": (s_enc, s_pred, s_tgt, s_opt)}

    def step(name):
        enc, pred, tgt, o = variants[name]
        jepa_step(accelerator, o, enc, pred, tgt, data)

    for name in variants:
        for _ in range(warmup):
            step(name)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            if cuda:
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / steps)
    if not accelerator.is_main_process:
        return
    base = times["DDP (replicated)"]
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} thread(s) per process"
    print(f"\nDDP vs FSDP2, {size}, batch {batch} per process x {accelerator.num_processes} processes, "
          f"{frames}x{crop}px, {device}, {'bf16' if cuda else 'fp32'}; {rounds} alternated rounds of {steps} steps\n")
    print("| variant | s/step (median, min-max) | ratio DDP/this (median, min-max) | params held per rank (M) |")
    print("|---|---|---|---|")
    rows = []
    for name, t in times.items():
        r = [b / x for b, x in zip(base, t)]
        n = full if name.startswith("DDP") else held
        rows.append({"variant": name, "s_per_step": statistics.median(t), "s_min": min(t), "s_max": max(t),
                     "ratio": statistics.median(r), "ratio_min": min(r), "ratio_max": max(r), "params_m": n / 1e6})
        print(f"| {name} | {statistics.median(t):.4f} ({min(t):.4f}-{max(t):.4f}) | {statistics.median(r):.3f}x "
              f"({min(r):.3f}-{max(r):.3f}) | {n / 1e6:.2f} |")
    if json_path:
        Path(json_path).write_text(json.dumps({"size": size, "batch": batch, "processes": accelerator.num_processes,
                                               "device": device, "rows": rows}, indent=1))


def print_syncs(step, variants: dict, base: str, dev) -> None:
    """Host synchronisations in one step of today's and of the all-options variant, counted by CUDA's
    sync debug mode (a warning per synchronising call): the deferred step should show none."""
    import warnings

    from vjepa.engine.optim import FiniteWatch

    counts = {}
    for name in (base, "all"):
        model, opt, deferred = variants[name]
        watch = FiniteWatch(dev, 10**9) if deferred else None
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(model, opt, watch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[name] = sum("synchroniz" in str(w.message) for w in caught)
    print("host synchronisations per step (CUDA sync debug mode): "
          + ", ".join(f"{k}: {v}" for k, v in counts.items()), file=sys.stderr, flush=True)


def print_ab(r: dict) -> None:
    print(f"\nV-JEPA train step speed-ups, {r['size']}, batch {r['batch']}, {r['frames']}x{r['crop']}px, "
          f"{r['device']}, {r['precision']}; {r['rounds']} alternated rounds of {r['steps']} steps; compile "
          f"{r['compile']}\n")
    peak = r["peak_tflops"]
    head = "| variant | s/step (median, min-max) | speed-up vs today (median, min-max) | TFLOP/s | MFU | warm-up s |"
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    for x in r["rows"]:
        mfu = f"{x['tflops'] / peak:.1%}" if peak else "n/a"
        print(f"| {x['variant']} | {x['s_per_step']:.4f} ({x['s_min']:.4f}-{x['s_max']:.4f}) | "
              f"{x['speedup']:.3f}x ({x['speedup_min']:.3f}-{x['speedup_max']:.3f}) | {x['tflops']:.3f} | {mfu} | "
              f"{x['warmup_s']:.1f} |")
    print(f"\n{r['gflop_per_step']:.1f} GFLOP/step counted; MFU against "
          + (f"{peak:.0f} TFLOP/s dense peak" if peak else "no known peak (pass --peak-tflops)"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["vit_tiny", "vit_small", "vit_base"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=None, help="card's dense peak for MFU (H100 SXM bf16: 989)")
    p.add_argument("--ab", action="store_true", help="speed-ups as ratios measured in one run (first size only)")
    p.add_argument("--rounds", type=int, default=5, help="--ab: alternated rounds per variant")
    p.add_argument("--no-compile", action="store_true", help="--ab: leave out the compiled variants")
    p.add_argument("--json", default=None, help="--ab / --fsdp-ab: also write the result here")
    p.add_argument("--fsdp-ab", action="store_true", help="DDP vs FSDP2 as a ratio, in --nproc processes (first size)")
    p.add_argument("--nproc", type=int, default=2, help="--fsdp-ab: processes (torchrun)")
    p.add_argument("--pad-ab", action="store_true", help="truncated vs pad_to_longest masks, alternated")
    p.add_argument("--length-groups", type=int, default=4,
                   help="--pad-ab: also time padded masks run in this many length groups (1: leave that row out)")
    p.add_argument("--published", action="store_true",
                   help="--pad-ab: the published recipe at --sizes/--batch/--frames/--crop instead of the quickstart's")
    p.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fsdp_worker:
        run_fsdp_ab(args.sizes[0], args.batch, args.frames, args.crop, args.steps, args.warmup, args.rounds, args.json)
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        return
    if args.fsdp_ab:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "--master_port",
               str(port), __file__, "--fsdp-worker", "--sizes", args.sizes[0], "--batch", str(args.batch), "--frames",
               str(args.frames), "--crop", str(args.crop), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--rounds", str(args.rounds)] + (["--json", args.json] if args.json else [])
        sys.exit(subprocess.run(cmd).returncode)
    if args.pad_ab:
        run_pad_ab(args.sizes[0], args.batch, args.frames, args.crop, args.steps, args.warmup, args.rounds,
                   not args.published, args.length_groups)
        return
    if args.ab:
        run_ab(args.sizes[0], args.batch, args.frames, args.crop, args.steps, args.warmup, args.rounds,
               not args.no_compile, args.peak_tflops, args.json)
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.batch, args.frames, args.crop, args.steps, args.warmup)))
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", size, "--batch", str(args.batch), "--frames", str(args.frames),
               "--crop", str(args.crop), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\nV-JEPA train step, {args.frames}x{args.crop}px clips, both published mask configs, device: {rows[0]['device']}, {rows[0]['precision']}\n")
    peak = args.peak_tflops or (detect_peak(rows[0]["device"]) if "CPU" not in rows[0]["device"] else None)
    head = "| model | params (M) | batch | s/step | clips/s | peak mem (GiB) | GFLOP/step | TFLOP/s |" + (" MFU |" if peak else "")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    for r in rows:
        tflops = r["gflop_per_step"] / r["s_per_step"] / 1e3
        line = (f"| {r['size']} | {r['params_m']:.1f} | {r['batch']} | {r['s_per_step']:.3f} | {r['clips_per_s']:.2f} | "
                f"{r['peak_gib']:.2f} | {r['gflop_per_step']:.0f} | {tflops:.2f} |")
        if peak:
            line += f" {tflops / peak:.1%} |"
        print(line)


if __name__ == "__main__":
    main()
