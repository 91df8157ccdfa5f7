"""Video ViT encoder and the narrow JEPA predictor.

Parameter names match the V-JEPA reference (`patch_embed.proj`, `blocks.i.attn.qkv`, `mask_tokens.i`,
`predictor_embed`, ...) so that official checkpoints load by stripping a key prefix only.
Tokens are flattened in (t, h, w) order, w fastest. Masks are int64 index tensors `[B, K]` into that order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch.utils.checkpoint import checkpoint

from vjepa.pos_embed import apply_rope_3d, grid_coords, resize_pos_embed, sincos_3d

Masks = Union[torch.Tensor, Sequence[torch.Tensor], None]


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# Reference sizes (V-JEPA / V-JEPA 2). `vit_micro` is this project's CPU quickstart size.
VIT_SIZES = {
    "vit_micro": ViTSize(96, 4, 3),
    "vit_tiny": ViTSize(192, 12, 3),
    "vit_small": ViTSize(384, 12, 6),
    "vit_base": ViTSize(768, 12, 12),
    "vit_large": ViTSize(1024, 24, 16),
    "vit_huge": ViTSize(1280, 32, 16),
    "vit_giant": ViTSize(1408, 40, 16, 48 / 11),
    "vit_gigantic": ViTSize(1664, 48, 16, 64 / 13),
}


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x `[B, N, D]`, idx `[B, K]` -> `[B, K, D]`."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (flash kernels on GPU).

    Args:
        dim: token width. num_heads: heads. qkv_bias: bias on the qkv projection (reference: True).
        use_rope: rotate q and k with 3D RoPE from the token coordinates passed to `forward`.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, use_rope: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.use_rope = use_rope
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, coords: Optional[torch.Tensor] = None,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x `[B, N, D]`; `valid` `[B, N]` bool marks real tokens: padded ones are never attended to."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, head_dim]
        if self.use_rope:
            q, k = apply_rope_3d(q, coords), apply_rope_3d(k, coords)
        attn_mask = None if valid is None else valid[:, None, None, :]  # [B, 1, 1, N], True = attend
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rope: bool = False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, use_rope=use_rope)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, coords: Optional[torch.Tensor] = None,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), coords, valid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, coords: Optional[torch.Tensor],
                activation_checkpointing: bool, valid: Optional[torch.Tensor] = None,
                keep_last: int = 0, groups: int = 1) -> torch.Tensor | list:
    """Run `blocks`; with `keep_last` = k > 0 return the outputs of the last k blocks instead. Padded rows
    (`valid` given) run in `groups` batches of similar length (`_run_blocks_grouped`) when `groups` > 1."""
    if valid is not None and groups > 1 and not keep_last:
        return _run_blocks_grouped(blocks, x, coords, activation_checkpointing, valid, groups)
    kept = []
    for i, blk in enumerate(blocks):
        if activation_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, x, coords, valid, use_reentrant=False)
        else:
            x = blk(x, coords, valid)
        if i >= len(blocks) - keep_last:
            kept.append(x)
    return kept if keep_last else x


def _run_blocks_grouped(blocks: nn.ModuleList, x: torch.Tensor, coords: Optional[torch.Tensor],
                        activation_checkpointing: bool, valid: torch.Tensor, groups: int) -> torch.Tensor:
    """`_run_blocks` for padded rows (`valid` `[B, N]`, True = real token) in `groups` batches of similar length.

    Rows are sorted by their number of real tokens and split into `groups` chunks; each chunk's real tokens
    are moved to the front (in order) and the chunk is cut to its longest row, so padding costs compute only
    up to that length, and a chunk whose rows are all full (shortest = longest) runs without an attention mask.
    Real tokens get the outputs the padded batch would give them (up to float rounding); padded positions come
    back as zeros. One host sync reads every chunk's (shortest, longest) length.
    """
    B, N, D = x.shape
    counts = valid.sum(1)
    order = torch.argsort(counts, stable=True)
    front = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # [B, N]: real positions first, in order
    chunks = order.chunk(groups)
    bounds = torch.stack([torch.stack([c[0], c[-1]]) for c in counts[order].chunk(groups)]).tolist()
    pieces = []
    for rows, (shortest, length) in zip(chunks, bounds):
        idx = front[rows, :length]  # [b, L]
        v = torch.gather(valid[rows], 1, idx)
        y = _run_blocks(blocks, gather_tokens(x[rows], idx), None if coords is None else gather_tokens(coords[rows], idx),
                        activation_checkpointing, None if shortest == length else v)
        pieces.append(y.new_zeros(len(rows), N, D).scatter(1, idx.unsqueeze(-1).expand(-1, -1, D), y * v.unsqueeze(-1)))
    return torch.cat(pieces)[torch.argsort(order)]


def _init_weights(module: nn.Module, std: float) -> None:
    # Reference init: truncated normal for every linear/conv weight, zero bias, unit LayerNorm.
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _rescale_residual_projections(blocks: nn.ModuleList) -> None:
    # Residual outputs of layer i (1-based) are divided by sqrt(2 i), as in the reference ViT init.
    for i, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))


class VisionTransformer(nn.Module):
    """Video ViT: Conv3d tubelet embedding, fixed 3D sin-cos positions (or 3D RoPE), pre-norm blocks.

    Args:
        img_size: input height = width in pixels. num_frames: input frames.
        patch_size / tubelet_size: spatial / temporal extent of one token.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape (see `VIT_SIZES`).
        uniform_power: give t, h, w equal shares of the sin-cos table (V-JEPA recipe).
        use_rope: 3D rotary embeddings in attention instead of the additive table (V-JEPA 2).
        use_activation_checkpointing: recompute block activations in backward to save memory.
        length_groups: padded rows run in this many groups of similar length (`_run_blocks_grouped`).
    """

    def __init__(self, img_size: int = 224, num_frames: int = 16, patch_size: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 init_std: float = 0.02, uniform_power: bool = False, use_rope: bool = False,
                 use_activation_checkpointing: bool = False, length_groups: int = 1):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.length_groups = length_groups
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.use_rope = use_rope
        self.use_activation_checkpointing = use_activation_checkpointing
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                                          stride=(tubelet_size, patch_size, patch_size))
        if not use_rope:
            # A frozen parameter (not a buffer) so it sits in the state dict as in official checkpoints.
            table = sincos_3d(embed_dim, *self.grid, uniform_power=uniform_power).unsqueeze(0)
            self.pos_embed = nn.Parameter(table, requires_grad=False)  # [1, N, D]
        dpr = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i], use_rope=use_rope)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        _init_weights(self, init_std)
        _rescale_residual_projections(self.blocks)

    def grid_of(self, x: torch.Tensor) -> tuple[int, int, int]:
        _, _, t, h, w = x.shape
        return (t // self.tubelet_size, h // self.patch_size, w // self.patch_size)

    def forward(self, x: torch.Tensor, masks: Masks = None, valid: Masks = None):
        """x `[B, C, T, H, W]` (or an image `[B, C, H, W]`) -> tokens `[B, N, D]`.

        `masks`: an index tensor `[B, K]` keeps those K tokens -> `[B, K, D]`; a list of them runs the
        blocks once per mask and returns a list (one forward call, so DDP sees a single use).
        `valid`: for padded masks, bool `[B, K]` (or a list like `masks`, entries may be None): False
        marks padding, which no token attends to.
        """
        x, coords = self._embed(x)
        if masks is None:
            return self._encode(x, coords)
        if isinstance(masks, torch.Tensor):
            return self._encode(gather_tokens(x, masks), gather_tokens(coords, masks), valid)
        valid = [None] * len(masks) if valid is None else valid
        return [self._encode(gather_tokens(x, m), gather_tokens(coords, m), v) for m, v in zip(masks, valid)]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip (or image) -> (tokens `[B, N, D]` with positions added, their grid coordinates `[B, N, 3]`)."""
        x, grid = self.patchify(x)  # [B, N, D], (t, h, w)
        if not self.use_rope:
            x = x + resize_pos_embed(self.pos_embed, self.grid, grid).to(x.dtype)
        coords = grid_coords(grid, x.device).unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, N, 3]
        return x, coords

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Pixels -> (patch tokens `[B, N, D]`, their (t, h, w) grid). An image is one repeated tubelet."""
        if x.ndim == 4:  # image: repeat over one tubelet
            x = x.unsqueeze(2).repeat(1, 1, self.tubelet_size, 1, 1)
        grid = self.grid_of(x)
        return self.patch_embed.proj(x).flatten(2).transpose(1, 2), grid

    def _encode(self, x: torch.Tensor, coords: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = _run_blocks(self.blocks, x, coords if self.use_rope else None, self.use_activation_checkpointing, valid,
                        groups=self.length_groups)
        return self.norm(x)

    def last_layers(self, x: torch.Tensor, k: int) -> list:
        """Outputs `[B, N, D]` of the last `k` blocks on the full clip, before the final norm (data2vec-style
        targets average them)."""
        x, coords = self._embed(x)
        return _run_blocks(self.blocks, x, coords if self.use_rope else None, False, keep_last=k)


# Forward-diffusion steps of the reference predictor without mask tokens: beta grows linearly 0.5 -> 1.0
# over 1000 steps and alpha_t = prod_{s <= t} (1 - beta_s), so alpha_0 = 0.5 and alpha_t < 2^-(t+1).
DIFFUSION_ALPHAS = torch.cumprod(1.0 - (0.5 + 0.5 * torch.arange(1000, dtype=torch.float64) / 1000), 0)


def diffuse(x: torch.Tensor) -> torch.Tensor:
    """x `[B, K, d]` -> sqrt(alpha_t) layer_norm(x) + sqrt(1 - alpha_t) noise, t drawn per sample from
    torch's RNG (the reference's `diffusion`, its default beta range)."""
    t = torch.randint(0, len(DIFFUSION_ALPHAS), (x.shape[0],))
    alpha = DIFFUSION_ALPHAS[t].to(x.device, x.dtype).view(-1, 1, 1)
    x = F.layer_norm(x, (x.shape[-1],))
    return alpha.sqrt() * x + (1.0 - alpha).sqrt() * torch.randn_like(x)


class Predictor(nn.Module):
    """Narrow ViT that predicts target-token features from context tokens (V-JEPA predictor).

    Context tokens are projected D -> d and get the predictor's own positions; each target position
    becomes a learnable mask token (one per mask config) plus its position; all attend jointly, and the
    outputs at target positions are projected back d -> D. Without mask tokens (`use_mask_tokens=False`,
    the reference's other mode) a target query is the target's own feature projected D -> d and noised
    by `diffuse` (almost always to pure noise: alpha_t falls below 1e-3 by t = 10), plus its position.

    Args:
        grid: (t, h, w) token grid of the clip. embed_dim: encoder width D. pred_embed_dim: width d.
        depth, num_heads, mlp_ratio: predictor transformer shape.
        num_mask_tokens: one learnable query token per mask config.
        zero_init_mask_tokens: start the mask tokens at zero (reference default) instead of trunc-normal.
        use_mask_tokens: False = no mask tokens; queries from noised target features (`forward`'s targets).
        length_groups: padded rows run in this many groups of similar length (`_run_blocks_grouped`).
    """

    def __init__(self, grid: tuple[int, int, int], embed_dim: int = 768, pred_embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, init_std: float = 0.02, num_mask_tokens: int = 2,
                 zero_init_mask_tokens: bool = True, uniform_power: bool = False, use_rope: bool = False,
                 use_activation_checkpointing: bool = False, use_mask_tokens: bool = True, length_groups: int = 1):
        super().__init__()
        self.grid = tuple(grid)
        self.length_groups = length_groups
        self.use_rope = use_rope
        self.use_activation_checkpointing = use_activation_checkpointing
        self.predictor_embed = nn.Linear(embed_dim, pred_embed_dim)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, pred_embed_dim)) for _ in range(num_mask_tokens if use_mask_tokens else 0)
        )
        if not use_rope:
            table = sincos_3d(pred_embed_dim, *self.grid, uniform_power=uniform_power).unsqueeze(0)
            self.predictor_pos_embed = nn.Parameter(table, requires_grad=False)  # [1, N, d]
        dpr = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]  # stochastic depth grows with depth
        self.predictor_blocks = nn.ModuleList(
            Block(pred_embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i], use_rope=use_rope)
            for i in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(pred_embed_dim, eps=1e-6)
        self.predictor_proj = nn.Linear(pred_embed_dim, embed_dim)
        _init_weights(self, init_std)
        _rescale_residual_projections(self.predictor_blocks)
        if not zero_init_mask_tokens:
            for t in self.mask_tokens:
                trunc_normal_(t, std=init_std)

    def forward(self, z: Union[torch.Tensor, Sequence[torch.Tensor]], masks_ctx: Masks, masks_tgt: Masks,
                mask_index: int = 0, targets: Union[torch.Tensor, Sequence[torch.Tensor], None] = None,
                valid_ctx: Masks = None, valid_tgt: Masks = None):
        """z `[B, K_ctx, D]` at `masks_ctx [B, K_ctx]` -> predictions `[B, K_tgt, D]` at `masks_tgt`.

        Lists of (z, masks_ctx, masks_tgt) run once per mask config, mask config i using mask token i.
        `targets` (`[B, K_tgt, D]` or a list of them): the target features, read only without mask tokens.
        `valid_ctx` / `valid_tgt` (bool, like the masks; None = no padding) mark real tokens of padded masks.
        """
        if len(self.mask_tokens) == 0 and targets is None:
            raise ValueError("a predictor without mask tokens (model.use_mask_tokens=false) needs the targets")
        if not isinstance(z, torch.Tensor):
            n = len(z)
            tgts = targets if targets is not None else [None] * n
            valid_ctx = [None] * n if valid_ctx is None else valid_ctx
            valid_tgt = [None] * n if valid_tgt is None else valid_tgt
            return [self._predict(zi, mc, mt, i, ti, vc, vt) for i, (zi, mc, mt, ti, vc, vt)
                    in enumerate(zip(z, masks_ctx, masks_tgt, tgts, valid_ctx, valid_tgt))]
        return self._predict(z, masks_ctx, masks_tgt, mask_index, targets, valid_ctx, valid_tgt)

    def _predict(self, z, masks_ctx, masks_tgt, mask_index, targets=None, valid_ctx=None, valid_tgt=None):
        B, K_ctx, _ = z.shape
        x = self.predictor_embed(z)  # [B, K_ctx, d]
        if len(self.mask_tokens):
            query = self.mask_tokens[mask_index].to(x.dtype).expand(B, masks_tgt.shape[1], -1)  # [B, K_tgt, d]
        else:
            query = diffuse(self.predictor_embed(targets.to(x.dtype)))  # [B, K_tgt, d]
        coords = None
        if self.use_rope:
            all_coords = grid_coords(self.grid, z.device).unsqueeze(0).expand(B, -1, -1)  # [B, N, 3]
            coords = torch.cat([gather_tokens(all_coords, masks_ctx), gather_tokens(all_coords, masks_tgt)], 1)
        else:
            pos = self.predictor_pos_embed.to(x.dtype).expand(B, -1, -1)  # [B, N, d]
            x = x + gather_tokens(pos, masks_ctx)
            query = query + gather_tokens(pos, masks_tgt)
        x = torch.cat([x, query], dim=1)  # [B, K_ctx + K_tgt, d]
        valid = None
        if valid_ctx is not None or valid_tgt is not None:
            valid = torch.cat([torch.ones_like(masks_ctx, dtype=torch.bool) if valid_ctx is None else valid_ctx,
                               torch.ones_like(masks_tgt, dtype=torch.bool) if valid_tgt is None else valid_tgt], 1)
        x = _run_blocks(self.predictor_blocks, x, coords, self.use_activation_checkpointing, valid,
                        groups=self.length_groups)
        x = self.predictor_norm(x[:, K_ctx:])
        return self.predictor_proj(x)  # [B, K_tgt, D]


@dataclass
class ModelConfig:
    """Encoder and predictor shape (reference `model:` section).

    Args:
        model_name: a `VIT_SIZES` key (`vit_large` = ViT-L/16 for the published recipe).
        pred_depth / pred_embed_dim / pred_num_heads: predictor shape (heads default to the encoder's).
        uniform_power: equal t/h/w shares of the sin-cos table. use_rope: 3D RoPE instead (V-JEPA 2).
        use_mask_tokens: query targets with learnable mask tokens (true, the published recipe) or with the
            targets' own features noised to (nearly) pure noise (false, see `Predictor`).
        zero_init_mask_tokens: mask tokens start at zero.
        use_activation_checkpointing: trade compute for memory (large sizes on GPU).
        length_groups: with padded masks (`mask.N.pad_to_longest`), run a batch's rows in this many groups
            of similar length, each cut to its longest row, so padding costs compute only within a group
            (1 = one padded batch). No effect on truncated masks, the published default.
    """

    model_name: str = "vit_large"
    pred_depth: int = 12
    pred_embed_dim: int = 384
    pred_num_heads: Optional[int] = None
    uniform_power: bool = True
    use_rope: bool = False
    use_mask_tokens: bool = True
    zero_init_mask_tokens: bool = True
    drop_path_rate: float = 0.0
    use_activation_checkpointing: bool = False
    length_groups: int = 1

    def __post_init__(self):
        if self.length_groups < 1:
            raise ValueError(f"model.length_groups must be >= 1, got {self.length_groups}")


def vit_size(name: str) -> ViTSize:
    if name not in VIT_SIZES:
        raise ValueError(f"unknown model_name {name!r}; valid: {sorted(VIT_SIZES)}")
    return VIT_SIZES[name]


def build_encoder(cfg: ModelConfig, *, img_size: int, num_frames: int, patch_size: int,
                  tubelet_size: int) -> VisionTransformer:
    size = vit_size(cfg.model_name)
    return VisionTransformer(
        img_size=img_size, num_frames=num_frames, patch_size=patch_size, tubelet_size=tubelet_size,
        embed_dim=size.embed_dim, depth=size.depth, num_heads=size.num_heads, mlp_ratio=size.mlp_ratio,
        drop_path_rate=cfg.drop_path_rate, uniform_power=cfg.uniform_power, use_rope=cfg.use_rope,
        use_activation_checkpointing=cfg.use_activation_checkpointing, length_groups=cfg.length_groups,
    )


def build_predictor(cfg: ModelConfig, encoder: VisionTransformer, num_mask_tokens: int) -> Predictor:
    return Predictor(
        grid=encoder.grid, embed_dim=encoder.embed_dim, pred_embed_dim=cfg.pred_embed_dim, depth=cfg.pred_depth,
        num_heads=cfg.pred_num_heads or encoder.num_heads, num_mask_tokens=num_mask_tokens,
        zero_init_mask_tokens=cfg.zero_init_mask_tokens, uniform_power=cfg.uniform_power, use_rope=cfg.use_rope,
        use_activation_checkpointing=cfg.use_activation_checkpointing, use_mask_tokens=cfg.use_mask_tokens,
        length_groups=cfg.length_groups,
    )
