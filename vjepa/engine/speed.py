"""Step-speed options of the training loop, each with a device-dependent default (None = auto):
fused AdamW, `torch.compile` of the models, and how often the loss's finiteness is read on the host.

Auto means on for CUDA and off on CPU: on CPU the host already runs every kernel, so a deferred check or
a fused optimizer gains little, and the CPU runs (tests, the quickstart) keep today's numerics bit for bit.
"""
from __future__ import annotations

import logging
import shutil
from typing import Optional, Sequence

import torch
import torch.nn as nn

from vjepa.engine.optim import FiniteWatch

logger = logging.getLogger(__name__)


def on_by_default(value: Optional[bool], device: torch.device) -> bool:
    """`value`, or (None) whether `device` is a GPU."""
    return device.type == "cuda" if value is None else bool(value)


def fused_supported(device: torch.device) -> bool:
    """Whether torch has fused optimizer kernels for `device` (CUDA; CPU too since torch 2.4)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def build_adamw(groups: list, device: torch.device, fused: Optional[bool], lr: float, betas: Sequence[float],
                eps: float) -> torch.optim.AdamW:
    """AdamW over `groups` with one fused kernel per step where `fused` (None = on CUDA) and torch supports
    it on `device`; otherwise torch's default (foreach) AdamW, with a log line when fused was asked for.
    The same update either way, up to float rounding (tests/test_speed.py)."""
    want = on_by_default(fused, device)
    if want and not fused_supported(device):
        logger.info("fused AdamW is not available on %s in torch %s; using the foreach AdamW", device.type,
                    torch.__version__)
        want = False
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True if want else None)


def keep_fused_flag(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)` keeping this run's fused/foreach choice: torch takes those flags
    from the checkpoint's param groups, so a checkpoint written by a fused GPU run would otherwise turn
    fusion on in a CPU resume (and the reverse)."""
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for g, f in zip(optimizer.param_groups, flags):
        g.update(f)


def compile_prerequisites(device: torch.device) -> Optional[str]:
    """Why torch.compile's default backend cannot run on `device`, or None when it can."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "triton is not installed"
    if device.type == "cpu":
        return None if (shutil.which("g++") or shutil.which("c++")) else "no C++ compiler on PATH"
    return f"not tried on {device.type}"


def compile_modules(modules: Sequence[nn.Module], names: Sequence[str], device: torch.device,
                    enabled: Optional[bool]) -> bool:
    """`torch.compile` each module in place (`nn.Module.compile`: state-dict keys are unchanged, so
    checkpoints are the same as eager ones) when `enabled` (None = on CUDA). Compilation happens at the
    first call; a graph that fails to compile runs eagerly (dynamo's `suppress_errors`) with a warning.
    Returns whether the modules were compiled; logs one line either way it was asked for."""
    if not on_by_default(enabled, device):
        return False
    why = compile_prerequisites(device)
    if why is not None:
        logger.warning("torch.compile unavailable (%s): running %s eagerly", why, ", ".join(names))
        return False
    import torch._dynamo

    # A model that fails to compile must still train: dynamo falls back to eager per graph, with a warning.
    torch._dynamo.config.suppress_errors = True
    for m in modules:
        m.compile()
    logger.info("torch.compile: %s (compiled at the first step; failures fall back to eager)", ", ".join(names))
    return True


def make_finite_watch(every: Optional[int], log_every: int, device: torch.device) -> Optional[FiniteWatch]:
    """None (check every step, before the update) when `every` is 1, or None on CPU; else a `FiniteWatch`
    checked every `every` steps (None on a GPU: `log_every`, the steps that read the loss anyway)."""
    if every is None:
        every = log_every if device.type == "cuda" else 1
    if every < 1:
        raise ValueError(f"optimization.check_finite_every must be >= 1 (or null = auto), got {every}")
    return None if every == 1 else FiniteWatch(device, every)
