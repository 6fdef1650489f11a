"""A distilled student: a small SASRec trained to reproduce the target recommender's top-1 choices.

It is the non-LLM answer to "how well can a model imitate this recommender from its outputs alone":
every training prefix (the same ``prompt.max_hist_len`` items the alignment labels use) is labelled
with the target's top-1 item (history excluded), and the student learns them with a full-softmax loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recexplainer.alignment_data.labels import iter_scored_prefixes, sample_prefixes
from recexplainer.data.dataset import SequentialData
from recexplainer.recommender import SASRec, pad_left
from recexplainer.recommender.base import Recommender

log = logging.getLogger(__name__)


def teacher_labels(
    teacher: Recommender,
    data: SequentialData,
    max_hist_len: int,
    seed: int,
    max_prefixes: int | None,
    mask: str = "prefix",
) -> tuple[list[np.ndarray], np.ndarray]:
    """Training prefixes and the target's top-1 item for each (``mask``: as the alignment labels)."""
    users, ends, ranks = sample_prefixes(data, "train", None, seed)
    if max_prefixes is not None and len(users) > max_prefixes:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_prefixes, replace=False))
        users, ends, ranks = users[keep], ends[keep], ranks[keep]
    histories, labels = [], []
    for p in iter_scored_prefixes(teacher, data, "train", users, ends, ranks, max_hist_len, mask=mask):
        histories.extend(p.histories)
        labels.append(p.order[:, 0])
    return histories, np.concatenate(labels)


def distill(
    teacher: Recommender,
    data: SequentialData,
    max_hist_len: int,
    seed: int,
    hidden_size: int = 32,
    epochs: int = 10,
    lr: float = 2e-3,
    batch_size: int = 256,
    max_prefixes: int | None = 50_000,
    mask: str = "prefix",
) -> tuple[SASRec, dict[str, float]]:
    """Train the student; returns it (eval mode) and its fit statistics."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    histories, labels = teacher_labels(teacher, data, max_hist_len, seed, max_prefixes, mask)
    seqs = pad_left(histories, max_hist_len)
    targets = torch.as_tensor(labels, dtype=torch.long)
    student = SASRec(
        n_items=data.n_items,
        hidden_size=hidden_size,
        n_layers=1,
        n_heads=1,
        inner_size=2 * hidden_size,
        dropout=0.2,
        attn_dropout=0.2,
        max_len=max_hist_len,
        norm_first=True,
    )
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    student.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(seqs), generator=generator).split(batch_size):
            seq = seqs[idx]
            logits = student.score(seq, torch.zeros(len(idx), dtype=torch.long), exclude=seq)
            logits = logits.masked_fill(torch.isinf(logits), -1e9)
            loss = F.cross_entropy(logits, targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    student.eval()
    with torch.no_grad():
        agree = []
        for idx in torch.arange(len(seqs)).split(4096):
            seq = seqs[idx]
            top = student.score(seq, torch.zeros(len(idx), dtype=torch.long), exclude=seq).argmax(1)
            agree.append((top == targets[idx]).float())
    stats = {
        "train_prefixes": float(len(seqs)),
        "train_top1_agreement": float(torch.cat(agree).mean()),
        "distinct_teacher_top1": float(len(np.unique(labels))),
        "fit_s": time.perf_counter() - start,
    }
    log.info(
        "distilled student: %d prefixes, train top-1 agreement %.3f, %.1f s",
        len(seqs),
        stats["train_top1_agreement"],
        stats["fit_s"],
    )
    return student, stats


def scorer(model: Recommender, max_hist_len: int) -> Any:
    """history -> (n_items + 1,) scores of ``model`` (history items not excluded: callers decide)."""

    @torch.no_grad()
    def scores(history: Sequence[int]) -> torch.Tensor:
        seq = pad_left([list(history)], max_hist_len)
        return model.score(seq, torch.zeros(1, dtype=torch.long))[0]

    return scores
