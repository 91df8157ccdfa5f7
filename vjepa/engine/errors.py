"""The engine's user errors (see data/errors.py for the base class and how they are shown): a missing
checkpoint, raised by `vjepa.engine.checkpoint.load` for every job, and a run folder that already holds a
checkpoint a fresh run would overwrite.

A missing checkpoint says which command writes it: the run folders of the shipped configs are known
(configs/**.yaml `folder` / `logging.folder`), and otherwise the file name tells the job
(`jepa-latest.pt` pretraining, `wm-latest.pt` world model, `hjepa-latest.pt` H-JEPA).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from data.errors import UserError

__all__ = ["MissingCheckpoint", "RunExists", "made_by"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# write_tag prefix of a checkpoint file -> the job that writes it
_JOBS = {"jepa": ("a V-JEPA pretraining run", "configs/pretrain/<name>.yaml (or configs/quickstart.yaml)"),
         "wm": ("a world-model run", "configs/worldmodel/<env>.yaml"),
         "hjepa": ("an H-JEPA run", "configs/hjepa/<name>.yaml")}


def _run_folder(raw: dict) -> Optional[str]:
    folder = raw.get("folder")
    if folder is None and isinstance(raw.get("logging"), dict):
        folder = raw["logging"].get("folder")
    return folder if isinstance(folder, str) else None


def made_by(path: str | Path) -> Optional[str]:
    """The command that writes the checkpoint `path`, or None when nothing tells."""
    path = Path(path)
    if CONFIGS.is_dir():
        for cfg in sorted(CONFIGS.rglob("*.yaml")):
            try:
                raw = yaml.safe_load(cfg.read_text()) or {}
            except yaml.YAMLError:
                continue
            folder = _run_folder(raw) if isinstance(raw, dict) else None
            if folder and Path(folder) == path.parent:
                return f"python train.py --config {cfg.relative_to(CONFIGS.parent)}"
    job = _JOBS.get(path.name.split("-")[0])
    if job is not None:
        return f"{job[0]}: python train.py --config {job[1]}"
    return None


class MissingCheckpoint(UserError, FileNotFoundError):
    """A checkpoint file that does not exist; the message names the command that makes it."""

    def __init__(self, path: str | Path):
        hint = made_by(path)
        super().__init__(f"checkpoint not found: {path}" + (f"; it is written by {hint}" if hint else ""))
        self.path = str(path)


class RunExists(UserError, FileExistsError):
    """A fresh run (or probe) whose folder already holds its checkpoint `path`: it refuses to start over it, so
    a forgotten resume flag never destroys a run. The message names the `resume` flag and the way `instead`."""

    def __init__(self, path: str | Path, resume: str, instead: str = "choose another logging.folder"):
        super().__init__(f"{path} exists; refusing to overwrite it. Resume with {resume} or {instead}.")
        self.path = str(path)
