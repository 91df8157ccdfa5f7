"""The training jobs as the engine tests see them: a tiny config each, where it writes, what to compare;
and a driver for one multi-process launch (process start-up dominates these tiny runs):
`torchrun --nproc_per_node 2 tests/engine_jobs.py OUT` runs every job into OUT/<job>/two, then again into
OUT/<job>/nan with the loss made NaN on rank 1 only at its `nan_call`-th objective call, printing
"<job>: rank <r> stopped: ..." from each rank that stops."""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@dataclass
class Job:
    config: Path
    module: str  # where `objective` and `save_checkpoint` are looked up
    checkpoint: str
    weights: Tuple[str, ...]  # checkpoint entries holding model weights
    curves: Tuple[Tuple[str, str], ...]  # (metrics file, loss column)
    batch: Callable[[int], List[str]]  # overrides for a per-process batch of b
    stop_at: str  # a `meta.max_steps` inside the run
    nan_call: int  # objective call made NaN on rank 1 ...
    good_step: object  # ... and the `step(s)` of the last checkpoint before it
    loop: str = ""  # where `save_checkpoint` is looked up when not in `module` (a mode of another job's loop)


JOBS = {
    "pretrain": Job(TESTS / "tiny_pretrain.yaml", "vjepa.pretrain", "jepa-latest.pt",
                    ("encoder", "predictor", "target_encoder"), (("metrics.csv", "loss"),),
                    lambda b: [f"data.batch_size={b}"], "meta.max_steps=2", 5, 3),
    "ijepa": Job(TESTS / "tiny_ijepa.yaml", "vjepa.ijepa", "jepa-latest.pt",
                 ("encoder", "predictor", "target_encoder"), (("metrics.csv", "loss"),),
                 lambda b: [f"data.batch_size={b}"], "meta.max_steps=2", 5, 3, loop="vjepa.pretrain"),
    "hjepa": Job(TESTS / "tiny_hjepa.yaml", "hjepa.train", "hjepa-latest.pt", ("model",), (("metrics.csv", "loss"),),
                 lambda b: [f"batch_size={b}"], "meta.max_steps=2", 5, 3),
    "worldmodel": Job(TESTS / "tiny_worldmodel.yaml", "hjepa.world_model.train", "wm-latest.pt", ("model",),
                      (("metrics.csv", "l0/loss"), ("level1/metrics.csv", "l1/loss"),
                       ("distance/metrics.csv", "distance/loss"), ("refine/metrics.csv", "refine/loss"),
                       ("on_policy/metrics.csv", "on_policy/loss")),
                      lambda b: [f"stage.batch_size={b}", f"levels.0.stage.batch_size={b}", f"distance.batch_size={b}",
                                 f"refine.batch_size={b}"], "meta.max_steps=3", 4, [2, 0, 0, 0, 0]),
}


def losses(run_dir: Path, job: Job) -> List[float]:
    import csv

    out = []
    for name, col in job.curves:
        with open(run_dir / name) as f:
            out += [float(r[col]) for r in csv.DictReader(f)]
    return out


def _poison(module_name: str, call: int) -> Callable[[], None]:
    """Make the job's objective NaN on rank 1 at its `call`-th call; returns the undo."""
    module = importlib.import_module(module_name)
    real, calls = module.objective, [0]

    def poisoned(*args, **kwargs):
        loss, aux = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call and os.environ.get("RANK", "0") == "1":
            loss = loss * float("nan")
        return loss, aux

    module.objective = poisoned
    return lambda: setattr(module, "objective", real)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from train import main
    from vjepa.engine.optim import NonFiniteLoss

    out, rank = Path(sys.argv[1]), os.environ.get("RANK", "0")
    for name, job in JOBS.items():
        args = ["--config", str(job.config), *job.batch(2)]
        main([*args, f"logging.folder={out / name / 'two'}"])
        undo = _poison(job.module, job.nan_call)
        try:
            main([*args, f"logging.folder={out / name / 'nan'}"])
        except NonFiniteLoss as e:
            print(f"{name}: rank {rank} stopped: {e}", flush=True)
        finally:
            undo()
    # Pretraining with the deferred finiteness check (vjepa/engine/speed.py): NaN in step 4 on rank 1,
    # checks every 4 steps, checkpoints every 3; both ranks must stop at the save after step 6.
    undo = _poison("vjepa.pretrain", 5)
    try:
        main(["--config", str(JOBS["pretrain"].config), *JOBS["pretrain"].batch(2), "optimization.epochs=3",
              "optimization.check_finite_every=4", "logging.log_every=4", f"logging.folder={out / 'pretrain' / 'nan_deferred'}"])
    except NonFiniteLoss as e:
        print(f"pretrain-deferred: rank {rank} stopped: {e}", flush=True)
    finally:
        undo()
    # Ranks leave together and close the group: rank 0 hosts the store, and a rank still tearing down
    # gloo when it goes can abort ("terminate called without an active exception", exit -6).
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
