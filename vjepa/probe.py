"""Probes on a frozen encoder: attentive, linear and k-NN, plus the multi-view aggregation they share.

The attentive probe follows V-JEPA's (Bardes et al. 2024): one learned query cross-attends to the
encoder's tokens (`norm1` on the tokens, residual on the query, then an MLP), and a linear layer maps
the pooled vector to class logits. With `num_probe_blocks` > 1 the tokens first go through
`num_probe_blocks - 1` self-attention blocks (V-JEPA 2's 4-block probe). Parameter names match the
reference (`pooler.query_tokens`, `pooler.cross_attention_block.xattn.q`, `pooler.blocks.i`, `linear`),
so reference probe checkpoints load by name; the probe's LayerNorms use torch's default eps (1e-5) as
the reference probe does.

Evaluation protocol (V-JEPA): each video gives `S` temporal segments x `V` spatial views. With
`attend_across_segments` the tokens of the S segments of one view are concatenated and the probe sees
them at once (`[B, S*N, D]`), giving V logits per video; otherwise every (segment, view) is classified
alone. Either way the softmax probabilities are averaged (`average_softmax`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from vjepa.models import Block


class CrossAttention(nn.Module):
    """Queries `[B, Q, D]` attend to tokens `[B, N, D]` (SDPA).

    Args:
        dim: width. num_heads: heads. qkv_bias: bias on q and kv.
        use_proj: output projection (V-JEPA has one; V-JEPA 2's probe does not).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_proj: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim) if use_proj else nn.Identity()

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, Q, D = q.shape
        N = x.shape[1]
        h = self.num_heads
        q = self.q(q).reshape(B, Q, h, D // h).transpose(1, 2)  # [B, h, Q, D/h]
        k, v = self.kv(x).reshape(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)  # each [B, h, N, D/h]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, Q, D/h]
        return self.proj(out.transpose(1, 2).reshape(B, Q, D))

    def folded(self, q: torch.Tensor, n: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The same as `forward(q, gamma * n + beta)`, computed without projecting the N tokens.

        A few queries read many tokens: the key and value projections of every token (N x D x 2D
        multiply-adds) are most of the work, and they are linear. So each head's query is moved to the
        tokens' side instead (u = W_k^T q, D numbers), the attention weights are u . x_j (the key bias and
        beta add the same number to every score, which the softmax ignores), the tokens are averaged with
        those weights, and only the average is projected by W_v (the weights sum to 1, so the value bias
        passes through). Cost ~2 x heads x Q x N x D instead of ~2 x N x D^2: 1/head_dim as much for one
        query. `n` are the tokens layer-normed without affine (the block's norm1 weight and bias are
        `gamma`, `beta`); the result equals `forward`'s to float rounding, gradients included."""
        B, Q, D = q.shape
        h = self.num_heads
        w_k, w_v = self.kv.weight[:D].view(h, D // h, D), self.kv.weight[D:].view(h, D // h, D)
        qh = self.q(q).view(B, Q, h, D // h)
        u = torch.einsum("bqhd,hdc->bhqc", qh, w_k) * (gamma * (D // h) ** -0.5)  # [B, h, Q, D]
        attn = torch.bmm(u.reshape(B, h * Q, D), n.transpose(1, 2)).softmax(-1)  # [B, h*Q, N]
        pooled = torch.bmm(attn, n).view(B, h, Q, D) * gamma + beta  # weighted mean of the normed tokens
        out = torch.einsum("bhqc,hdc->bqhd", pooled, w_v).reshape(B, Q, D)
        if self.kv.bias is not None:
            out = out + self.kv.bias[D:]
        return self.proj(out)


class CrossAttentionBlock(nn.Module):
    """q + xattn(q, norm1(x)), then q + mlp(norm2(q)) (the reference normalises the tokens, not the query).

    With fewer query-heads than channels (Q x heads < D: V-JEPA's probe has one query) the attention runs
    `CrossAttention.folded`, which never projects the tokens; `fold=False` forces the plain computation."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, use_proj: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias, use_proj=use_proj)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.fold = True

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.fold and q.shape[1] * self.xattn.num_heads < q.shape[2]:
            n = F.layer_norm(x, x.shape[-1:], eps=self.norm1.eps)
            q = q + self.xattn.folded(q, n, self.norm1.weight, self.norm1.bias)
        else:
            q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    """`[B, N, D]` tokens -> `[B, num_queries, D]`: optional self-attention blocks on the tokens, then
    learned queries cross-attend to them.

    Args:
        embed_dim / num_heads / mlp_ratio: widths (the encoder's D; heads must divide D).
        depth: 1 = cross-attention only (V-JEPA); k > 1 adds k-1 self-attention blocks first (V-JEPA 2).
        num_queries: learned queries. use_proj: output projection in the cross-attention.
        init_std: truncated-normal std of every linear weight and the queries.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, depth: int = 1, num_queries: int = 1,
                 qkv_bias: bool = True, use_proj: bool = True, init_std: float = 0.02):
        super().__init__()
        if depth < 1:
            raise ValueError(f"num_probe_blocks must be >= 1, got {depth}")
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_layer=nn.LayerNorm) for _ in range(depth - 1)
        )
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, use_proj)
        trunc_normal_(self.query_tokens, std=init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Residual projections divided by sqrt(2 * layer) as the reference probes; the cross-attention
        # block counts as the last self-attention block's layer (layer 1 when there is none).
        for i, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))
        xblock = self.cross_attention_block
        for w in (xblock.mlp.fc2.weight, getattr(xblock.xattn.proj, "weight", None)):
            if w is not None:
                w.data.div_(math.sqrt(2.0 * max(1, depth - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        q = self.query_tokens.expand(x.shape[0], -1, -1)  # [B, Q, D]
        return self.cross_attention_block(q, x)


class AttentiveClassifier(nn.Module):
    """Attentive probe: `[B, N, D]` tokens -> `[B, num_classes]` logits (see `AttentivePooler` for Args)."""

    def __init__(self, embed_dim: int, num_heads: int, num_classes: int, depth: int = 1, mlp_ratio: float = 4.0,
                 use_proj: bool = True, init_std: float = 0.02):
        super().__init__()
        self.pooler = AttentivePooler(embed_dim, num_heads, mlp_ratio, depth, use_proj=use_proj, init_std=init_std)
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooler(x).squeeze(1))


class LinearClassifier(nn.Module):
    """Linear probe on average-pooled tokens, behind a parameter-free BatchNorm (MAE's linear probe:
    it evens out feature scales so one LR grid fits every encoder).

    Args:
        embed_dim: D. num_classes: classes.
    """

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(embed_dim, num_classes)
        trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.mean(dim=1)))  # [B, N, D] -> [B, D] -> [B, C]


PROBE_TYPES = ("attentive", "linear")


def build_probe(kind: str, embed_dim: int, num_heads: int, num_classes: int, num_probe_blocks: int = 1,
                use_proj: bool = True) -> nn.Module:
    if kind == "attentive":
        return AttentiveClassifier(embed_dim, num_heads, num_classes, depth=num_probe_blocks, use_proj=use_proj)
    if kind == "linear":
        return LinearClassifier(embed_dim, num_classes)
    raise ValueError(f"probe type must be one of {PROBE_TYPES}, got {kind!r}")


# ------------------------------------------------------------------------------------ multi-view protocol
def join_segments(tokens: torch.Tensor, attend_across_segments: bool) -> torch.Tensor:
    """Encoder tokens of every (segment, view) `[B, S, V, N, D]` -> the probe's inputs `[B, P, M, D]`:
    P = V views of S*N tokens (segments concatenated in time) when attending across segments, else
    P = S*V inputs of N tokens."""
    B, S, V, N, D = tokens.shape
    if attend_across_segments:
        return tokens.transpose(1, 2).reshape(B, V, S * N, D)
    return tokens.reshape(B, S * V, N, D)


def average_softmax(logits: torch.Tensor) -> torch.Tensor:
    """`[B, P, C]` logits of P views of each video -> `[B, C]` mean of the P softmax distributions."""
    return logits.float().softmax(dim=-1).mean(dim=1)


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """Number of rows whose label is among the top-k scores, for each k (k capped at the class count)."""
    out = {}
    for k in ks:
        top = probs.topk(min(k, probs.shape[-1]), dim=-1).indices  # [B, k]
        out[f"top{k}"] = int((top == labels[:, None]).any(dim=-1).sum())
    return out


# ------------------------------------------------------------------------------------ k-NN
@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, feats: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted k-NN (cosine similarity, votes exp(sim / T), as DINO's k-NN eval).

    train_feats `[M, D]`, train_labels `[M]`, feats `[B, D]` -> class scores `[B, C]` summing to 1.
    """
    bank = F.normalize(train_feats.float(), dim=-1)
    k = min(k, bank.shape[0])
    out = []
    for q in F.normalize(feats.float(), dim=-1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=-1)  # [b, k]
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        out.append(votes / votes.sum(dim=-1, keepdim=True))
    return torch.cat(out)
