"""The interface every target recommender offers to the later stages.

Histories are left-padded item-index tensors (0 = padding, the latest item last). A recommender gives:
the item embedding table, a user vector for any history prefix, and scores over all items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def pad_left(histories: Sequence[Sequence[int] | np.ndarray], max_len: int | None = None) -> torch.Tensor:
    """Left-pad item sequences with 0 into a (B, L) tensor, keeping the last ``max_len`` items."""
    seqs = [np.asarray(h, dtype=np.int64) for h in histories]
    if max_len is not None:
        seqs = [s[-max_len:] for s in seqs]
    width = max(1, max((len(s) for s in seqs), default=1))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        if len(s):
            out[row, width - len(s) :] = s
    return torch.from_numpy(out)


class Recommender(nn.Module):
    """Base class: subclasses implement ``forward`` (per-position features) and ``item_embeddings``."""

    name: str = "base"
    predicts_first_item: bool = False  # True: the first item of a sequence is a training target too
    max_len: int | None = None  # history positions the model reads (None: it ignores the history)

    def forward(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Features at every position: seq (B, L), users (B,) -> (B, L, D)."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, D); row 0 is padding."""
        raise NotImplementedError

    def user_vector(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """User representation after the history prefix: (B, L), (B,) -> (B, D)."""
        return self.forward(seq, users)[:, -1]

    def score(
        self, seq: torch.Tensor, users: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores over all items (B, n_items + 1); padding and the items in ``exclude`` (B, K) get -inf."""
        with torch.autocast(device_type=seq.device.type, enabled=False):  # fp32 scores: no bf16 rank ties
            return self.score_user_vectors(self.user_vector(seq, users).float(), exclude)

    def score_user_vectors(
        self, user_vectors: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, D) user vectors -> (B, n_items + 1) scores; padding and ``exclude`` (B, K) items get -inf."""
        scores = user_vectors.float() @ self.item_embeddings().float().T  # (B, N + 1)
        scores[:, 0] = float("-inf")
        if exclude is not None:
            scores = scores.scatter(1, exclude, float("-inf"))
        return scores
