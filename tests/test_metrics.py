import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG

from recexplainer.recommender.metrics import FullRankingMetrics, hit_at_k, ndcg_at_k, target_rank


def test_hand_computed_values():
    rank = torch.tensor([0, 1, 4, 10])
    assert hit_at_k(rank, 5).mean().item() == pytest.approx(0.75)
    assert ndcg_at_k(rank, 5).mean().item() == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert ndcg_at_k(rank, 20).tolist()[-1] == pytest.approx(1 / math.log2(12))


def test_target_rank_counts_strictly_higher_and_ignores_excluded():
    scores = torch.tensor([[float("-inf"), 0.9, 0.1, 0.5, float("-inf")]])
    assert target_rank(scores, torch.tensor([3])).item() == 1
    assert target_rank(scores, torch.tensor([1])).item() == 0
    assert target_rank(scores, torch.tensor([2])).item() == 2  # the two -inf items never outrank it


@pytest.mark.parametrize("k", [5, 10, 20])
def test_matches_torchmetrics_retrieval_metrics(k):
    torch.manual_seed(0)
    B, N = 64, 50
    scores = torch.randn(B, N)
    target = torch.randint(0, N, (B,))
    excluded = torch.rand(B, N) < 0.2
    excluded[torch.arange(B), target] = False
    masked = scores.masked_fill(excluded, float("-inf"))
    rank = target_rank(masked, target)

    keep = ~excluded
    preds = scores[keep]
    relevant = torch.zeros(B, N, dtype=torch.bool)
    relevant[torch.arange(B), target] = True
    indexes = torch.arange(B).unsqueeze(1).expand(B, N)[keep]
    tm_hr = RetrievalHitRate(top_k=k)(preds, relevant[keep], indexes=indexes)
    tm_ndcg = RetrievalNormalizedDCG(top_k=k)(preds, relevant[keep], indexes=indexes)
    assert hit_at_k(rank, k).mean().item() == pytest.approx(tm_hr.item(), abs=1e-6)
    assert ndcg_at_k(rank, k).mean().item() == pytest.approx(tm_ndcg.item(), abs=1e-6)


def test_accumulation_over_batches_equals_one_shot():
    rank = torch.randint(0, 40, (101,))
    whole, parts = FullRankingMetrics(), FullRankingMetrics()
    whole.update(rank)
    for chunk in rank.split(17):
        parts.update(chunk)
    a, b = whole.compute(), parts.compute()
    assert a.keys() == b.keys() == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)}
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item())
    assert a["hr@10"].item() == pytest.approx((rank < 10).float().mean().item())
