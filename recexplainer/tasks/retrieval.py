"""Task 1, retrieval: the LLM names the item the recommender ranks first for a user.

Label: the recommender's top-1 over the whole catalog (the prefix's items masked); the training target is its
title, or with ``target_k`` > 1 the titles of its top ``target_k`` in its order (more of the recommender's
ranking per example; the reference scoring then reads each returned sequence's first title, exact, instead of
the sequence whole). Answer: beam search,
one title per returned sequence. Metrics: HR@5 and NDCG@5 of the top-1 among the candidates: the first
five returned sequences, each whole (the reference scoring), or the first five distinct parsed titles
(lenient; exact and fuzzy title matching); the share of real titles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recexplainer.alignment_data.templates import TemplateError
from recexplainer.tasks.base import Column, TaskKind, predicted, register, strict_items
from recexplainer.tasks.metrics import retrieval_scores, retrieval_scores_recai, valid_ratio
from recexplainer.text import distinct_titles, parse_list, split_strict

K = 5  # candidates per answer


@register
class Retrieval(TaskKind):
    name = "retrieval"
    order = 1
    fields = frozenset({"user"})
    required = frozenset({"user"})
    label_statistics = True
    prefix, answer = "task1", "titles"
    metrics = ("hr@5", "ndcg@5", "hr@5_fuzzy", "ndcg@5_fuzzy", "valid_ratio")
    strict = ("hr@5", "ndcg@5")
    beam_search = diversity = True
    columns = (
        Column("T1 HR@5", "task 1 HR@5", "task1/hr@5"),
        Column("T1 NDCG@5", "task 1 NDCG@5", "task1/ndcg@5"),
    )
    checks = (
        Column("T1 valid", "task 1 valid titles", "task1/valid_ratio"),
        Column("T1 distinct", "task 1 distinct answers", "task1/distinct_answers"),
    )

    def validate(self, name: str, task: Any) -> None:
        super().validate(name, task)
        if task.target_k < 1:  # typed int by the config schema
            raise TemplateError(
                f"tasks.{name}.target_k={task.target_k} must be a whole number >= 1 (1: the top-1 title)"
            )

    def examples(self, builder, p, row, key, user, base):
        top1 = int(p.order[row, 0])
        labels = {"item": top1, "score": float(p.scores[row, top1])}
        k = min(int(builder.task.target_k), int(p.n_valid[row]))
        if k > 1:  # the recommender's top k in its order, joined as every title list is
            ranked = [int(i) for i in p.order[row, :k]]
            labels["target_items"] = ranked
            target = builder.renderer.title_list(ranked)
        else:
            target = builder.titles[top1]
        text, slots = user
        return [builder.example(p.split, key, {"user": text}, {"user": slots}, target, labels=labels, **base)]

    def parse(self, texts: Sequence[str], separator: str, k: int) -> list[str]:
        return distinct_titles([(parse_list(t, separator, limit=1) or [""])[0] for t in texts], k)

    def score(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        items, fuzzy = predicted(prediction)
        target = row["labels"]["item"]
        out = {"valid_ratio": valid_ratio(items)}
        out["hr@5"], out["ndcg@5"] = retrieval_scores(items, target, K)
        out["hr@5_fuzzy"], out["ndcg@5_fuzzy"] = retrieval_scores(fuzzy, target, K)
        return out

    def strict_answers(self, texts: Sequence[str], separator: str, row: dict[str, Any] | None) -> list[str]:
        if row is not None and "target_items" in row["labels"]:
            # trained to list the top k (tasks.retrieval.target_k > 1): each sequence's first title, whole
            return [(split_strict(t, separator) or [""])[0] for t in texts]
        return super().strict_answers(texts, separator, row)

    def score_recai(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        hr, ndcg = retrieval_scores_recai(strict_items(prediction), row["labels"]["item"], K)
        return {"hr@5": hr, "ndcg@5": ndcg}

    # baselines: five items the user has not consumed
    def answer_random(self, b, row):
        return b.top(b.rng(row).permutation(b.n_items) + 1, b.history(row), K)

    def answer_popularity(self, b, row):
        return b.top(b.by_popularity, b.history(row), K)

    def answer_top1_frequency(self, b, row):
        return b.top(b.by_top1, b.history(row), K)

    def answer_item_knn(self, b, row):
        return b.top(b.order_by_scores(row), b.history(row), K)

    answer_student = answer_item_knn
