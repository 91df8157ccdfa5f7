"""Collapse monitors for JEPA features."""
from __future__ import annotations

import torch


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
