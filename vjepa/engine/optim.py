"""The optimizer step every job runs, its parameter groups and the EMA update.

`optimizer_step` is one micro-batch: forward through a job's objective, the cross-rank finiteness check
*before* any gradient exists (every rank sees the same reduced loss, so every rank stops together and
the weights are untouched), backward, and on the last micro-batch of an accumulation window clipping
and the update. It returns tensors, not Python numbers: the caller converts what it logs, so a step that
logs nothing need not wait for the device beyond the finiteness check.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

Objective = Callable[[], Tuple[torch.Tensor, Dict[str, object]]]
Params = Union[nn.Module, Iterable[nn.Parameter]]


class NonFiniteLoss(RuntimeError):
    pass


def param_groups(*modules: nn.Module) -> list:
    """Weight decay on matrices only; biases and norm parameters (1-D) are exempt, as the reference.
    Only parameters that require grad; the exempt group is marked `wd_exclude` for `set_lr_wd`."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "wd_exclude": True}]


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, parameter by parameter."""
    t = list(target.parameters())
    o = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t, m)
    torch._foreach_add_(t, o, alpha=1.0 - m)


def check_finite(accelerator, loss: torch.Tensor, step: int, across_ranks: bool = True) -> torch.Tensor:
    """The loss averaged over ranks (detached); raises `NonFiniteLoss` on every rank when it is not finite
    (one rank's NaN makes the mean NaN everywhere, so no rank is left waiting in a collective).
    `across_ranks=False`: this process's loss only, no collective (for work that every rank repeats
    identically, or that only one rank runs)."""
    mean_loss = accelerator.reduce(loss.detach(), reduction="mean") if across_ranks else loss.detach()
    if not torch.isfinite(mean_loss):
        raise NonFiniteLoss(f"loss became {mean_loss.item()} at step {step}; stopping before the update. "
                            "The last checkpoint is untouched.")
    return mean_loss


class FiniteWatch:
    """The finiteness check without a host sync per step: `record` notes, on the device, the first step
    whose (cross-rank mean) loss is not finite; `check` reads that note (one sync) and raises
    `NonFiniteLoss` naming the step. The recorded loss is the mean over ranks, so every rank holds the
    same note and `check` stops every rank at the same step with no collective of its own.

    Between checks a non-finite loss reaches the weights in memory (they are updated with NaN gradients);
    callers therefore check before every checkpoint save (`save_checkpoint(..., watch=)`), so a saved
    checkpoint never comes from a step after a non-finite loss, and before anything reads the loss or
    the features (logging), so monitors never see a NaN.

    Args:
        device: where the note lives (the loss's device).
        every: the caller's checking period in steps (`due`), >= 1.
    """

    def __init__(self, device: torch.device, every: int):
        if every < 1:
            raise ValueError(f"the finiteness check period must be >= 1, got {every}")
        self.every = every
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # step of the first bad loss
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)
        self.checked_to = None  # the last step a check covered

    @torch.no_grad()
    def record(self, mean_loss: torch.Tensor, step: int) -> None:
        new = ~torch.isfinite(mean_loss) & (self.first_bad < 0)  # 0-d bool, stays on the device
        self.bad_value = torch.where(new, mean_loss.float(), self.bad_value)
        self.first_bad = torch.where(new, torch.full_like(self.first_bad, step), self.first_bad)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def check(self, step: int) -> None:
        """Raise `NonFiniteLoss` if a loss recorded up to `step` was not finite (reads the note: one sync)."""
        first = int(self.first_bad)
        if first >= 0:
            prev = "none before" if self.checked_to is None else f"the previous one passed at step {self.checked_to}"
            raise NonFiniteLoss(
                f"loss became {float(self.bad_value)} at step {first}, found by the deferred check at step {step} "
                f"({prev}; checks run every {self.every} steps, on logging steps and before every save). The weights in memory are "
                "corrupted from that step on; the last checkpoint is untouched.")
        self.checked_to = step


def _params(p: Params) -> Iterable[nn.Parameter]:
    return p.parameters() if isinstance(p, nn.Module) else p


def optimizer_step(accelerator, optimizer, objective: Objective, modules: Sequence[nn.Module], step: int,
                   clip_grad: Optional[float] = None, clip: Optional[Mapping[str, Params]] = None,
                   across_ranks: bool = True, sync_grads: Optional[Callable[[], None]] = None,
                   watch: Optional["FiniteWatch"] = None) -> Dict[str, object]:
    """One micro-batch of `objective` (a callable returning `(loss, aux)`; `aux` holds extra loss terms
    and tensors the job monitors) -> `aux` plus `loss` (the cross-rank mean, a 0-d tensor) and, on update
    steps with clipping, `grad_norm_<name>` per entry of `clip` (each clipped to `clip_grad` on its own).

    `modules`: the prepared modules whose gradients accumulate (`accelerator.accumulate`).
    `across_ranks`: see `check_finite`.
    `sync_grads`: called on update steps after backward and before clipping, for modules no wrapper keeps
    in sync (the probe job averages its probes' gradients across ranks here).
    `watch`: defer the finiteness check (`FiniteWatch`): the loss is recorded on the device and the step
    goes on without waiting for it; the caller runs `watch.check` on logging steps and before every save.
    """
    with accelerator.accumulate(*modules):
        with accelerator.autocast():
            loss, aux = objective()
        if watch is None:
            mean_loss = check_finite(accelerator, loss, step, across_ranks)
        else:
            mean_loss = accelerator.reduce(loss.detach(), reduction="mean") if across_ranks else loss.detach()
            watch.record(mean_loss, step)
        accelerator.backward(loss)
        out = dict(aux)
        out["loss"] = mean_loss
        if accelerator.sync_gradients and sync_grads is not None:
            sync_grads()
        if accelerator.sync_gradients and clip_grad:
            for name, params in (clip or {}).items():
                norm = accelerator.clip_grad_norm_(_params(params), clip_grad)
                out[f"grad_norm_{name}" if name else "grad_norm"] = norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return out


def scalars(out: Mapping[str, object]) -> Dict[str, float]:
    """The scalar entries of a step's output as floats (tensors of one element, ints and floats)."""
    res = {}
    for k, v in out.items():
        if torch.is_tensor(v) and v.numel() == 1:
            res[k] = float(v.detach())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            res[k] = float(v)
    return res
