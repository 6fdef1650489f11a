"""Counterfactual faithfulness of explanations, checked against the recommender itself (no judge).

An explanation cites history items (their titles appear in its text). Removing the cited items from the
history and re-scoring the item shows whether they drive the recommender's decision; removing as many
random history items (several draws) is the reference. Titles mentioned that are not in the history are
hallucinated citations (citation precision).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recexplainer.evaluation.matching import TitleIndex
from recexplainer.recommender.base import Recommender, pad_left


@dataclass
class Citations:
    mentioned: list[int]  # catalog items whose titles occur in the text (the explained item excluded)
    cited: list[int]  # those in the user's history
    hallucinated: list[int]  # those not in the history

    @property
    def precision(self) -> float | None:
        return len(self.cited) / len(self.mentioned) if self.mentioned else None


def citations(text: str, index: TitleIndex, history: Sequence[int], item: int) -> Citations:
    mentioned = [m for m in index.mentions(text) if m != item]
    in_history = set(int(h) for h in history)
    return Citations(
        mentioned,
        [m for m in mentioned if m in in_history],
        [m for m in mentioned if m not in in_history],
    )


@torch.no_grad()
def item_scores(model: Recommender, histories: Sequence[Sequence[int]], items: Sequence[int]) -> np.ndarray:
    """The recommender's score of ``items[b]`` after ``histories[b]`` (an empty history is allowed)."""
    seq_len = model.max_len or max((len(h) for h in histories), default=1)
    seq = pad_left([list(h) for h in histories], seq_len)
    scores = model.score(seq, torch.zeros(len(histories), dtype=torch.long))
    return scores[torch.arange(len(items)), torch.as_tensor(list(items))].numpy()


def counterfactual(
    model: Recommender,
    history: Sequence[int],
    item: int,
    cited: Sequence[int],
    n_random: int,
    seed: int,
    key: str,
) -> dict[str, float]:
    """Score change of ``item`` when the cited items leave the history vs as many random ones.

    Returns the full-history score, the change (full minus reduced) for the cited removal and the mean
    change over ``n_random`` random removals of the same size, and whether the cited removal moved the
    score more (in absolute value) than the random ones do on average.
    """
    history = [int(h) for h in history]
    cited_set = set(int(c) for c in cited)
    k = sum(1 for h in history if h in cited_set)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    variants = [history, [h for h in history if h not in cited_set]]
    for _ in range(n_random):
        drop = set(rng.choice(len(history), size=k, replace=False).tolist()) if k else set()
        variants.append([h for i, h in enumerate(history) if i not in drop])
    scores = item_scores(model, variants, [item] * len(variants))
    full, cited_delta = float(scores[0]), float(scores[0] - scores[1])
    random_deltas = scores[0] - scores[2:]
    return {
        "score": full,
        "cited_delta": cited_delta,
        "random_delta": float(random_deltas.mean()) if n_random else 0.0,
        "cited_abs": abs(cited_delta),
        "random_abs": float(np.abs(random_deltas).mean()) if n_random else 0.0,
        "cited_wins": float(abs(cited_delta) > float(np.abs(random_deltas).mean())) if n_random else 0.0,
        "n_cited": float(k),
    }
