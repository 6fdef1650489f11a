"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recexplainer.recommender.base import Recommender


class Dropout(nn.Module):
    """Dropout with a faster mask on the CPU: the keep mask comes from 16-bit random integers (``p``
    rounded to 1/65,536) instead of ``bernoulli_``, which took a quarter of SASRec's training step on a
    2-core CPU (benchmarks/README.md). Other devices use ``F.dropout``."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self._threshold = round(p * 65536) - 32768  # P(r < threshold) = p for r uniform on int16
        self._scale = 1.0 / (1.0 - round(p * 65536) / 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        r = torch.randint(-32768, 32768, x.shape, dtype=torch.int16, device=x.device)
        return x * (r >= self._threshold).to(x.dtype).mul_(self._scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, n_heads: int, attn_dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q, k, v = (
            t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, h, L, d)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, h, L, d)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, hidden_size, n_heads, inner_size, dropout, attn_dropout, norm_first):
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = nn.LayerNorm(hidden_size)
        self.attn = CausalSelfAttention(hidden_size, n_heads, attn_dropout)
        self.ln2 = nn.LayerNorm(hidden_size)
        self.ff = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(inner_size, hidden_size),
        )
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attn(self.ln1(x), mask))
            return x + self.dropout(self.ff(self.ln2(x)))
        x = self.ln1(x + self.dropout(self.attn(x, mask)))
        return self.ln2(x + self.dropout(self.ff(x)))


class SASRec(Recommender):
    """Causal transformer over left-padded item histories; the last position's output is the user vector."""

    name = "sasrec"

    def __init__(
        self,
        n_items: int,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.2,
        attn_dropout: float = 0.2,
        max_len: int = 50,
        norm_first: bool = True,
    ):
        super().__init__()
        self.max_len = max_len
        self.hidden_size = hidden_size
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden_size)
        self.emb_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(hidden_size, n_heads, inner_size, dropout, attn_dropout, norm_first)
            for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_size) if norm_first else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def log2feats(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) left-padded, L <= max_len -> (B, L, D); padded positions are zero."""
        B, L = seq.shape
        if L > self.max_len:
            seq, L = seq[:, -self.max_len :], self.max_len
        keep = (seq != 0).unsqueeze(-1)  # (B, L, 1)
        positions = torch.arange(self.max_len - L, self.max_len, device=seq.device)  # latest item: max_len-1
        x = self.item_emb(seq) * math.sqrt(self.hidden_size) + self.pos_emb(positions)  # (B, L, D)
        x = self.emb_dropout(x) * keep
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        mask = (causal & keep.transpose(1, 2)) | eye  # (B, L, L); a query always sees itself (no NaN rows)
        mask = mask.unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.final_norm(x) * keep

    def forward(self, seq: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.log2feats(seq)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight
