"""Anti-collapse regularisers on a batch of embeddings `[N, D]` (rows = samples or tokens).

- VICReg (Bardes et al. 2022): a hinge keeping every channel's std above a target, and a penalty on
  the off-diagonal covariance so channels carry different information.
- SIGReg (LeJEPA, Balestriero & LeCun 2025, arXiv 2511.08544): pushes the embedding distribution
  towards an isotropic Gaussian by matching, along random 1-D projections, the empirical characteristic
  function to that of N(0, 1) (Epps-Pulley statistic).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def vicreg_terms(z: torch.Tensor, var_target: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """VICReg on features `[..., D]` (flattened to `[N, D]`): (mean hinge relu(var_target - std per channel),
    off-diagonal covariance squared / D)."""
    z = z.reshape(-1, z.shape[-1]).float()
    z = z - z.mean(0)
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    var = F.relu(var_target - std).mean()
    cov = (z.T @ z) / max(1, z.shape[0] - 1)  # [D, D]
    off = cov - torch.diag(torch.diag(cov))
    return var, off.pow(2).sum() / z.shape[1]


def sigreg(z: torch.Tensor, num_slices: int = 256, num_knots: int = 17) -> torch.Tensor:
    """SIGReg: along `num_slices` random unit directions, the Epps-Pulley distance between the empirical
    characteristic function of the 1-D projections and that of N(0, 1), averaged over directions.
    Zero iff every projection is standard normal, i.e. features `[N, D]` are isotropic Gaussian. Unlike
    LeJEPA we do not multiply by N, so the weight does not depend on the batch size."""
    z = z.float()
    a = torch.randn(z.shape[1], num_slices, device=z.device)
    a = a / a.norm(dim=0, keepdim=True)
    x = z @ a  # [N, M]
    t = torch.linspace(-3.0, 3.0, num_knots, device=z.device)
    xt = x.unsqueeze(-1) * t  # [N, M, T]
    gauss = torch.exp(-0.5 * t**2)
    err = (xt.cos().mean(0) - gauss).pow(2) + xt.sin().mean(0).pow(2)  # [M, T]
    return torch.trapezoid(err * gauss, t, dim=-1).mean()
