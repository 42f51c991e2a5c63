"""Sequential encoders for the user tower: SASRec (causal softmax attention) and HSTU (pointwise
SiLU attention with a relative position bias and a fused U/V/Q/K projection).

Both map a left-padded history (B, L, D) to one output per position (B, L, D), where position t
sees positions <= t only; the user embedding is the output at the last position.

Dimension letters: B batch, L length, D model dim, H heads, Dh = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.ops import Dropout


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) boolean mask: query t may attend key s when s <= t and s is not padding.

    A padding query keeps its own key, so no row is empty (its output is never used).
    """
    L = valid.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :]  # (B, L, L)
    return (mask | torch.eye(L, dtype=torch.bool, device=valid.device)[None]).unsqueeze(1)


class SASRecBlock(nn.Module):
    """Pre-norm transformer block: causal multi-head softmax attention, then a point-wise FFN."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, L, 3, self.num_heads, D // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.dropout(self.out(a.transpose(1, 2).reshape(B, L, D)))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class HSTUBlock(nn.Module):
    """Hierarchical Sequential Transduction Unit (Zhai et al., 2024, Meta's generative-recommenders).

    U, V, Q, K = split(SiLU(W_uvqk · LN(x)));  A = SiLU(Q Kᵀ + rab(t - s)) / L  (causal);
    y = W_o (LN(A V) ⊙ U);  x + dropout(y).  Pointwise attention, no softmax: intensity of
    engagement is preserved instead of normalised away.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.max_len = max_len
        self.norm = nn.LayerNorm(dim)
        self.uvqk = nn.Linear(dim, 4 * dim)
        self.attn_norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)
        # One learned bias per head and relative distance 0..max_len-1 (keys after the query are masked).
        self.relative_bias = nn.Parameter(torch.zeros(num_heads, max_len))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        H, Dh = self.num_heads, D // self.num_heads
        u, v, q, k = F.silu(self.uvqk(self.norm(x))).split(D, dim=-1)
        q, k, v = (t.view(B, L, H, Dh).transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
        distance = (torch.arange(L, device=x.device)[:, None] - torch.arange(L, device=x.device)[None]).clamp(
            0, self.max_len - 1)  # (L, L)
        scores = q @ k.transpose(-1, -2) / math.sqrt(Dh) + self.relative_bias[:, distance]  # (B, H, L, L)
        attn = F.silu(scores).masked_fill(~mask, 0.0) / L
        a = (self.dropout(attn) @ v).transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return x + self.dropout(self.out(self.attn_norm(a) * u))


class SequentialEncoder(nn.Module):
    """A stack of SASRec or HSTU blocks over item embeddings plus learned positions.

    Args:
        kind: ``sasrec`` or ``hstu``.
        dim: model dim D. num_blocks, num_heads, dropout: the usual. max_len: longest history L.

    Example:
        >>> enc = SequentialEncoder("hstu", dim=8, num_blocks=2, num_heads=2, dropout=0.0, max_len=5)
        >>> enc(torch.randn(3, 5, 8), torch.tensor([[0, 0, 1, 1, 1]] * 3).bool()).shape
        torch.Size([3, 5, 8])

    Returns:
        (B, L, D) outputs; position t depends on valid positions <= t only.
    """

    def __init__(self, kind: str, dim: int, num_blocks: int, num_heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        if kind not in ("sasrec", "hstu"):
            raise ValueError(f"unknown sequential encoder {kind!r}: expected sasrec or hstu")
        self.position = nn.Embedding(max_len, dim)
        self.input_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(dim, num_heads, dropout) if kind == "sasrec" else HSTUBlock(dim, num_heads, dropout, max_len)
            for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        # Positions count back from the most recent item, so the last item always has position 0.
        positions = torch.arange(L - 1, -1, -1, device=x.device)
        x = self.input_dropout(x * math.sqrt(D) + self.position(positions)[None]) * valid.unsqueeze(-1)
        mask = causal_mask(valid)
        for block in self.blocks:
            x = block(x, mask) * valid.unsqueeze(-1)
        return self.final_norm(x)
