"""Run quickstart variants side by side and print one table of their probe scores.

    python benchmarks/quickstart_sweep.py VARIANTS.txt --out runs/sweep --parallel 2

VARIANTS.txt holds one variant per line: a name, then `key=value` overrides of configs/quickstart.yaml
(`#` starts a comment). Each variant is one `python train.py` in its own subprocess and run folder
(`OUT/<name>`), `--parallel` at a time; a variant that fails is reported, not fatal. The table (one row
per variant and arm: top-1, top-5, pretraining and total seconds) is printed and written to
`OUT/sweep.json`. What the sweeps in `benchmarks/sweeps/` found is in `benchmarks/sweeps/RESULTS.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_variants(path: str) -> list[tuple[str, list[str]]]:
    variants = []
    for line in Path(path).read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words:
            bad = [w for w in words[1:] if "=" not in w]
            if bad:
                raise SystemExit(f"{path}: variant {words[0]!r}: not key=value: {bad}")
            variants.append((words[0], words[1:]))
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: variant names repeat: {names}")
    return variants


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants")
    p.add_argument("--out", required=True)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per variant")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pending, running, results = read_variants(a.variants), [], {}
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    while pending or running:
        while pending and len(running) < a.parallel:
            name, overrides = pending.pop(0)
            cmd = [sys.executable, str(ROOT / "train.py"), f"folder={out / name}", *overrides]
            log = open(out / f"{name}.log", "w")
            running.append((name, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env),
                            log, time.time()))
        time.sleep(1)
        for item in list(running):
            name, proc, log, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            summary = out / name / "comparison.json"
            if proc.returncode == 0 and summary.exists():
                results[name] = json.loads(summary.read_text())
            else:
                results[name] = {"error": f"exit {proc.returncode}, see {out / f'{name}.log'}"}
            (out / "sweep.json").write_text(json.dumps(results, indent=2))  # as it goes: a killed sweep keeps its rows
            print(f"[{time.time() - t0:6.0f}s] {name}: done in {time.time() - start:.0f}s", flush=True)
    print(f"\n{'variant':24s} {'arm':14s} {'top-1':>6s} {'top-5':>6s} {'pretrain s':>10s} {'total s':>8s}")
    for name, res in results.items():
        if "error" in res:
            print(f"{name:24s} {res['error']}")
            continue
        for r in res["rows"]:
            print(f"{name:24s} {r['arm']:14s} {r['top1']:6.1f} {r['top5']:6.1f} {res['pretrain_seconds']:10.0f} "
                  f"{res['total_seconds']:8.0f}")
        if res.get("monitor"):  # pretraining's quality monitor: k-NN / ridge readout, step 0 = random init
            trace = "  ".join(f"{m['step']}: {m['knn_top1']:.1f}/{m['linear_top1']:.1f}" for m in res["monitor"])
            print(f"{name:24s} monitor k-NN/linear  {trace}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
