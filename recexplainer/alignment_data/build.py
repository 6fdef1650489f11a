"""Turn the recommender's labels into instruction examples, one task at a time.

Every example records what the aligner needs without the recommender in memory: the rendered prompt and
target, the history the user vector comes from (``user_row`` into the stage's ``vectors.safetensors``),
and ``slots``: one entry per placeholder, in prompt order ("user", or an item index).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recexplainer import tasks as kinds
from recexplainer.alignment_data.labels import Prefixes, task_rng
from recexplainer.alignment_data.templates import SlotRenderer, field_order, render, template_fields


class PlaceholderMismatch(RuntimeError):
    """The number of placeholders in a prompt differs from the vectors the example refers to."""


class TaskBuilder:
    """Builds the examples of one task: the shared mechanics (templates, placeholders, slots, random
    streams); what the labels and targets are is its kind's (:mod:`recexplainer.tasks`)."""

    def __init__(
        self,
        name: str,
        task: Any,
        mode: str,
        renderer: SlotRenderer,
        seed: int,
        popularity: np.ndarray,
        titles: list[str],
        recommender: Any = None,
        item_table: list[dict] | None = None,
    ):
        self.name, self.task, self.mode = name, task, mode
        self.renderer, self.popularity, self.titles = renderer, popularity, titles
        self.recommender = recommender  # the frozen target: the explanation kind needs its attributions
        self.seed, self.item_table = seed, item_table or []
        self.kind = kinds.get(task.kind)
        self.state: dict[str, Any] = {}  # the kind's per-task state (kinds.TaskKind.setup)
        self.label_rng = task_rng(seed, name, "labels")
        self.template_rng = task_rng(seed, name, "templates")
        for template in task.templates:
            template_fields(template)  # validates
        self.fields = [field_order(t) for t in task.templates]
        self.kind.setup(self)

    def example(
        self,
        split: str,
        key: str,
        values: dict[str, str],
        field_slots: dict[str, list],
        target: str,
        **extra: Any,
    ) -> dict[str, Any]:
        """Render one example with a randomly chosen template and check its placeholder count."""
        t = int(self.template_rng.integers(len(self.task.templates)))
        prompt = render(self.task.templates[t], values)
        slots = [s for f in self.fields[t] for s in field_slots.get(f, [])]
        n_user, n_item = self.renderer.count(prompt)
        if n_user != slots.count("user") or n_item != len(slots) - slots.count("user"):
            raise PlaceholderMismatch(
                f"task {self.name}, example {key}: prompt has {n_user} user / {n_item} item placeholders "
                f"but refers to {slots.count('user')} user / {len(slots) - slots.count('user')} item vectors. "
                f"Does a title contain {self.renderer.user_placeholder!r} or {self.renderer.item_placeholder!r}?"
            )
        return {
            "id": f"{self.name}/{split}/{key}",
            "task": self.name,
            "kind": self.task.kind,
            "task_id": self.task.task_id,
            "split": split,
            "mode": self.mode,
            "template_id": t,
            "prompt": prompt,
            "target": target,
            "slots": slots,
            **extra,
        }

    def user_text(self, history: np.ndarray) -> tuple[str, list]:
        """The user's text for this task and its slots (one "user" per user placeholder)."""
        text = self.renderer.user(history, self.task.user_format, full=self.task.full_history)
        return text, ["user"] * self.renderer.count(text)[0]

    def item_text(self, item: int) -> tuple[str, list]:
        """An item's text and its slots (the item id once per item placeholder)."""
        text = self.renderer.item(item)
        return text, [int(item)] * self.renderer.count(text)[1]

    # ---- user tasks -------------------------------------------------------------------------------
    def from_prefixes(self, p: Prefixes, keep: np.ndarray) -> list[dict[str, Any]]:
        """Examples for the rows of a scored batch selected by ``keep`` (bool, one per row)."""
        rows = np.flatnonzero(keep).tolist()
        self.kind.prepare(self, p, rows)
        out = []
        for row in rows:
            history = p.histories[row]
            base = {
                "user": int(p.users[row]),
                "prefix_end": int(p.ends[row]),
                "history": history.tolist(),
                "user_row": int(p.offset + row),
            }
            key = f"u{int(p.users[row])}-e{int(p.ends[row])}"
            out.extend(self.kind.examples(self, p, row, key, self.user_text(history), base))
        return out

    # ---- item tasks -------------------------------------------------------------------------------
    def from_items(
        self, split: str, items: np.ndarray, item_table: list[dict], similar: np.ndarray, repeats: int = 1
    ) -> list[dict[str, Any]]:
        """Examples about single items; ``repeats`` > 1 renders each item that many times (other templates)."""
        out = []
        for item in items.tolist():
            label = self.kind.item_label(self, item, item_table, similar)
            if label is None:
                continue
            target, labels = label
            item_text, item_slots = self.item_text(item)
            for r in range(repeats):
                key = f"i{item}" if repeats == 1 else f"i{item}-r{r}"
                out.append(
                    self.example(
                        split,
                        key,
                        {"item": item_text},
                        {"item": item_slots},
                        target,
                        user=-1,
                        item=item,
                        labels=labels,
                    )
                )
        return out
