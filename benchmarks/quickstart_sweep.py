"""Run quickstart variants side by side and print one table of their probe scores.

    python benchmarks/quickstart_sweep.py VARIANTS.txt --out runs/sweep --parallel 2
    python benchmarks/quickstart_sweep.py --table runs/sweep/sweep.json     # its table again
    python benchmarks/quickstart_sweep.py VARIANTS.txt --out runs/sweep --reprobe 60   # + every run probed at 60 epochs
    python benchmarks/quickstart_sweep.py VARIANTS.txt --out runs/sweep --only a,b    # two of the file's variants

VARIANTS.txt holds one variant per line: a name, then `key=value` overrides of configs/quickstart.yaml
(`#` starts a comment). Each variant is one `python train.py` in its own subprocess and run folder
(`OUT/<name>`), `--parallel` at a time; a variant that fails is reported, not fatal. The table (one row
per variant and arm: attentive top-1 and top-5, linear, k-NN and 16-shot top-1, pretraining and total seconds)
is printed; every run's `comparison.json` is gathered in `OUT/sweep.json`. With `--reprobe E`, each run that
succeeds is then probed again with E-epoch probes, from a copy of its checkpoint in `OUT/<name>@<E>ep` (no
pretraining; the same overrides and arms): its rows appear as variant `<name>@<E>ep`. What the sweeps in
`benchmarks/sweeps/` found is in `benchmarks/sweeps/RESULTS.md`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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
    if any("@" in n for n in names):
        raise SystemExit(f"{path}: '@' is kept for re-probed runs (NAME@Eep): {names}")
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: variant names repeat: {names}")
    return variants


def _pct(x) -> str:
    """A readout the run may not have made (an older run, `low_shot: 0`) prints as `-`."""
    return "-" if x is None else f"{x:.1f}"


def table(results: dict) -> str:
    """One line per variant and arm of `sweep.json`'s {variant: comparison.json or {"error": ...}}, then the
    variant's monitor trace (pretraining's k-NN / ridge readout, step 0 = random init) where it has one."""
    lines = [f"{'variant':24s} {'arm':14s} {'top-1':>6s} {'top-5':>6s} {'linear':>6s} {'k-NN':>6s} {'16-shot':>7s} "
             f"{'pretrain s':>10s} {'total s':>8s}"]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"{name:24s} {res['error']}")
            continue
        for r in res["rows"]:
            lines.append(f"{name:24s} {r['arm']:14s} {r['top1']:6.1f} {r['top5']:6.1f} "
                         f"{_pct(r.get('linear_top1')):>6s} {_pct(r.get('knn_top1')):>6s} "
                         f"{_pct(r.get('low_shot_top1')):>7s} {res['pretrain_seconds']:10.0f} {res['total_seconds']:8.0f}")
        if res.get("monitor"):
            trace = "  ".join(f"{m['step']}: {m['knn_top1']:.1f}/{m['linear_top1']:.1f}" for m in res["monitor"])
            lines.append(f"{name:24s} monitor k-NN/linear  {trace}")
    return "\n".join(lines)


REPROBE_FILES = ("jepa-latest.pt", "config.yaml", "quickstart.yaml", "metrics.csv")


def reprobe_job(out: Path, name: str, overrides: list[str], epochs: int) -> tuple[str, list[str]]:
    """A copy of run `name`'s checkpoint (not its comparison.json: the new rows replace nothing) and the
    overrides that probe it again with `epochs`-epoch probes without pretraining any further."""
    new = f"{name}@{epochs}ep"
    (out / new).mkdir(exist_ok=True)
    for f in REPROBE_FILES:
        if (out / name / f).exists():
            shutil.copy2(out / name / f, out / new / f)
    return new, [*overrides, "pretrain.meta.load_checkpoint=true", f"probe.optimization.num_epochs={epochs}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="?")
    p.add_argument("--out")
    p.add_argument("--table", metavar="SWEEP_JSON", help="print the table of an earlier (or killed) sweep and exit")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per variant")
    p.add_argument("--reprobe", type=int, metavar="EPOCHS", help="probe every run again with EPOCHS-epoch probes")
    p.add_argument("--only", metavar="NAMES", help="comma-separated variant names: run these of the file, in its order")
    a = p.parse_args(argv)
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return 0
    if not (a.variants and a.out):
        p.error("VARIANTS and --out are needed to run a sweep")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pending, running, results = read_variants(a.variants), [], {}
    if a.only:
        only = a.only.split(",")
        unknown = sorted(set(only) - {n for n, _ in pending})
        if unknown:
            p.error(f"--only: no variant {unknown} in {a.variants}")
        pending = [(n, o) for n, o in pending if n in only]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    while pending or running:
        while pending and len(running) < a.parallel:
            name, overrides = pending.pop(0)
            cmd = [sys.executable, str(ROOT / "train.py"), f"folder={out / name}", *overrides]
            log = open(out / f"{name}.log", "w")
            running.append((name, overrides, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                              env=env), log, time.time()))
        time.sleep(1)
        for item in list(running):
            name, overrides, proc, log, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            summary = out / name / "comparison.json"
            if proc.returncode == 0 and summary.exists():
                results[name] = json.loads(summary.read_text())
                if a.reprobe and "@" not in name:  # next in line, before the variants not yet started
                    pending.insert(0, reprobe_job(out, name, overrides, a.reprobe))
            else:
                results[name] = {"error": f"exit {proc.returncode}, see {out / f'{name}.log'}"}
            (out / "sweep.json").write_text(json.dumps(results, indent=2))  # as it goes: a killed sweep keeps its rows
            print(f"[{time.time() - t0:6.0f}s] {name}: done in {time.time() - start:.0f}s", flush=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
