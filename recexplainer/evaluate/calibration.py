"""The decision threshold of an LLM's yes/no answers, fit on validation examples.

An aligned LLM's P(yes) ranks pairs well before it is calibrated: two training runs of the same recipe that
differ only in their seed can say yes to 35% and to 53% of the same balanced pairs with about the same ranking
quality. Reading "yes" as P(yes) > 0.5 then throws away what the model learned. Like the threshold baselines
(popularity, item-kNN, student: a threshold on the item's value fit on the training examples), the LLM's
decision threshold is fit on examples the test never sees: the validation split's examples of the same task,
labelled by the recommender, one forward pass each. Two rules:

- ``prior`` (the default): the threshold at which the LLM says yes as often as the recommender does on those
  examples (a quantile of P(yes)); it uses only the ranking and the share of yes labels, so it moves the
  threshold little when the model is already calibrated and it does not chase the noise of a few examples;
- ``accuracy``: the threshold that maximises accuracy of "yes iff P(yes) > t" there (ties go to the t nearest
  0.5); tighter on large validation sets, noisier on small ones.

The evaluate stage reports the calibrated decisions next to the reference ones (``task3/acc/calibrated``
beside ``task3/acc``, which keeps the reference rule P(yes) >= P(no)); the explain stage decides with the
calibrated threshold, so that an explanation starts from the recommender's decision more often.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

REFERENCE_THRESHOLD = 0.5
RULES = ("prior", "accuracy")


def _checked(p_yes: Sequence[float], yes: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_yes, dtype=np.float64)
    y = np.asarray(yes, dtype=bool)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"fit_threshold: {p.shape} probabilities for {y.shape} labels")
    if not len(p):
        raise ValueError("fit_threshold: no examples to fit the decision threshold on")
    return p, y


def fit_threshold(p_yes: Sequence[float], yes: Sequence[bool], rule: str = "prior") -> float:
    """The decision threshold t ("yes iff p > t") by ``rule`` (module docstring)."""
    p, y = _checked(p_yes, yes)
    if rule == "prior":
        return prior_threshold(p, y)
    if rule == "accuracy":
        return accuracy_threshold(p, y)
    raise ValueError(f"unknown calibration rule {rule!r}; choose one of {', '.join(RULES)}")


def prior_threshold(p_yes: Sequence[float], yes: Sequence[bool]) -> float:
    """The t at which "yes iff p > t" says yes to as many examples as have a yes label: midway between the k-th
    and the (k+1)-th largest p, k the number of yes labels (0.5 when that gap contains 0.5)."""
    p, y = _checked(p_yes, yes)
    ranked = np.sort(p)[::-1]
    k = int(y.sum())
    upper = ranked[k - 1] if k > 0 else np.inf  # the smallest p that should be a yes
    lower = ranked[k] if k < len(ranked) else -np.inf  # the largest p that should be a no
    if lower < REFERENCE_THRESHOLD < upper:
        return REFERENCE_THRESHOLD
    if np.isinf(upper):
        return float(lower)  # no yes label: nothing above the largest p
    if np.isinf(lower):
        return float(upper - 1e-6)  # only yes labels: everything above
    return float((upper + lower) / 2)


def accuracy_threshold(p_yes: Sequence[float], yes: Sequence[bool]) -> float:
    """The t that maximises the accuracy of "yes iff p > t" over the examples; among equally accurate
    thresholds the one nearest 0.5 (so that a model already calibrated keeps 0.5). Candidates: 0.5 and the
    midpoints between consecutive distinct values, below the smallest and above the largest."""
    p, y = _checked(p_yes, yes)
    values = np.unique(p)
    candidates = np.concatenate(
        [[REFERENCE_THRESHOLD, values[0] - 1e-6, values[-1]], (values[1:] + values[:-1]) / 2]
    )
    accuracy = ((p[None, :] > candidates[:, None]) == y[None, :]).mean(axis=1)
    best = np.flatnonzero(accuracy >= accuracy.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - REFERENCE_THRESHOLD))]])


def sample_rows(rows: list[dict[str, Any]], n: int, seed: int, tag: str) -> list[dict[str, Any]]:
    """Up to ``n`` of ``rows``, a seeded sample in file order."""
    if len(rows) <= n:
        return rows
    keep = set(random.Random(f"{seed}/calibration/{tag}").sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i in keep]


@contextmanager
def split_users(predictor: Any, users: torch.Tensor) -> Iterator[None]:
    """The predictor reads user vectors from ``users`` (another split's table) while the block runs."""
    previous = predictor.users
    predictor.users = users
    try:
        yield
    finally:
        predictor.users = previous


def p_yes_in_batches(
    answer: Callable[[list[dict[str, Any]]], list[float]], rows: list[dict[str, Any]], batch_size: int
) -> list[float]:
    """``answer`` (a batch of rows -> P(yes) per row) over ``rows``, in batches; no gradients."""
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            out.extend(float(p) for p in answer(rows[start : start + batch_size]))
    return out


def summary(p_yes: Sequence[float], yes: Sequence[bool], threshold: float) -> dict[str, float]:
    """The fitted threshold and the validation accuracy it reaches, next to the reference rule's."""
    p, y = np.asarray(p_yes), np.asarray(yes, dtype=bool)
    return {
        "threshold": threshold,
        "valid_n": float(len(p)),
        "valid_acc": float(((p >= REFERENCE_THRESHOLD) == y).mean()),
        "valid_acc/calibrated": float(((p > threshold) == y).mean()),
    }
