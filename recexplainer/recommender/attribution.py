"""The recommender's own attributions: how much each history item drives its score for one item.

Leave-one-out: the attribution of history position j for (history, item) is

    score(item | history) - score(item | history without position j)

so a positive value means the item at j pushes the recommender towards ``item`` (removing it lowers the
score), a negative one that it holds the recommender back. Every variant of every pair is scored in one
batched forward pass of the frozen model: a pair with a history of L items costs L + 1 sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recexplainer.recommender.base import Recommender, pad_left


@torch.no_grad()
def item_scores(
    model: Recommender,
    histories: Sequence[Sequence[int]],
    items: Sequence[int],
    users: Sequence[int] | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """(B,) the recommender's score of ``items[b]`` after ``histories[b]`` (an empty history is allowed).

    ``users`` (user indices) matter only to models with user embeddings (MF); default 0."""
    if len(histories) != len(items):
        raise ValueError(f"{len(histories)} histories but {len(items)} items")
    seq_len = model.max_len or max((len(h) for h in histories), default=1)
    out = np.empty(len(items), dtype=np.float64)
    for start in range(0, len(items), batch_size):
        sl = slice(start, start + batch_size)
        chunk = [list(h) for h in histories[sl]]
        user_ids = torch.as_tensor(list(users[sl]) if users is not None else [0] * len(chunk))
        scores = model.score(pad_left(chunk, seq_len), user_ids)  # (b, N + 1)
        rows = torch.arange(len(chunk))
        out[sl] = scores[rows, torch.as_tensor(list(items[sl]))].double().numpy()
    return out


def leave_one_out(
    model: Recommender,
    histories: Sequence[Sequence[int]],
    items: Sequence[int],
    users: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Full-history scores (B,) and, per pair, the attribution of each history position (oldest first)."""
    variants: list[list[int]] = []
    targets: list[int] = []
    owners: list[int] = []
    for b, (history, item) in enumerate(zip(histories, items, strict=True)):
        h = [int(x) for x in history]
        variants.append(h)
        variants.extend(h[:j] + h[j + 1 :] for j in range(len(h)))
        targets.extend([int(item)] * (len(h) + 1))
        owners.extend([users[b] if users is not None else 0] * (len(h) + 1))
    scores = item_scores(model, variants, targets, owners)
    full, attributions, at = np.empty(len(histories)), [], 0
    for b, history in enumerate(histories):
        n = len(history)
        full[b] = scores[at]
        attributions.append(scores[at] - scores[at + 1 : at + 1 + n])
        at += n + 1
    return full, attributions


def top_attributed(history: Sequence[int], attributions: np.ndarray, answer: str, k: int) -> list[int]:
    """The ``k`` distinct history items that most support the recommender's ``answer``: for "yes" the
    largest positive attributions (they pull the item up), for "no" the most negative ones (they hold it
    down). Items pointing the other way are left out; only when no item points the answer's way, the
    ``k`` items of largest absolute attribution are returned. Ties: the more recent item first."""
    return [item for item, _ in ranked_attributions(history, attributions, answer, k)]


def ranked_attributions(
    history: Sequence[int], attributions: np.ndarray, answer: str, k: int, fallback: bool = True
) -> list[tuple[int, float]]:
    """:func:`top_attributed` with each item's attribution (at the position it was picked from).
    ``fallback=False``: no items (instead of the largest absolute ones) where none points the answer's way."""
    sign = 1.0 if answer == "yes" else -1.0
    values = np.asarray(attributions, dtype=np.float64)
    raw = values
    if not (sign * values > 0).any():
        if not fallback:
            return []
        sign, values = 1.0, np.abs(values)
    order = sorted(range(len(history)), key=lambda j: (-sign * values[j], -j))
    out: list[tuple[int, float]] = []
    for j in order:
        if sign * values[j] <= 0 or len(out) == k:
            break
        if int(history[j]) not in {item for item, _ in out}:
            out.append((int(history[j]), float(raw[j])))
    return out
