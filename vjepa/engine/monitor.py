"""Collapse monitors for JEPA features."""
from __future__ import annotations

import logging
from typing import Dict

import torch

logger = logging.getLogger(__name__)


@torch.no_grad()
def feature_std(h: torch.Tensor) -> float:
    """Mean over channels of the std across all tokens of the batch; h `[B, N, D]` or `[B, D]`.
    About 1 for healthy layer-normed features, towards 0 when every token maps to the same vector."""
    x = h.reshape(-1, h.shape[-1]).float()
    return x.std(dim=0).mean().item()


@torch.no_grad()
def rankme(h: torch.Tensor, max_rows: int = 2048, eps: float = 1e-7) -> float:
    """Effective rank (RankMe, Garrido et al. 2023): exp of the entropy of the normalised singular values
    of the feature matrix; ranges from 1 (collapsed) to min(rows, D)."""
    x = h.reshape(-1, h.shape[-1]).float()
    if x.shape[0] > max_rows:  # evenly spaced rows: deterministic and cheap
        x = x[torch.linspace(0, x.shape[0] - 1, max_rows, device=x.device).long()]
    s = torch.linalg.svdvals(x)
    p = s / (s.sum() + eps) + eps
    return torch.exp(-(p * p.log()).sum()).item()


def monitor(h: torch.Tensor, name: str, floor: float, step: int, with_rank: bool = True) -> Dict[str, float]:
    """Collapse monitors of features `[B, S, D]` (a level, a world model's representation): std across
    steps (and effective rank), with a warning when the std falls below `floor`."""
    out = {"feature_std": feature_std(h)}
    if with_rank:
        out["rankme"] = rankme(h)
    if out["feature_std"] < floor:
        logger.warning("step %d: %s feature std %.4f is below %.3f: it may be collapsing", step, name,
                       out["feature_std"], floor)
    return out
