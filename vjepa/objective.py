"""The V-JEPA objective: the predictor fills in the EMA target encoder's layer-normed features at the
target positions from the context tokens; loss = mean |pred - target|^p / p averaged over mask configs,
plus the optional terms of `LossConfig` (all off by default, which is the published recipe)."""
from __future__ import annotations

import math
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
        view_coeff: weight of the pooled-view term (LeJEPA's objective, with the mask configs as views):
            each mask config's context tokens, mean-pooled per clip, are one view of that clip; the term is
            (1 - view_lambda) x the views' squared distance to their mean + view_lambda x SIGReg of the
            pooled embeddings (per view, averaged). Needs >= 2 mask configs. 0 = off.
        view_lambda: LeJEPA's lambda, the SIGReg share of the pooled-view term.
        local_coeff: weight of the local-motion term: from each context token alone (a per-token MLP, no
            communication between tokens), predict the target features of the 3 x 3 neighbourhood of its
            patch one time step (tubelet) later; L1 like the JEPA loss. What is there next depends on how
            the content moves, so each token has to carry its local motion. 0 = off.
        local_steps: how many time steps (tubelets) ahead the local-motion term predicts.
        pooled_coeff: weight of the pooled-context term: a small MLP predicts the target features at each
            target position from only the mean of the clip's context tokens and a learned embedding of that
            position (no attention), so that the pooled representation must carry where things are at every
            time step: appearance, position and motion. L1 like the JEPA loss. 0 = off.
        dynamic_weight: a in [0, 1]: the JEPA loss and the pooled-context term weight each target token by
            (1 - a) + a * s, with s the temporal std of the target features at its patch position (over the
            clip's time steps, normalised to mean 1 per clip), so that tokens where something moves count
            more than static background. 0 = off (every token counts alike).
        target_diff: a in [0, 1]: the targets become (1 - a) x the layer-normed features + a x their change
            over one time step at the same patch (`temporal_diff`, rescaled to the features' RMS), so that
            what is predicted is how the clip moves, not what it shows. 0 = off (V-JEPA's targets).
        view_proj_dim: > 0 passes the pooled views through a projector MLP (D -> 4D -> view_proj_dim, with
            BatchNorm, as LeJEPA's) held by the predictor and used only by this term; 0 = none.
        feature_coeff: weight of the JEPA term itself (predicting the target encoder's features). 1 = V-JEPA;
            0 together with `pixel_coeff` > 0 leaves pixel targets alone (the V-JEPA paper's pixel-target
            ablation; with the predictor as decoder this is close to VideoMAE).
        pixel_coeff: weight of the pixel term: a linear head on the predictor's outputs at the target
            positions predicts each masked tubelet's pixels, normalised per tubelet (`pixel_targets`, as
            VideoMAE's normalised-pixel loss); mean squared error over real target tokens. 0 = off.
        reverse_coeff: weight of the time-reversal term: the whole clip and the clip played backwards go
            through the online encoder, and the first `reverse_dims` channels of their mean-pooled tokens must
            be opposite: |a + b|^2 / (|a|^2 + |b|^2) (0 when odd under reversal, 1 when unrelated, 2 when
            equal; scale-free, so shrinking them does not help). What changes sign when time runs backwards
            is the motion (direction, sense of rotation); appearance and speed do not. Whole clips, because a
            context mirrored in time lets the positional embeddings alone satisfy the term (measured:
            `benchmarks/sweeps/RESULTS.md`). Two more full-clip encoder passes per step. 0 = off.
        reverse_dims: how many leading channels must be odd under time reversal (0 = half of them).
        reverse_pool: what is pooled before the term: `clip` (all tokens: one vector per clip) or `time` (each
            patch position's tokens over time: one vector per position, so the odd channels must say where in
            the frame the motion is; every position sees the same set of times both ways).
        reverse_form: `ratio` (the term above) or `sqrt`: sqrt(2) - sqrt(2 - ratio) = sqrt(2) - |a - b| /
            sqrt(|a|^2 + |b|^2), same minimum (b = -a) and maximum (a = b), but its gradient does not vanish at
            the maximum, where a random encoder starts (ratio = 2 - |a - b|^2 / (|a|^2 + |b|^2) is flat there).
    """

    loss_exp: float = 1.0
    reg_coeff: float = 0.0
    target_layers: int = 1
    vicreg_var: float = 0.0
    vicreg_cov: float = 0.0
    sigreg_coeff: float = 0.0
    sigreg_slices: int = 256
    view_coeff: float = 0.0
    view_lambda: float = 0.05
    view_proj_dim: int = 0
    local_coeff: float = 0.0
    local_steps: int = 1
    pooled_coeff: float = 0.0
    dynamic_weight: float = 0.0
    target_diff: float = 0.0
    feature_coeff: float = 1.0
    pixel_coeff: float = 0.0
    reverse_coeff: float = 0.0
    reverse_dims: int = 0
    reverse_pool: str = "clip"
    reverse_form: str = "ratio"


def jepa_targets(target: nn.Module, clip: torch.Tensor, layers: int = 1) -> torch.Tensor:
    """Layer-normed target features `[B, N, D]` of the full clip (no gradient): the final output, or the
    average of the last `layers` blocks, each layer-normed first (data2vec)."""
    with torch.no_grad():
        if layers == 1:
            h = target(clip)
        else:
            h = torch.stack([F.layer_norm(x, (x.shape[-1],)) for x in target.last_layers(clip, layers)]).mean(0)
        return F.layer_norm(h, (h.shape[-1],))


def temporal_diff(h: torch.Tensor, grid) -> torch.Tensor:
    """Forward difference over time of `[B, N, D]` tokens on a (T, H, W) grid (t-major order): token (t, p)
    gets h[t + 1, p] - h[t, p]; the last time step repeats the one before. Rescaled so that its RMS over the
    batch matches h's (the L1 loss keeps its scale whatever the clip's speed)."""
    T, H, W = grid
    B, N, D = h.shape
    x = h.view(B, T, H * W, D)
    d = x[:, 1:] - x[:, :-1]
    d = torch.cat([d, d[:, -1:]], 1).reshape(B, N, D)
    return d * (h.pow(2).mean().sqrt() / d.pow(2).mean().sqrt().clamp(min=1e-6))


def pixel_targets(clip: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """The pixels of each token of a `[B, C, T, H, W]` clip, `[B, N, tubelet * patch * patch * C]` in the
    encoder's token order (t-major, then rows, then columns), each token normalised to mean 0 and std 1 over
    its own values (VideoMAE's normalised-pixel target)."""
    B, C, T, H, W = clip.shape
    x = clip.float().reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, (T // tubelet) * (H // patch) * (W // patch), -1)
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()


def reverse_term(a: torch.Tensor, b: torch.Tensor, form: str = "ratio") -> torch.Tensor:
    """|a + b|^2 / (|a|^2 + |b|^2) over `[B, k]` pooled channels: 0 when b = -a, 1 when unrelated, 2 when equal.
    `form="sqrt"`: sqrt(2) - |a - b| / sqrt(|a|^2 + |b|^2) (0, sqrt(2) - 1, sqrt(2) in the same three cases),
    whose gradient has norm ~1 / |a| next to a = b instead of ~|a - b| / |a|^2."""
    a, b = a.float(), b.float()
    norm = (a.pow(2).sum() + b.pow(2).sum()).clamp(min=1e-12)
    if form == "sqrt":  # the eps keeps the gradient finite where a = b exactly (a batch of still clips)
        return math.sqrt(2.0) - ((a - b).pow(2).sum() / norm + 1e-12).sqrt()
    return (a + b).pow(2).sum() / norm


def pixel_head(dim: int, tubelet: int, patch: int, channels: int = 3) -> nn.Module:
    """For `pixel_coeff`: a linear map from a predicted token `[..., dim]` to its tubelet's pixels."""
    return nn.Linear(dim, tubelet * patch * patch * channels)


def _masked_mean(x: torch.Tensor, valid) -> torch.Tensor:
    """Mean of `[B, K, D]` over real tokens (`valid` `[B, K]` bool, None = all; float = token weights)."""
    if valid is None:
        return x.mean()
    w = valid.unsqueeze(-1).to(x.dtype)
    return (x * w).sum() / (w.sum() * x.shape[-1])


def motion_weights(h: torch.Tensor, grid, a: float) -> torch.Tensor:
    """Token weights `[B, N]` for `dynamic_weight` a: (1 - a) + a * (temporal std of `h` `[B, N, D]` at each
    patch position of the (T, H, W) grid, mean over channels, normalised to mean 1 over a clip's positions)."""
    T, H, W = grid
    B, N, D = h.shape
    s = h.float().view(B, T, H * W, D).std(1).mean(-1)  # [B, H*W]
    s = s / s.mean(1, keepdim=True).clamp(min=1e-6)
    return ((1 - a) + a * s).repeat(1, T)  # t-major token order: token n sits at position n % (H*W)


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


def pooled_views(z, valid) -> torch.Tensor:
    """Mean over each clip's real context tokens, per mask config: `[V, B, D]` from V lists `[B, K, D]`."""
    out = []
    for zi, v in zip(z, valid):
        if v is None:
            out.append(zi.float().mean(1))
        else:
            w = v.unsqueeze(-1).to(torch.float32)
            out.append((zi.float() * w).sum(1) / w.sum(1).clamp(min=1))
    return torch.stack(out)


def view_projector(dim: int, out_dim: int) -> nn.Module:
    """LeJEPA-style projector for the pooled views: Linear-BN-GELU-Linear (`[N, dim]` -> `[N, out_dim]`)."""
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.BatchNorm1d(4 * dim), nn.GELU(), nn.Linear(4 * dim, out_dim))


NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def local_head(dim: int) -> nn.Module:
    """Per-token MLP for `local_coeff`: `[..., dim]` -> `[..., 9 * dim]` (one feature per neighbour)."""
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, len(NEIGHBOURS) * dim))


def next_neighbours(masks: torch.Tensor, grid, steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """For token indices `[B, K]` on a (T, H, W) grid (t-major flat order): the flat indices `[B, K, 9]` of
    the 3 x 3 patches around each one `steps` time steps later, and whether each exists `[B, K, 9]` (bool:
    the last time steps and the grid's border have fewer)."""
    T, H, W = grid
    t, y, x = masks // (H * W), (masks // W) % H, masks % W
    dy = torch.tensor([d[0] for d in NEIGHBOURS], device=masks.device)
    dx = torch.tensor([d[1] for d in NEIGHBOURS], device=masks.device)
    ny, nx, nt = y.unsqueeze(-1) + dy, x.unsqueeze(-1) + dx, (t + steps).unsqueeze(-1).expand(*t.shape, 9)
    ok = (nt < T) & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
    idx = nt * H * W + ny.clamp(0, H - 1) * W + nx.clamp(0, W - 1)
    return idx.clamp(max=T * H * W - 1), ok


def local_term(head: nn.Module, z, masks_ctx, valid_ctx, h: torch.Tensor, grid, p: float,
               steps: int = 1) -> torch.Tensor:
    """Mean |head(z) - next-step neighbourhood targets|^p / p over existing neighbours of real context
    tokens, averaged over mask configs."""
    terms = []
    for zi, m, v in zip(z, masks_ctx, valid_ctx):
        B, K, D = zi.shape
        pred = head(zi).view(B, K, len(NEIGHBOURS), D)
        idx, ok = next_neighbours(m, grid, steps)
        tgt = torch.gather(h, 1, idx.view(B, -1, 1).expand(-1, -1, D)).view(B, K, len(NEIGHBOURS), D)
        if v is not None:
            ok = ok & v.unsqueeze(-1)
        err = (pred.float() - tgt.float()).abs().pow(p).mean(-1) / p  # [B, K, 9]
        terms.append((err * ok).sum() / ok.sum().clamp(min=1))
    return torch.stack(terms).mean()


class PooledDecoder(nn.Module):
    """For `pooled_coeff`: (pooled context `[B, D]`, target indices `[B, K]`) -> features `[B, K, D]`, each
    from the pooled vector and a learned embedding of its position only."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.pos = nn.Embedding(num_tokens, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, 4 * dim), nn.GELU(),
                                 nn.Linear(4 * dim, dim))

    def forward(self, pooled: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        q = self.pos(idx)  # [B, K, D]
        return self.mlp(torch.cat([pooled.unsqueeze(1).expand_as(q), q], -1))


def pooled_term(decoder: nn.Module, pooled: torch.Tensor, masks_tgt, valid_tgt, h: torch.Tensor,
                p: float) -> torch.Tensor:
    """Mean |decoder(mean context, target index) - target|^p / p over real target tokens, averaged over
    mask configs; `pooled` `[V, B, D]` is `pooled_views` of the context."""
    terms = [_masked_mean((decoder(pv, m).float() - gather_tokens(h, m).float()).abs().pow(p), v) / p
             for pv, m, v in zip(pooled, masks_tgt, valid_tgt)]
    return torch.stack(terms).mean()


def view_term(views: torch.Tensor, lam: float, slices: int):
    """LeJEPA's objective on `[V, B, D]` pooled views: (invariance, SIGReg) with invariance = mean squared
    distance of each view to the views' mean (summed over channels, averaged over views and clips) and
    SIGReg averaged over views; the term is (1 - lam) * invariance + lam * SIGReg."""
    inv = (views - views.mean(0, keepdim=True)).pow(2).sum(-1).mean()
    sig = torch.stack([sigreg(v, slices) for v in views]).mean()
    return (1 - lam) * inv + lam * sig, inv, sig


def jepa_loss(encoder: nn.Module, predictor: nn.Module, target: nn.Module, batch: dict, cfg: LossConfig):
    """Returns (loss, layer-normed target features `[B, N, D]`, extra metrics as 0-dim tensors).

    Padded masks (`batch["valid_ctx"]` / `["valid_tgt"]`, see `data.collate.MaskCollator`) are respected:
    padding is never attended to and does not count in the loss."""
    clip, masks_ctx, masks_tgt = batch["clip"], batch["masks_ctx"], batch["masks_tgt"]
    valid_ctx = batch.get("valid_ctx") or [None] * len(masks_ctx)
    valid_tgt = batch.get("valid_tgt") or [None] * len(masks_tgt)
    h = jepa_targets(target, clip, cfg.target_layers)
    if not 0 <= cfg.target_diff <= 1:
        raise ValueError(f"loss.target_diff must be in [0, 1], got {cfg.target_diff}")
    tg = h  # what is predicted: the features, or (target_diff) partly their change over time
    if cfg.target_diff > 0:
        tg = (1 - cfg.target_diff) * h + cfg.target_diff * temporal_diff(h, _unwrap(encoder).grid)
    z = encoder(clip, masks_ctx, valid_ctx)  # list over mask configs of [B, K_ctx, D]
    h_tgt = [gather_tokens(tg, m) for m in masks_tgt]  # list of [B, K_tgt, D]
    # targets feed the predictor's queries only without mask tokens (model.use_mask_tokens=false)
    preds = predictor(z, masks_ctx, masks_tgt, targets=h_tgt, valid_ctx=valid_ctx, valid_tgt=valid_tgt)
    p = cfg.loss_exp
    weight_tgt = valid_tgt  # what each target token counts for in the loss: padding 0, real tokens 1
    if cfg.dynamic_weight > 0:
        w = motion_weights(h, _unwrap(encoder).grid, cfg.dynamic_weight)
        weight_tgt = [torch.gather(w, 1, m) * (1.0 if v is None else v) for m, v in zip(masks_tgt, valid_tgt)]
    loss = sum(
        _masked_mean((pr.float() - ht.float()).abs().pow(p), v) / p for pr, ht, v in zip(preds, h_tgt, weight_tgt)
    ) / len(preds)
    extra = {}
    if cfg.feature_coeff != 1.0:
        extra["feature"] = loss.detach()
        loss = cfg.feature_coeff * loss
    if cfg.pixel_coeff > 0:
        enc = _unwrap(encoder)
        pix = pixel_targets(clip, enc.tubelet_size, enc.patch_size)
        head = _unwrap(predictor).pixel_head
        term = sum(_masked_mean((head(pr).float() - gather_tokens(pix, m)).pow(2), v)
                   for pr, m, v in zip(preds, masks_tgt, valid_tgt)) / len(preds)
        loss = loss + cfg.pixel_coeff * term
        extra["pixel"] = term.detach()
    if cfg.reverse_coeff > 0:
        k = cfg.reverse_dims or _unwrap(encoder).embed_dim // 2
        h = encoder(torch.cat([clip, clip.flip(2)])).float()[..., :k]
        if cfg.reverse_pool == "time":  # [2B, T, HW, k] -> one vector per patch position
            T, H, W = _unwrap(encoder).grid
            h = h.view(len(h), T, H * W, k)
        fwd, bwd = h.mean(1).reshape(len(h), -1).chunk(2)  # [B, k] or [B, HW * k] each
        term = reverse_term(fwd, bwd, cfg.reverse_form)
        loss = loss + cfg.reverse_coeff * term
        extra["reverse"] = term.detach()
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
    heads = _unwrap(predictor)  # the auxiliary heads live on the (possibly DDP-wrapped) predictor
    pooled = pooled_views(z, valid_ctx) if cfg.view_coeff > 0 or cfg.pooled_coeff > 0 else None  # [V, B, D]
    if cfg.view_coeff > 0:
        if len(z) < 2:
            raise ValueError("loss.view_coeff needs at least 2 mask configs (each one is a view)")
        views, proj = pooled, getattr(heads, "view_proj", None)
        if proj is not None:
            V, B = views.shape[:2]
            views = proj(views.flatten(0, 1)).view(V, B, -1)
        term, inv, sig = view_term(views, cfg.view_lambda, cfg.sigreg_slices)
        loss = loss + cfg.view_coeff * term
        extra.update(view_inv=inv.detach(), view_sigreg=sig.detach())
    if cfg.pooled_coeff > 0:
        term = pooled_term(heads.pooled_decoder, pooled, masks_tgt, weight_tgt, tg, p)
        loss = loss + cfg.pooled_coeff * term
        extra["pooled"] = term.detach()
    if cfg.local_coeff > 0:
        local = local_term(heads.local_head, z, masks_ctx, valid_ctx, tg, _unwrap(encoder).grid, p, cfg.local_steps)
        loss = loss + cfg.local_coeff * local
        extra["local"] = local.detach()
    return loss, h, extra


def _unwrap(module: nn.Module) -> nn.Module:
    """The module itself under a DDP wrapper (which keeps it as `.module`)."""
    return getattr(module, "module", module)
