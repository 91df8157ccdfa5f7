"""The V-JEPA objective: the predictor fills in the EMA target encoder's layer-normed features at the
target positions from the context tokens; loss = mean |pred - target|^p / p averaged over mask configs,
plus the optional terms of `LossConfig` (all off by default, which is the published recipe)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa.models import gather_tokens
from vjepa.regularizers import sigreg, vicreg_terms


@dataclass
class LossConfig:
    """The JEPA objective (`loss:` section).

    Args:
        loss_exp: p of mean |pred - target|^p / p (1 = L1 as V-JEPA, 2 = L2).
        reg_coeff: weight of the reference's variance hinge mean(relu(1 - std(pred))) (0 = off).
        target_layers: targets are the average of the last k target-encoder blocks, each layer-normed
            (data2vec); 1 = the final output, as V-JEPA.
        vicreg_var / vicreg_cov: VICReg variance hinge (std target 1) / covariance weights on the context
            encoder's output tokens (every real context token of the batch is a row).
        sigreg_coeff: SIGReg weight on the same tokens (LeJEPA). sigreg_slices: its random projections.
    """

    loss_exp: float = 1.0
    reg_coeff: float = 0.0
    target_layers: int = 1
    vicreg_var: float = 0.0
    vicreg_cov: float = 0.0
    sigreg_coeff: float = 0.0
    sigreg_slices: int = 256


def jepa_targets(target: nn.Module, clip: torch.Tensor, layers: int = 1) -> torch.Tensor:
    """Layer-normed target features `[B, N, D]` of the full clip (no gradient): the final output, or the
    average of the last `layers` blocks, each layer-normed first (data2vec)."""
    with torch.no_grad():
        if layers == 1:
            h = target(clip)
        else:
            h = torch.stack([F.layer_norm(x, (x.shape[-1],)) for x in target.last_layers(clip, layers)]).mean(0)
        return F.layer_norm(h, (h.shape[-1],))


def _masked_mean(x: torch.Tensor, valid) -> torch.Tensor:
    """Mean of `[B, K, D]` over real tokens (`valid` `[B, K]` bool, None = all)."""
    if valid is None:
        return x.mean()
    w = valid.unsqueeze(-1).to(x.dtype)
    return (x * w).sum() / (w.sum() * x.shape[-1])


def _token_std(x: torch.Tensor, valid) -> torch.Tensor:
    """Mean over samples and channels of the std across a sample's real tokens (`x` `[B, K, D]`, `valid`
    `[B, K]` bool, None = all), floored as the reference's variance hinge does."""
    if valid is None:
        return torch.sqrt(x.var(dim=1) + 1e-4).mean()
    w = valid.unsqueeze(-1).to(x.dtype)  # [B, K, 1]
    n = w.sum(1)  # [B, 1]
    mean = (x * w).sum(1, keepdim=True) / n.unsqueeze(1)
    var = ((x - mean).pow(2) * w).sum(1) / (n - 1).clamp(min=1)  # [B, D], unbiased like Tensor.var
    return torch.sqrt(var + 1e-4).mean()


def jepa_loss(encoder: nn.Module, predictor: nn.Module, target: nn.Module, batch: dict, cfg: LossConfig):
    """Returns (loss, layer-normed target features `[B, N, D]`, extra metrics as 0-dim tensors).

    Padded masks (`batch["valid_ctx"]` / `["valid_tgt"]`, see `data.collate.MaskCollator`) are respected:
    padding is never attended to and does not count in the loss."""
    clip, masks_ctx, masks_tgt = batch["clip"], batch["masks_ctx"], batch["masks_tgt"]
    valid_ctx = batch.get("valid_ctx") or [None] * len(masks_ctx)
    valid_tgt = batch.get("valid_tgt") or [None] * len(masks_tgt)
    h = jepa_targets(target, clip, cfg.target_layers)
    z = encoder(clip, masks_ctx, valid_ctx)  # list over mask configs of [B, K_ctx, D]
    h_tgt = [gather_tokens(h, m) for m in masks_tgt]  # list of [B, K_tgt, D]
    # targets feed the predictor's queries only without mask tokens (model.use_mask_tokens=false)
    preds = predictor(z, masks_ctx, masks_tgt, targets=h_tgt, valid_ctx=valid_ctx, valid_tgt=valid_tgt)
    p = cfg.loss_exp
    loss = sum(
        _masked_mean((pr.float() - ht.float()).abs().pow(p), v) / p for pr, ht, v in zip(preds, h_tgt, valid_tgt)
    ) / len(preds)
    extra = {}
    if cfg.reg_coeff > 0:
        std = torch.stack([_token_std(pr.float(), v) for pr, v in zip(preds, valid_tgt)]).mean()
        loss = loss + cfg.reg_coeff * F.relu(1.0 - std)
    if cfg.vicreg_var > 0 or cfg.vicreg_cov > 0 or cfg.sigreg_coeff > 0:
        tokens = torch.cat([zi.reshape(-1, zi.shape[-1]) if v is None else zi[v] for zi, v in zip(z, valid_ctx)])
        if cfg.vicreg_var > 0 or cfg.vicreg_cov > 0:
            var, cov = vicreg_terms(tokens)
            loss = loss + cfg.vicreg_var * var + cfg.vicreg_cov * cov
            extra.update(vicreg_var=var.detach(), vicreg_cov=cov.detach())
        if cfg.sigreg_coeff > 0:
            sr = sigreg(tokens, cfg.sigreg_slices)
            loss = loss + cfg.sigreg_coeff * sr
            extra["sigreg"] = sr.detach()
    return loss, h, extra
