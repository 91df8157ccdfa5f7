"""Checkpoint I/O: atomic saves, safe loads, strict state-dict matching, and the one save every job uses
(`save_checkpoint`: refuses non-finite weights and weights that differ across ranks).

A save writes a temp file in the same folder, flushes it to disk, then renames it over the target, so a
run killed mid-save leaves the previous checkpoint intact. Loads use `weights_only=True`: checkpoints
hold tensors and plain Python values only (RNG states are converted accordingly).
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from data.errors import UserError
from vjepa.engine.errors import MissingCheckpoint
from vjepa.engine.fsdp import local
from vjepa.engine.optim import FiniteWatch, NonFiniteLoss

logger = logging.getLogger(__name__)


class CheckpointMismatch(UserError, RuntimeError):
    """A checkpoint that is not the model's (wrong keys or shapes): a user error, shown as one line."""


@contextmanager
def deferred_sigint():
    """Hold Ctrl-C (SIGINT) back until the block ends, then raise it: a save is never cut in half. Interrupted
    inside `torch.save`, the zip writer's own cleanup raised a RuntimeError that hid the KeyboardInterrupt.
    Signal handlers belong to the main thread; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt("interrupted during a checkpoint save, after it completed")


def save_atomic(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with deferred_sigint():
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed save (disk full, ...) leaves no half file behind
            raise


class UnreadableCheckpoint(UserError, RuntimeError):
    """A checkpoint file torch cannot read (truncated, empty, not a `torch.save` file, or pickling objects
    other than tensors and plain values): a user error, shown as one line."""


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        raise UnreadableCheckpoint(f"{path} is not a readable checkpoint ({path.stat().st_size} bytes): "
                                   f"{_load_failure(e)}") from e


def _load_failure(e: BaseException) -> str:
    """The reason in torch.load's exception, without its advice to load untrusted pickles."""
    msg = str(e)
    if "WeightsUnpickler error:" in msg:  # weights_only refused the file: keep the refusal's own sentence
        reason = " ".join(msg.split("WeightsUnpickler error:", 1)[1].split()).split(" Please use")[0]
        reason = reason.split(" Check the documentation")[0]
        return f"not tensors and plain values only ({reason}); checkpoints are loaded with weights_only=True"
    first = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}{': ' + first[:200] if first else ''} (truncated, or not a torch.save file?)"


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """Load `state` into `module` only if keys and shapes match exactly; otherwise raise naming the
    missing, unexpected and mis-shaped keys (torch's strict mode copies the matching tensors first)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        def show(xs):
            return ", ".join(xs[:8]) + (f" ... ({len(xs)} in all)" if len(xs) > 8 else "") if xs else "none"
        raise CheckpointMismatch(
            f"{what}: checkpoint does not match the model; nothing was loaded.\n"
            f"  missing keys: {show(missing)}\n  unexpected keys: {show(unexpected)}\n  shape mismatches: {show(shapes)}"
        )
    module.load_state_dict(state, strict=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(x):
    return [_to_plain(v) for v in x] if isinstance(x, tuple) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def checksum(modules: Sequence[nn.Module]) -> torch.Tensor:
    """(sum, sum of |.|) over every parameter of `modules` (this rank's shard of a sharded one), in float64: `[2]`."""
    return _sums([local(p) for m in modules for p in m.parameters()])


def _sums(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(2, dtype=torch.float64)
    return torch.stack([sum(p.double().sum() for p in tensors), sum(p.double().abs().sum() for p in tensors)])


def save_checkpoint(accelerator, path: str | Path, state: dict, *, step: int, finite: Sequence[nn.Module],
                    replicated: Sequence[nn.Module], across_ranks: bool = True,
                    watch: Optional[FiniteWatch] = None, sharded: Optional[Mapping[str, nn.Module]] = None) -> None:
    """Write `state` (plus the RNG state and every rank's checksum of `replicated`) atomically from the
    main process, after two checks made on every rank, so every rank stops together:

    - the parameters of `finite` are finite (a finite loss can still come with weights an update just
      broke: those must never replace a good file);
    - every rank holds the same `replicated` modules (the EMA targets, which no wrapper keeps in sync):
      their checksums are gathered, stored as `target_checksums` `[ranks, 2]`, and must agree;
    - `sharded` (FSDP: state key -> module whose parameters are split across ranks, so their shards
      differ by design): every rank's shard checksum is gathered and stored under `shard_checksums`
      (`{key: [ranks, 2]}`), and their sum over ranks must equal the checksum of the full tensors that
      `state[key]` holds (gathered on the main process, vjepa/engine/fsdp.py): the file holds exactly
      what the ranks hold, with no shard lost, duplicated or stale.

    `watch`: a deferred finiteness check (`FiniteWatch`), run first: a non-finite loss recorded since the
    last check stops the save (and the run) even when the weights it produced happen to be finite.
    `across_ranks=False`: no collective; this process checks its own weights and writes if it is the main
    one (for work that only the main process runs, or that every rank repeats identically).
    """
    if watch is not None:
        watch.check(step)
    bad = torch.tensor([float(not all(torch.isfinite(local(p)).all() for m in finite for p in m.parameters()))],
                       device=accelerator.device)
    if (accelerator.reduce(bad, reduction="sum") if across_ranks else bad).item() > 0:
        raise NonFiniteLoss(f"weights are not finite at step {step}; not saving over {path}")
    sums = checksum(replicated).to(accelerator.device).unsqueeze(0)
    if not across_ranks:
        if accelerator.is_main_process:
            save_atomic({"target_checksums": sums.cpu(), **state, "rng": rng_state()}, path)
        return
    sums = accelerator.gather(sums).cpu()  # [ranks, 2]
    if not torch.allclose(sums, sums[:1].expand_as(sums), rtol=1e-9, atol=0):
        raise RuntimeError(f"replicated weights (EMA targets) differ across ranks at step {step}: checksums "
                           f"{sums.tolist()}")
    if sharded:
        state = {**state, "shard_checksums": _check_shards(accelerator, state, sharded, step)}
    accelerator.wait_for_everyone()
    state = {**({"target_checksums": sums} if replicated else {}), **state, "rng": rng_state()}
    if accelerator.is_main_process:
        save_atomic(state, path)
    accelerator.wait_for_everyone()


def _check_shards(accelerator, state: dict, sharded: Mapping[str, nn.Module], step: int) -> dict:
    """Every rank's shard checksums of `sharded` `{key: [ranks, 2]}`, after checking on the main process
    that they add up to the checksum of the full tensors in `state[key]`; raises on every rank if not."""
    own = torch.stack([checksum([m]) for m in sharded.values()]).to(accelerator.device)  # [M, 2]
    sums = accelerator.gather(own.unsqueeze(0)).cpu()  # [ranks, M, 2]
    wrong = []
    if accelerator.is_main_process:
        for i, (key, module) in enumerate(sharded.items()):
            full = _sums([state[key][n] for n, _ in module.named_parameters()])
            # the same float32 values summed in another order: equal up to float64 rounding
            if not torch.allclose(sums[:, i].sum(0), full, rtol=1e-9, atol=1e-12 * float(full[1])):
                wrong.append(f"{key}: shards {sums[:, i].sum(0).tolist()} vs file {full.tolist()}")
    flag = torch.tensor([float(len(wrong))], device=accelerator.device)
    if accelerator.reduce(flag, reduction="sum").item() > 0:
        raise RuntimeError(f"sharded weights do not add up to the full weights being saved at step {step}: "
                           + ("; ".join(wrong) or "see the main process's error"))
    return {key: sums[:, i] for i, key in enumerate(sharded)}

