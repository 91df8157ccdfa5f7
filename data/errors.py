"""Expected user mistakes: exceptions that `train.py` reports as one line, without a traceback.

`UserError` lives here, in the lowest package, so that `data`, `vjepa` and `hjepa` can all raise it at
the place that knows the cause (data never imports vjepa). Anything else that goes wrong is a bug and
keeps its traceback. `python train.py --debug ...` (or JEPA_DEBUG=1) shows the traceback of a
UserError too.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix from the message alone (a missing file, a wrong checkpoint, an option
    this machine cannot run). The message says what is wrong and what to do."""


class MissingDataList(UserError, FileNotFoundError):
    """A dataset path (CSV list, folder or media file) that does not exist."""


class NoUsableVideos(UserError, RuntimeError):
    """Too many files in a row could not give a clip (broken, filtered, or all of a list)."""


class UnsupportedOption(UserError, ValueError):
    """A config value this machine cannot run (a decoder that is not installed, ...)."""


def one_line(e: BaseException) -> str:
    """The message of `e` on one line. An exception re-raised from a DataLoader worker carries the
    worker's traceback in its message; only its last line (the original message) is kept."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = [ln for ln in msg.splitlines() if ln.strip()][-1]
        head, sep, rest = last.partition(": ")
        msg = rest if sep and "." in head and " " not in head else last
    return "; ".join(ln.strip() for ln in msg.splitlines() if ln.strip())
