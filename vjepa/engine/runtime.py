"""Run plumbing shared by every job: the Accelerator, the run folder and the metric log."""
from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from data.errors import UserError
from vjepa.engine.errors import RunExists

logger = logging.getLogger(__name__)


def make_accelerator(dtype: str = "bfloat16", grad_accum: int = 1) -> Accelerator:
    """One Accelerator for CPU, one GPU or many: bf16/fp16 autocast only on GPU, fp32 on CPU.

    With no GPU the Accelerator is built with `cpu=True`, so a multi-process launch (torchrun, or
    `accelerate launch --multi_gpu`) runs on CPU over gloo.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        # `accelerate launch --use_fsdp` would route prepare() through accelerate's FSDP plugin, which takes one
        # model; the jobs shard their models themselves (vjepa/engine/fsdp.py)
        raise UserError("launch without `--use_fsdp`: set meta.fsdp=true in the pretraining config to shard "
                        "(see README, FSDP)")
    cuda = torch.cuda.is_available()
    precisions = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "float32": "no", "fp32": "no"}
    if dtype not in precisions:
        raise ValueError(f"meta.dtype {dtype!r} unknown; valid: {sorted(precisions)}")
    return Accelerator(cpu=not cuda, mixed_precision=precisions[dtype] if cuda else "no",
                       gradient_accumulation_steps=grad_accum)


def resolve_run_dir(folder: Optional[str], task: str, accelerator: Accelerator) -> Path:
    """The run folder: `folder` when given, else `runs/<task>-<time>` chosen on rank 0 for all ranks.
    A given folder needs no collective, so work that only the main process runs (the quickstart's
    probes) can call this too."""
    if folder is not None:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path
    name = [f"runs/{task}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if accelerator.num_processes > 1:
        broadcast_object_list(name)
    path = Path(name[0])
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return path


def checkpoint_paths(run_dir: Path, write_tag: str, load_checkpoint: bool,
                     read_checkpoint: Optional[str]) -> Tuple[Path, Optional[Path]]:
    """(the run's latest checkpoint, the file to resume from or None). A fresh run refuses to start over
    an existing checkpoint, so a forgotten `load_checkpoint` never destroys a run."""
    latest = run_dir / f"{write_tag}-latest.pt"
    resume_from = Path(read_checkpoint) if read_checkpoint else (latest if load_checkpoint else None)
    if resume_from is None and latest.exists():
        raise RunExists(latest, "meta.load_checkpoint=true")
    return latest, resume_from


class MetricLog:
    """Appends scalar metrics to `metrics.csv` and TensorBoard (main process only). A metric that first
    appears later (a periodic evaluation) widens the header; a resumed run appends to the same file."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.fields: Optional[list] = None
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
        if enabled and self.path.exists():
            with open(self.path) as f:
                header = f.readline().strip()
            self.fields = header.split(",") if header else None

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        elif any(k not in self.fields for k in row):
            with open(self.path) as f:
                old = list(csv.DictReader(f))
            self.fields += [k for k in row if k not in self.fields]
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields, restval="")
                w.writeheader()
                w.writerows(old)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (logged after the checkpoint a resumed run restarts from)."""
        if not (self.enabled and self.path.exists()):
            return
        with open(self.path) as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def setup_logging(main_process: bool) -> None:
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
