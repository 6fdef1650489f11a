"""Task 3, interest: would the recommender recommend this item to this user? (yes / no)

Labels: per prefix one positive from the recommender's top band (``top_fraction`` of the ranked items) and
one negative from its bottom band (``bottom_fraction``). ``interest_hard`` draws the negative among the
bottom-band items at least as popular as the positive, so that item popularity alone cannot answer.
Answer: the next-token probability of yes against no. Metrics: accuracy and the share of yes answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recexplainer.alignment_data.labels import band, pick
from recexplainer.tasks.base import Column, TaskKind, decision_labels, register


class _YesNo(TaskKind):
    fields = frozenset({"user", "item"})
    required = frozenset({"user", "item"})
    examples_per_prefix = 2  # a positive and a negative
    label_statistics = True
    answer = "yes_no"
    metrics = ("acc", "yes_rate")
    strict = ("acc", "yes_rate")
    hard = False

    def examples(self, builder, p, row, key, user, base):
        top, bottom = band(p, row, builder.task.top_fraction, builder.task.bottom_fraction)  # by item id
        rng, popularity = builder.label_rng, builder.popularity
        pos = pick(rng, top)
        fallback = False
        if self.hard:
            neg = pick(rng, bottom[popularity[bottom] >= popularity[pos]])
            fallback = neg is None
            if fallback:  # nothing in the bottom band is as popular: its most popular item
                neg = int(bottom[np.argmax(popularity[bottom])])
        else:
            neg = pick(rng, bottom)
        text, slots = user
        out = []
        for item, answer, tag in ((pos, "yes", "pos"), (neg, "no", "neg")):
            item_text, item_slots = builder.item_text(item)
            labels = decision_labels(builder, p, row, item, answer)
            if self.hard:
                labels["hard_fallback"] = fallback
            values, field_slots = {"user": text, "item": item_text}, {"user": slots, "item": item_slots}
            out.append(
                builder.example(p.split, f"{key}-{tag}", values, field_slots, answer, labels=labels, **base)
            )
        return out

    def score(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        return _yes_no(row, prediction["p_yes"] > 0.5)  # a tie is no

    def score_recai(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        return _yes_no(row, prediction["p_yes"] >= 0.5)  # yes when P(yes) >= P(no)

    # baselines: P(yes); the fitted ones say yes when the item's value reaches a threshold fit on training
    def answer_random(self, b, row):
        return float(b.rng(row).random())

    def answer_popularity(self, b, row):
        return float(b.says_yes(row))

    answer_item_knn = answer_student = answer_popularity


def _yes_no(row: dict[str, Any], said_yes: bool) -> dict[str, float]:
    return {"acc": float(said_yes == (row["labels"]["answer"] == "yes")), "yes_rate": float(said_yes)}


@register
class Interest(_YesNo):
    name = "interest"
    order = 3
    prefix = "task3"
    columns = (Column("T3 Acc", "task 3 acc", "task3/acc"),)
    checks = (Column("T3 yes-rate", "task 3 yes rate", "task3/yes_rate"),)


@register
class InterestHard(_YesNo):
    name = "interest_hard"
    order = 3.5
    prefix = "task3_hard"
    hard = True
    columns = (Column("T3-hard Acc", "task 3-hard acc", "task3_hard/acc"),)
