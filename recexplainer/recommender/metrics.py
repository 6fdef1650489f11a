"""Full-ranking metrics: the one definition of HR@k and NDCG@k (leave-one-out, one target per user).

rank = number of items scored strictly higher than the target (0 = top); excluded items score -inf.
HR@k = [rank < k]; NDCG@k = [rank < k] / log2(rank + 2).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def target_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores (B, N) with excluded items at -inf, target (B,) item indices -> (B,) 0-based rank."""
    target_score = scores.gather(1, target.unsqueeze(1))  # (B, 1)
    return (scores > target_score).sum(dim=1)


def hit_at_k(rank: torch.Tensor, k: int) -> torch.Tensor:
    return (rank < k).float()


def ndcg_at_k(rank: torch.Tensor, k: int) -> torch.Tensor:
    return (rank < k).float() / torch.log2(rank.float() + 2.0)


class FullRankingMetrics(Metric):
    """Accumulates HR@k / NDCG@k over batches of target ranks; states are summed across processes."""

    full_state_update = False

    def __init__(self, ks: tuple[int, ...] = (5, 10, 20)):
        super().__init__()
        self.ks = tuple(ks)
        for k in self.ks:
            self.add_state(f"hr_{k}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"ndcg_{k}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, rank: torch.Tensor) -> None:
        for k in self.ks:
            setattr(self, f"hr_{k}", getattr(self, f"hr_{k}") + hit_at_k(rank, k).double().sum())
            setattr(self, f"ndcg_{k}", getattr(self, f"ndcg_{k}") + ndcg_at_k(rank, k).double().sum())
        self.count += rank.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        out = {}
        for k in self.ks:
            out[f"hr@{k}"] = (getattr(self, f"hr_{k}") / n).float()
            out[f"ndcg@{k}"] = (getattr(self, f"ndcg_{k}") / n).float()
        return out
