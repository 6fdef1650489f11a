"""Task 2, ranking: the LLM orders candidate items as the recommender would.

Label: ``n_candidates`` items drawn from those the recommender can rank, in its order; the prompt shows
them shuffled. Answer: greedy decoding of a list of titles. Metric: NDCG@5 with graded relevance by the
recommender's order (1000, 100, 10, 1, 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recexplainer.alignment_data.templates import TemplateError
from recexplainer.tasks.base import Column, TaskKind, predicted, register, strict_items
from recexplainer.tasks.metrics import ranking_ndcg, ranking_ndcg_recai, valid_ratio


@register
class Ranking(TaskKind):
    name = "ranking"
    order = 2
    fields = frozenset({"user", "candidates", "n"})
    required = frozenset({"user", "candidates"})
    prefix, answer = "task2", "titles"
    metrics = ("ndcg@5", "ndcg@5_fuzzy", "valid_ratio")
    strict = ("ndcg@5",)
    columns = (Column("T2 NDCG@5", "task 2 NDCG@5", "task2/ndcg@5"),)

    def validate(self, name: str, task: Any) -> None:
        super().validate(name, task)
        if task.n_candidates < 2:
            raise TemplateError(f"tasks.{name}.n_candidates={task.n_candidates} must be at least 2")

    def examples(self, builder, p, row, key, user, base):
        n = int(p.n_valid[row])
        k = min(builder.task.n_candidates, n)
        # k of the rankable items drawn by item id (the same distribution as k random rank positions, but
        # a near-tie swap in the ranking does not change which items are drawn), then the recommender's order
        chosen = np.sort(p.order[row, :n])[builder.label_rng.choice(n, size=k, replace=False)]
        positions = np.sort(p.ranks[row, chosen])
        ranked = p.order[row, positions].tolist()  # the recommender's order
        shown = [ranked[i] for i in builder.label_rng.permutation(k)]
        cand_slots = [s for i in shown for s in builder.item_text(i)[1]]
        labels = {
            "items": ranked,
            "ranks": positions.tolist(),
            "shown": shown,
            "scores": [float(p.scores[row, i]) for i in ranked],
        }
        text, slots = user
        values = {"user": text, "candidates": builder.renderer.items(shown), "n": str(k)}
        target = builder.renderer.title_list(ranked)
        return [
            builder.example(
                p.split, key, values, {"user": slots, "candidates": cand_slots}, target, labels=labels, **base
            )
        ]

    def titles_asked(self, row: dict[str, Any]) -> int:
        return len(row["labels"]["shown"])

    def score(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        items, fuzzy = predicted(prediction)
        ranked = row["labels"]["items"]
        return {
            "valid_ratio": valid_ratio(items),
            "ndcg@5": ranking_ndcg(items, ranked),
            "ndcg@5_fuzzy": ranking_ndcg(fuzzy, ranked),
        }

    def score_recai(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        return {"ndcg@5": ranking_ndcg_recai(strict_items(prediction), row["labels"]["items"])}

    # baselines: an order of the shown candidates
    def answer_random(self, b, row):
        return [int(i) for i in b.rng(row).permutation(row["labels"]["shown"])]

    def answer_popularity(self, b, row):
        return sorted(row["labels"]["shown"], key=lambda i: -b.popularity[i])

    def answer_item_knn(self, b, row):
        scores = b.scores(row)
        return sorted(row["labels"]["shown"], key=lambda i: -float(scores[i]))

    answer_student = answer_item_knn
