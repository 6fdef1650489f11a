"""Labels from the frozen recommender, computed in batches on tensors.

A *prefix* is the last ``max_hist_len`` items before a position of a user's sequence. The recommender
scores every item for it, the prefix's own items masked out; every user-task label is read off that
ranking. Training prefixes end inside the training part (the next item is a training item, and the
full training part is the validation prefix), validation and test prefixes end at the user's held-out
positions, so no evaluation prefix is ever trained on.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from recexplainer.data.dataset import SequentialData
from recexplainer.recommender.base import Recommender, pad_left


def task_rng(seed: int, name: str, purpose: str = "labels") -> np.random.Generator:
    """A generator per (seed, task, purpose): adding or removing a task never changes another's data."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


@dataclass
class Prefixes:
    """Scored prefixes of one split; row r of every array belongs to the same prefix."""

    split: str
    offset: int  # global row index of this batch's first prefix
    users: np.ndarray  # (P,) user index
    ends: np.ndarray  # (P,) position in the user's sequence the prefix ends before (exclusive)
    rank_in_user: np.ndarray  # (P,) 0 for a user's first sampled prefix, 1 for the second, ...
    histories: list[np.ndarray]  # P prefixes of at most max_hist_len items, oldest first
    order: np.ndarray  # (P, N) item indices by decreasing score; masked items last
    ranks: np.ndarray  # (P, N + 1) rank of every item (0 = top); padding and masked items rank last
    n_valid: np.ndarray  # (P,) number of rankable items (catalog minus the prefix's items)
    scores: np.ndarray  # (P, N + 1) scores, -inf for padding and prefix items
    user_vectors: torch.Tensor  # (P, D)


def prefix_ends(data: SequentialData, user: int, split: str) -> np.ndarray:
    """Candidate prefix ends of ``user`` in ``split``: train: 1..n-3; valid: n-2; test: n-1."""
    n = len(data.sequence(user))
    if split == "train":
        return np.arange(1, n - 2)
    return np.array([n - 2 if split == "valid" else n - 1])


def sample_prefixes(
    data: SequentialData, split: str, per_user: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users, prefix ends and per-user sample index; ``per_user=None`` takes every candidate end."""
    rng = np.random.default_rng([seed, zlib.crc32(f"prefixes/{split}".encode())])
    users, ends, ranks = [], [], []
    for u in range(data.n_users):
        candidates = prefix_ends(data, u, split)
        if per_user is not None and len(candidates) > per_user:
            candidates = rng.permutation(candidates)[:per_user]  # first k of one fixed permutation
        elif split == "train":
            candidates = rng.permutation(candidates)
        users.extend([u] * len(candidates))
        ends.extend(candidates.tolist())
        ranks.extend(range(len(candidates)))
    return np.array(users, dtype=np.int64), np.array(ends, dtype=np.int64), np.array(ranks, dtype=np.int64)


MASKS = ("prefix", "history")


@torch.no_grad()
def iter_scored_prefixes(
    model: Recommender,
    data: SequentialData,
    split: str,
    users: np.ndarray,
    ends: np.ndarray,
    rank_in_user: np.ndarray,
    max_hist_len: int,
    batch_size: int = 1024,
    mask: str = "prefix",
) -> Iterator[Prefixes]:
    """Run the recommender over the prefixes in batches; yield each batch with every item ranked.

    ``mask``: the items the recommender may not return: ``prefix`` (the items it is shown, the paper's
    protocol) or ``history`` (every item the user consumed before the position, as the recommender's own
    evaluation masks). Batches keep memory flat: (batch, n_items) scores at a time.
    """
    if mask not in MASKS:
        raise ValueError(f"prompt.mask={mask!r}; choose one of {', '.join(MASKS)}")
    seq_len = model.max_len or max_hist_len
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        chunk = [
            data.sequence(int(u))[max(0, int(e) - max_hist_len) : int(e)]
            for u, e in zip(users[sl], ends[sl], strict=True)
        ]
        uv = model.user_vector(pad_left(chunk, seq_len), torch.from_numpy(users[sl])).float()  # (B, D)
        masked = (
            chunk
            if mask == "prefix"
            else [data.sequence(int(u))[: int(e)] for u, e in zip(users[sl], ends[sl], strict=True)]
        )
        scores = model.score_user_vectors(uv, exclude=pad_left(masked))  # (B, N + 1)
        order = (torch.argsort(scores[:, 1:], dim=1, descending=True, stable=True) + 1).numpy()  # (B, N)
        ranks = np.full(scores.shape, order.shape[1], dtype=np.int64)  # (B, N + 1)
        np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :], axis=1)
        n_valid = torch.isfinite(scores[:, 1:]).sum(1).numpy()
        yield Prefixes(
            split,
            start,
            users[sl],
            ends[sl],
            rank_in_user[sl],
            chunk,
            order,
            ranks,
            n_valid,
            scores.numpy(),
            uv,
        )


def band(
    prefixes: Prefixes, row: int, top_fraction: float, bottom_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Items of the recommender's top band and bottom band for one prefix, each sorted by item id.

    Sorted by id, not by score: an item drawn from a band then changes only when an item crosses the band's
    edge, not when two near-tied items inside it swap places (the last bits of a score differ between CPUs),
    so the same configuration gives nearly the same examples on different machines.
    """
    n = int(prefixes.n_valid[row])
    top = max(1, int(np.floor(top_fraction * n)))
    bottom = max(1, int(np.floor(bottom_fraction * n)))
    ranked = prefixes.order[row, :n]
    return np.sort(ranked[:top]), np.sort(ranked[n - bottom :])


def pick(rng: np.random.Generator, items: np.ndarray) -> int | None:
    """One of ``items`` uniformly, or None if empty; always exactly one draw from ``rng``, so a band of
    another length (or an empty one) in one row never shifts the draws of the rows after it."""
    u = rng.random()  # in [0, 1)
    return int(items[min(int(u * len(items)), len(items) - 1)]) if len(items) else None


def most_similar_items(item_embeddings: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """(N + 1,) for each item the other item with the largest embedding dot product (index 0 unused)."""
    emb = item_embeddings.float()
    out = np.zeros(emb.shape[0], dtype=np.int64)
    for start in range(1, emb.shape[0], batch_size):
        sims = emb[start : start + batch_size] @ emb.T  # (B, N + 1)
        sims[:, 0] = float("-inf")
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = float("-inf")  # not the item itself
        out[start : start + sims.shape[0]] = sims.argmax(1).numpy()
    return out
