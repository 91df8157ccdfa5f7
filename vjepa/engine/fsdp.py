"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`) for pretraining the large sizes.

`prepare` shards encoder, predictor and the EMA target over all ranks: each transformer block is one
FSDP unit (its parameters are all-gathered just before it runs and freed after), the rest of each model
(patch embedding, final norm, mask tokens) is the root unit. Every parameter becomes a DTensor sharded on
dim 0 (`Shard(0)`, torch.chunk's split), so the EMA target, sharded with the same units on the same mesh,
holds on each rank exactly the slice of each tensor the encoder holds there: the EMA update
(`vjepa.engine.optim.ema_update`, elementwise `_foreach` ops) runs on the local shards with no
communication. AdamW's moments are sharded like their parameters.

Checkpoints hold FULL state dicts, gathered tensor by tensor onto rank 0 (CPU) by `full_state_dict` and
`full_optimizer_state`, in exactly the layout a 1-process or DDP run writes (model keys unchanged; the
optimizer state keyed by parameter index), so an FSDP checkpoint resumes a DDP or 1-process run, loads in
`vjepa.load_encoder`, and the reverse. Resuming an FSDP run loads the full tensors into the unsharded
models and optimizer first; `prepare` then keeps each rank's slice (no communication).

Why not `Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))`: accelerate 1.15 wraps
exactly one model per `prepare` call with FSDP2 (the loop has encoder + predictor under one optimizer,
and the EMA target must be sharded like the encoder), and it turns FSDP on only for GPU-type launches
(`DistributedType.MULTI_CPU` ignores the plugin), so no CPU test could reach it. This module calls the
same torch primitive the plugin calls (`fully_shard`), and the loop keeps Accelerate for everything else:
autocast, `accumulate`, `backward`, `clip_grad_norm_` (DTensor-aware), `reduce` and `gather`.

Mixed precision stays the Accelerator's autocast (fp32 parameters, all-gathered in fp32), as in the DDP
path, so both paths compute the same numbers; `MixedPrecisionPolicy(param_dtype=bf16)` would halve the
all-gather bytes at the price of a numerics change, and is left out.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor, distribute_tensor

from data.errors import UserError

logger = logging.getLogger(__name__)


class FSDPError(UserError, RuntimeError):
    """A sharded run that cannot start as configured (no distributed launch, fp16, models that do not
    shard alike): shown as one line."""


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    if not (dist.is_available() and dist.is_initialized()):
        raise FSDPError("meta.fsdp needs a distributed launch, even for one process: `torchrun --nproc_per_node N "
                        "train.py ...` or `accelerate launch --num_processes N train.py ...`")
    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_module(module: nn.Module, mesh) -> nn.Module:
    """`fully_shard` each element of `module`'s ModuleLists (the transformer blocks: `blocks`,
    `predictor_blocks`), then `module` itself (the root unit: everything else). In place; returns it."""
    from torch.distributed.fsdp import fully_shard

    for child in module.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                fully_shard(block, mesh=mesh)
    # The root's parameters are freed after forward too, so between steps every parameter is a shard
    # (the EMA update and checkpoints read the shards, never a stale unsharded copy).
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return module


def check_same_sharding(target: nn.Module, online: nn.Module) -> None:
    """Raise unless `target` and `online` hold the same parameters (names, shapes) sharded alike (same
    placements, same local shard shapes): the EMA update pairs the local shards elementwise."""
    t, o = dict(target.named_parameters()), dict(online.named_parameters())
    if list(t) != list(o):
        raise FSDPError(f"EMA target and encoder have different parameters: {sorted(set(t) ^ set(o))[:8]}")
    bad = [k for k in t if isinstance(t[k], DTensor) != isinstance(o[k], DTensor) or
           (isinstance(t[k], DTensor) and (t[k].placements != o[k].placements or t[k].shape != o[k].shape or
                                           local(t[k]).shape != local(o[k]).shape))]
    if bad:
        raise FSDPError(f"EMA target and encoder are sharded differently at {bad[:8]}; the EMA update needs the "
                        "same sharding")


def _shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor shaped like `param` -> this rank's shard of it, placed like `param` (no communication:
    every rank holds the same full tensor, read from the same checkpoint or built from the same seed)."""
    if not isinstance(param, DTensor) or value.shape != param.shape:
        return value  # Adam's `step` counter, or a parameter FSDP did not shard
    return distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                             src_data_rank=None)


def prepare(accelerator, encoder: nn.Module, predictor: nn.Module, target: nn.Module,
            optimizer: torch.optim.Optimizer) -> Tuple[nn.Module, nn.Module, nn.Module, torch.optim.Optimizer]:
    """Shard `encoder`, `predictor` and the EMA `target` over every rank (see the module docstring) and point
    `optimizer` (built over the unsharded parameters, possibly with a resumed full state) at the shards,
    its state sharded alike; returns them, the optimizer prepared by `accelerator` (so it skips the
    update on accumulation micro-batches, as in the DDP path)."""
    if accelerator.mixed_precision == "fp16":
        raise FSDPError("meta.fsdp with fp16 needs a sharded gradient scaler, which this loop does not build; "
                        "use meta.dtype=bfloat16 (or float32)")
    mesh = _mesh(accelerator.device)
    named: List[Tuple[str, nn.Parameter]] = []  # every optimised parameter before sharding, by model and name
    for tag, m in (("encoder", encoder), ("predictor", predictor)):
        named += [(f"{tag}.{n}", p) for n, p in m.named_parameters()]
    old_names = {id(p): n for n, p in named}
    for m in (encoder, predictor, target):
        m.to(accelerator.device)
        shard_module(m, mesh)
    new = {f"{tag}.{n}": p for tag, m in (("encoder", encoder), ("predictor", predictor))
           for n, p in m.named_parameters()}
    check_same_sharding(target, encoder)
    _point_optimizer_at(optimizer, old_names, new)
    logger.info("FSDP2: encoder, predictor and EMA target sharded over %d rank(s), one unit per block; "
                "%.1fM of %.1fM encoder parameters on this rank", mesh.size(),
                sum(local(p).numel() for p in encoder.parameters()) / 1e6,
                sum(p.numel() for p in encoder.parameters()) / 1e6)
    return encoder, predictor, target, accelerator.prepare(optimizer)


def _point_optimizer_at(optimizer: torch.optim.Optimizer, old_names: Mapping[int, str],
                        new: Mapping[str, nn.Parameter]) -> None:
    """Swap each unsharded parameter in `optimizer` for its shard (matched by name), sharding its state."""
    state = {}
    for group in optimizer.param_groups:
        swapped = []
        for p in group["params"]:
            name = old_names.get(id(p))
            if name is None or name not in new:
                raise FSDPError(f"optimizer parameter {name or tuple(p.shape)} has no sharded counterpart")
            q = new[name]
            if p in optimizer.state:
                state[q] = {k: _shard_like(v, q) if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
            swapped.append(q)
        group["params"] = swapped
    optimizer.state.clear()
    optimizer.state.update(state)


def _gather(t: torch.Tensor, main: bool) -> torch.Tensor:
    """The full tensor (a collective for a DTensor: every rank calls it) on the CPU of the main process;
    an empty placeholder elsewhere."""
    full = t.full_tensor() if isinstance(t, DTensor) else t
    return full.detach().cpu() if main else torch.empty(0)


def full_state_dict(module: nn.Module, main: bool) -> Dict[str, torch.Tensor]:
    """`module`'s state dict with every sharded tensor gathered, on the main process's CPU; {} elsewhere.
    Every rank must call it (one all-gather per tensor, in the state dict's order, so the peak memory
    is one full tensor beyond the shards)."""
    out = {k: _gather(v, main) for k, v in module.state_dict().items()}
    return out if main else {}


def full_optimizer_state(optimizer: torch.optim.Optimizer, main: bool) -> dict:
    """`optimizer.state_dict()` with its sharded moments gathered (main process, CPU; {} elsewhere): the
    layout a 1-process run saves, state keyed by parameter index. Every rank must call it."""
    sd = optimizer.state_dict()
    state = {i: {k: _gather(v, main) if torch.is_tensor(v) else v for k, v in sorted(s.items())}
             for i, s in sorted(sd["state"].items())}
    return {"state": state, "param_groups": sd["param_groups"]} if main else {}

