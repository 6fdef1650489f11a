"""Matrix factorization: one embedding per user, scored against item embeddings by dot product."""

from __future__ import annotations

import torch
from torch import nn

from recexplainer.recommender.base import Recommender


class MF(Recommender):
    """The user vector is the user's embedding; the history prefix is ignored."""

    name = "mf"
    predicts_first_item = True

    def __init__(self, n_items: int, n_users: int, hidden_size: int = 64, dropout: float = 0.0):
        super().__init__()
        self.user_emb = nn.Embedding(n_users, hidden_size)
        self.item_emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        u = self.dropout(self.user_emb(users))  # (B, D)
        return u.unsqueeze(1).expand(-1, seq.shape[1], -1)  # (B, L, D)

    def user_vector(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.user_emb(users))

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight
