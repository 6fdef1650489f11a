"""Task 6, history reconstruction: the LLM lists the items of the user's history prefix.

Label: the prefix's items, oldest first. Answer: greedy decoding of a list of titles. Metric: HCR, the
share of the history's items among the first len(history) generated titles (the reference scoring) or
among all of them (lenient).
"""

from __future__ import annotations

from typing import Any

from recexplainer.tasks.base import Column, TaskKind, predicted, register, strict_items
from recexplainer.tasks.metrics import history_coverage, history_coverage_recai, valid_ratio


@register
class History(TaskKind):
    name = "history"
    order = 6
    fields = frozenset({"user", "n"})
    required = frozenset({"user"})
    prefix, answer = "task6", "titles"
    metrics = ("hcr", "hcr_fuzzy", "valid_ratio")
    strict = ("hcr",)
    columns = (Column("T6 HCR", "task 6 HCR", "task6/hcr"),)

    def examples(self, builder, p, row, key, user, base):
        history = p.histories[row]
        text, slots = user
        values = {"user": text, "n": str(len(history))}
        target = builder.renderer.title_list(history)
        return [
            builder.example(
                p.split, key, values, {"user": slots}, target, labels={"items": history.tolist()}, **base
            )
        ]

    def titles_asked(self, row: dict[str, Any]) -> int:
        return len(row["labels"]["items"])

    def score(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        items, fuzzy = predicted(prediction)
        history = row["labels"]["items"]
        return {
            "valid_ratio": valid_ratio(items),
            "hcr": history_coverage(items, history),
            "hcr_fuzzy": history_coverage(fuzzy, history),
        }

    def score_recai(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        return {"hcr": history_coverage_recai(strict_items(prediction), row["labels"]["items"])}

    # baselines: as many items as the history holds
    def answer_random(self, b, row):
        n = len(row["labels"]["items"])
        return [int(i) for i in b.rng(row).choice(b.n_items, n, replace=False) + 1]

    def answer_popularity(self, b, row):
        return b.top(b.by_popularity, set(), len(row["labels"]["items"]))
