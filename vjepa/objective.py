"""The V-JEPA objective: the predictor fills in the EMA target encoder's layer-normed features at the
target positions from the context tokens; loss = mean |pred - target|^p / p averaged over mask configs."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa.models import gather_tokens


def jepa_loss(encoder: nn.Module, predictor: nn.Module, target: nn.Module, batch: dict, loss_exp: float,
              reg_coeff: float = 0.0):
    """Returns (loss, layer-normed target features `[B, N, D]`)."""
    clip, masks_ctx, masks_tgt = batch["clip"], batch["masks_ctx"], batch["masks_tgt"]
    with torch.no_grad():
        h = target(clip)  # [B, N, D]
        h = F.layer_norm(h, (h.shape[-1],))
    z = encoder(clip, masks_ctx)  # list over mask configs of [B, K_ctx, D]
    h_tgt = [gather_tokens(h, m) for m in masks_tgt]  # list of [B, K_tgt, D]
    preds = predictor(z, masks_ctx, masks_tgt, targets=h_tgt)  # list of [B, K_tgt, D]; targets: see Predictor
    loss = sum(
        (p.float() - t.float()).abs().pow(loss_exp).mean() / loss_exp for p, t in zip(preds, h_tgt)
    ) / len(preds)
    if reg_coeff > 0:
        std = torch.stack([torch.sqrt(p.float().var(dim=1) + 1e-4).mean() for p in preds]).mean()
        loss = loss + reg_coeff * F.relu(1.0 - std)
    return loss, h
