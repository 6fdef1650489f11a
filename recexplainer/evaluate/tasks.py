"""What each task kind is evaluated on: its metric prefix, answer type and per-example scoring.

A prediction for one example is a dict with ``items`` (matched item ids in the answer's order, None for
an output that matched no title), ``items_fuzzy`` (the same under the fuzzy rule) and, for yes/no
tasks, ``p_yes``. :func:`score` turns it into that example's metric values; the reported metrics are
means over examples (plus the answer-diversity counts of :func:`answer_diversity`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recexplainer.evaluate.metrics import (
    history_coverage,
    ranking_ndcg,
    retrieval_scores,
    valid_ratio,
)


@dataclass(frozen=True)
class TaskKind:
    prefix: str  # metric-name prefix (task1, task2, ...: the names every report and metrics file uses)
    answer: str  # "titles": generated list of titles; "yes_no": next-token probability
    metrics: tuple[str, ...]


KINDS: dict[str, TaskKind] = {
    "retrieval": TaskKind("task1", "titles", ("hr@5", "ndcg@5", "hr@5_fuzzy", "ndcg@5_fuzzy", "valid_ratio")),
    "ranking": TaskKind("task2", "titles", ("ndcg@5", "ndcg@5_fuzzy", "valid_ratio")),
    "interest": TaskKind("task3", "yes_no", ("acc", "yes_rate")),
    "interest_hard": TaskKind("task3_hard", "yes_no", ("acc", "yes_rate")),
    "history": TaskKind("task6", "titles", ("hcr", "hcr_fuzzy", "valid_ratio")),
    "item_recovery": TaskKind("item_recovery", "titles", ("acc", "acc_fuzzy", "valid_ratio")),
    "item_similar": TaskKind("item_similar", "titles", ("acc", "acc_fuzzy", "valid_ratio")),
}


def metric_prefix(task: str, kind: str) -> str:
    """``task1`` ... for the standard tasks; a renamed or extra task of a kind keeps its own name."""
    return KINDS[kind].prefix if task == kind else task


def titles_asked(kind: str, row: dict[str, Any]) -> int:
    """How many titles a correct answer lists (bounds generation length and constrained decoding)."""
    if kind == "ranking":
        return len(row["labels"]["shown"])
    if kind == "history":
        return len(row["labels"]["items"])
    return 1


def score(kind: str, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
    """The example's metric values (names without the task prefix)."""
    labels = row["labels"]
    if KINDS[kind].answer == "yes_no":
        said_yes = prediction["p_yes"] > 0.5
        return {"acc": float(said_yes == (labels["answer"] == "yes")), "yes_rate": float(said_yes)}
    items: Sequence[int | None] = prediction["items"] or [None]
    fuzzy: Sequence[int | None] = prediction.get("items_fuzzy") or items
    out = {"valid_ratio": valid_ratio(items)}
    if kind == "retrieval":
        out["hr@5"], out["ndcg@5"] = retrieval_scores(items, labels["item"], 5)
        out["hr@5_fuzzy"], out["ndcg@5_fuzzy"] = retrieval_scores(fuzzy, labels["item"], 5)
    elif kind == "ranking":
        out["ndcg@5"] = ranking_ndcg(items, labels["items"])
        out["ndcg@5_fuzzy"] = ranking_ndcg(fuzzy, labels["items"])
    elif kind == "history":
        out["hcr"] = history_coverage(items, labels["items"])
        out["hcr_fuzzy"] = history_coverage(fuzzy, labels["items"])
    else:  # item_recovery, item_similar: the first title is the answer
        out["acc"] = float(items[0] == labels["item"])
        out["acc_fuzzy"] = float(fuzzy[0] == labels["item"])
    return out


def answer_diversity(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Distinct first answers and the share of the most common one: a model (or baseline) that answers
    a constant scores well on skewed labels, and these numbers show it."""
    firsts = []
    for r in records:
        items, titles = r.get("items") or [None], r.get("titles") or [""]
        firsts.append(items[0] if items[0] is not None else "text:" + (titles[0] if titles else "").lower())
    if not firsts:
        return {}
    counts = Counter(firsts)
    return {
        "distinct_answers": float(len(counts)),
        "top_answer_share": counts.most_common(1)[0][1] / len(firsts),
    }
