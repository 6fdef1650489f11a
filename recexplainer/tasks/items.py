"""Item tasks: one catalog item per example, shown by its placeholder (and title, by mode).

- ``item_recovery``: the LLM names the item (how well the projector maps the recommender's item space
  into the LLM's).
- ``item_similar``: the LLM names the item most similar to it in the recommender's item embedding space.
- ``item_metadata``: the LLM states the item's genres / categories, brand and year (free text; trained,
  not evaluated).

Items held out of training (``eval_items_fraction``) form the validation and test examples.
"""

from __future__ import annotations

from typing import Any

from recexplainer.tasks.base import Column, TaskKind, predicted, register, strict_items
from recexplainer.tasks.metrics import valid_ratio


class _ItemKind(TaskKind):
    source = "item"
    fields = frozenset({"item"})
    required = frozenset({"item"})


class _NameAnItem(_ItemKind):
    answer = "titles"
    metrics = ("acc", "acc_fuzzy", "valid_ratio")
    strict = ("acc",)

    def score(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        items, fuzzy = predicted(prediction)  # the first title is the answer
        item = row["labels"]["item"]
        return {
            "valid_ratio": valid_ratio(items),
            "acc": float(items[0] == item),
            "acc_fuzzy": float(fuzzy[0] == item),
        }

    def score_recai(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        return {"acc": float(strict_items(prediction)[0] == row["labels"]["item"])}

    def answer_random(self, b, row):
        return [int(b.rng(row).integers(1, b.n_items + 1))]


@register
class ItemRecovery(_NameAnItem):
    name = "item_recovery"
    order = 7
    prefix = "item_recovery"
    columns = (Column("Item rec. Acc", "item recovery", "item_recovery/acc"),)

    def item_label(self, builder, item, item_table, similar):
        return builder.titles[item], {"item": item}

    def answer_popularity(self, b, row):
        return b.top(b.by_popularity, set(), 1)


@register
class ItemSimilar(_NameAnItem):
    name = "item_similar"
    order = 8
    prefix = "item_similar"

    def item_label(self, builder, item, item_table, similar):
        return builder.titles[int(similar[item])], {"item": int(similar[item])}

    def answer_popularity(self, b, row):
        return b.top(b.by_popularity, {row["item"]}, 1)

    def answer_item_knn(self, b, row):
        sim = b.similarity([row["item"]])[0]
        sim[row["item"]] = -1.0
        return [int(sim.argmax())]


@register
class ItemMetadata(_ItemKind):
    name = "item_metadata"
    order = 9

    def item_label(self, builder, item, item_table, similar):
        target = metadata_text(item_table[item])
        return None if target is None else (target, {})


def metadata_text(row: dict[str, Any]) -> str | None:
    """Genres / categories, brand and year of an item as one sentence; None when it has none."""
    parts = []
    for key, label in (("genres", "Genres"), ("categories", "Categories")):
        if row.get(key):
            parts.append(f"{label}: {', '.join(row[key])}.")
    if row.get("brand"):
        parts.append(f"Brand: {row['brand']}.")
    if row.get("year"):
        parts.append(f"Year: {row['year']}.")
    return " ".join(parts) or None
