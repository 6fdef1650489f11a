"""Alignment metrics as the paper defines them (docs/method.md, section "Evaluation"), on item ids.

Predictions are lists of matched item ids in the LLM's order (None for an output that matched no title).
Two scorings: ``recai`` follows the public reference code exactly (no deduplication: a repeated answer
keeps its slot and gains nothing; lists cut to the length asked), ``lenient`` deduplicates first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from recexplainer.recommender.metrics import hit_at_k, ndcg_at_k

# Task 2 graded relevance of the recommender's ranks 1..5 (0-based 0..4).
RANK_RELEVANCE = (1000.0, 100.0, 10.0, 1.0, 0.0)


def _dedup(predicted: Sequence[int | None]) -> list[int | None]:
    seen, out = set(), []
    for item in predicted:
        if item is not None and item in seen:
            continue
        seen.add(item)
        out.append(item)
    return out


def retrieval_rank(predicted: Sequence[int | None], target: int, k: int = 5) -> int:
    """0-based position of the recommender's top-1 among the first ``k`` distinct predictions (k if absent)."""
    top = _dedup(predicted)[:k]
    return top.index(target) if target in top else k


def retrieval_scores(predicted: Sequence[int | None], target: int, k: int = 5) -> tuple[float, float]:
    """Task 1: (HR@k, NDCG@k) of the recommender's top-1 item among the LLM's k candidates."""
    rank = torch.tensor([retrieval_rank(predicted, target, k)])
    return float(hit_at_k(rank, k)), float(ndcg_at_k(rank, k))


def ranking_ndcg(predicted: Sequence[int | None], ranked: Sequence[int]) -> float:
    """Task 2: NDCG of the LLM's order with graded relevance by the recommender's order of ``ranked``
    (relevance 1000, 100, 10, 1, 0 for its ranks 1..5); unknown or repeated outputs count 0."""
    relevance = {item: RANK_RELEVANCE[r] if r < len(RANK_RELEVANCE) else 0.0 for r, item in enumerate(ranked)}
    gains = [relevance.get(item, 0.0) for item in _dedup(predicted)[: len(ranked)]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(relevance.values(), reverse=True)
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def history_coverage(predicted: Sequence[int | None], history: Sequence[int]) -> float:
    """Task 6: share of the history's items that appear among the predicted ones (HCR)."""
    truth = set(history)
    return len(truth & {p for p in predicted if p is not None}) / len(truth) if truth else 0.0


def valid_ratio(predicted: Sequence[int | None]) -> float:
    """Share of outputs that are real catalog titles."""
    return sum(p is not None for p in predicted) / len(predicted) if predicted else 0.0


# -- the reference (RecAI) definitions: no deduplication, answers keep their positions ------------------
def first_rank(predicted: Sequence[int | None], target: int, k: int = 5) -> int:
    """0-based position of ``target`` among the first ``k`` answers, repeats included (k if absent)."""
    top = list(predicted[:k])
    return top.index(target) if target in top else k


def retrieval_scores_recai(predicted: Sequence[int | None], target: int, k: int = 5) -> tuple[float, float]:
    """Task 1 as the reference code scores it: (HR@k, NDCG@k) over the first ``k`` returned answers."""
    rank = torch.tensor([first_rank(predicted, target, k)])
    return float(hit_at_k(rank, k)), float(ndcg_at_k(rank, k))


def ranking_ndcg_recai(predicted: Sequence[int | None], ranked: Sequence[int]) -> float:
    """Task 2 over the first ``len(ranked)`` answers; a repeated item keeps its slot with gain 0."""
    relevance = {item: RANK_RELEVANCE[r] if r < len(RANK_RELEVANCE) else 0.0 for r, item in enumerate(ranked)}
    seen: set[int | None] = set()
    dcg = 0.0
    for i, item in enumerate(predicted[: len(ranked)]):
        if item not in seen:
            dcg += relevance.get(item, 0.0) / math.log2(i + 2)
        seen.add(item)
    ideal = sorted(relevance.values(), reverse=True)
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def history_coverage_recai(predicted: Sequence[int | None], history: Sequence[int]) -> float:
    """Task 6 over the first ``len(history)`` answers: the share of the history's items among them."""
    truth = set(history)
    return len(truth & set(predicted[: len(history)])) / len(truth) if truth else 0.0
