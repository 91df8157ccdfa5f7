"""User errors of the vjepa / hjepa jobs, in one place (see data/errors.py for the base class and how they
are shown). `MissingCheckpoint` and `made_by` live in the engine (vjepa/engine/errors.py) because the
engine's `checkpoint.load` raises it and the engine imports no job.
"""
from __future__ import annotations

from data.errors import NoUsableVideos, UnsupportedOption, UserError, one_line
from vjepa.engine.errors import MissingCheckpoint, RunExists, made_by

__all__ = ["UserError", "MissingCheckpoint", "RunExists", "NoUsableVideos", "UnsupportedOption", "one_line", "made_by"]
