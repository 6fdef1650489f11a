"""Turn the recommender's labels into instruction examples, one task at a time.

Every example records what the aligner needs without the recommender in memory: the rendered prompt and
target, the history the user vector comes from (``user_row`` into the stage's ``vectors.safetensors``),
and ``slots``: one entry per placeholder, in prompt order ("user", or an item index).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recexplainer.alignment_data.explanations import ExplanationWriter, evidence_text
from recexplainer.alignment_data.labels import Prefixes, band, pick, task_rng
from recexplainer.alignment_data.templates import SlotRenderer, field_order, render, template_fields
from recexplainer.data.loaders import DataFormatError, json_lines
from recexplainer.recommender.attribution import leave_one_out, top_attributed

USER_KINDS = ("retrieval", "ranking", "interest", "interest_hard", "history", "explanation")
ITEM_KINDS = ("item_recovery", "item_similar", "item_metadata")
EXAMPLES_PER_PREFIX = {"interest": 2, "interest_hard": 2}


class PlaceholderMismatch(RuntimeError):
    """The number of placeholders in a prompt differs from the vectors the example refers to."""


class TaskBuilder:
    """Builds the examples of one task; user kinds from scored prefixes, item kinds from the catalog."""

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
        self.explainer = (
            ExplanationWriter(task, titles, item_table or [], task_rng(seed, name, "answers"))
            if task.kind == "explanation"
            else None
        )
        self._explained: dict[int, tuple[int, str, np.ndarray]] = {}
        self.label_rng = task_rng(seed, name, "labels")
        self.template_rng = task_rng(seed, name, "templates")
        for template in task.templates:
            template_fields(template)  # validates
        self.fields = [field_order(t) for t in task.templates]

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

    def _user(self, history: np.ndarray) -> tuple[str, list]:
        text = self.renderer.user(history, self.task.user_format, full=self.task.full_history)
        return text, ["user"] * self.renderer.count(text)[0]

    def _item(self, item: int) -> tuple[str, list]:
        text = self.renderer.item(item)
        return text, [int(item)] * self.renderer.count(text)[1]

    # ---- user tasks -------------------------------------------------------------------------------
    def from_prefixes(self, p: Prefixes, keep: np.ndarray) -> list[dict[str, Any]]:
        """Examples for the rows of a scored batch selected by ``keep`` (bool, one per row)."""
        make: Callable = getattr(self, f"_{self.task.kind}")
        if self.task.kind == "explanation":
            self._attribute(p, np.flatnonzero(keep))
        out = []
        for row in np.flatnonzero(keep):
            history = p.histories[row]
            user_text, user_slots = self._user(history)
            base = {
                "user": int(p.users[row]),
                "prefix_end": int(p.ends[row]),
                "history": history.tolist(),
                "user_row": int(p.offset + row),
            }
            key = f"u{int(p.users[row])}-e{int(p.ends[row])}"
            out.extend(make(p, row, key, user_text, user_slots, base))
        return out

    def _retrieval(self, p, row, key, user_text, user_slots, base):
        top1 = int(p.order[row, 0])
        labels = {"item": top1, "score": float(p.scores[row, top1])}
        return [
            self.example(
                p.split,
                key,
                {"user": user_text},
                {"user": user_slots},
                self.titles[top1],
                labels=labels,
                **base,
            )
        ]

    def _ranking(self, p, row, key, user_text, user_slots, base):
        n = int(p.n_valid[row])
        k = min(self.task.n_candidates, n)
        # k of the rankable items drawn by item id (the same distribution as k random rank positions, but
        # a near-tie swap in the ranking does not change which items are drawn), then the recommender's order
        chosen = np.sort(p.order[row, :n])[self.label_rng.choice(n, size=k, replace=False)]
        positions = np.sort(p.ranks[row, chosen])
        ranked = p.order[row, positions].tolist()  # the recommender's order
        shown = [ranked[i] for i in self.label_rng.permutation(k)]
        cand_text = self.renderer.items(shown)
        cand_slots = [s for i in shown for s in self._item(i)[1]]
        labels = {
            "items": ranked,
            "ranks": positions.tolist(),
            "shown": shown,
            "scores": [float(p.scores[row, i]) for i in ranked],
        }
        return [
            self.example(
                p.split,
                key,
                {"user": user_text, "candidates": cand_text, "n": str(k)},
                {"user": user_slots, "candidates": cand_slots},
                self.renderer.title_list(ranked),
                labels=labels,
                **base,
            )
        ]

    def _interest(self, p, row, key, user_text, user_slots, base, hard: bool = False):
        top, bottom = band(p, row, self.task.top_fraction, self.task.bottom_fraction)  # sorted by item id
        rng = self.label_rng
        pos = pick(rng, top)
        fallback = False
        if hard:
            neg = pick(rng, bottom[self.popularity[bottom] >= self.popularity[pos]])
            fallback = neg is None
            if fallback:  # nothing in the bottom band is as popular: its most popular item
                neg = int(bottom[np.argmax(self.popularity[bottom])])
        else:
            neg = pick(rng, bottom)
        ranks = p.ranks[row]
        out = []
        for item, answer, tag in ((pos, "yes", "pos"), (neg, "no", "neg")):
            item_text, item_slots = self._item(item)
            labels = {
                "item": item,
                "answer": answer,
                "rank": int(ranks[item]),
                "n_ranked": int(p.n_valid[row]),
                "score": float(p.scores[row, item]),
                "popularity": int(self.popularity[item]),
            }
            if hard:
                labels["hard_fallback"] = fallback
            out.append(
                self.example(
                    p.split,
                    f"{key}-{tag}",
                    {"user": user_text, "item": item_text},
                    {"user": user_slots, "item": item_slots},
                    answer,
                    labels=labels,
                    **base,
                )
            )
        return out

    def _interest_hard(self, p, row, key, user_text, user_slots, base):
        return self._interest(p, row, key, user_text, user_slots, base, hard=True)

    def _attribute(self, p: Prefixes, rows: np.ndarray) -> None:
        """Draw each row's (item, answer) and score the recommender's leave-one-out attributions for all
        rows in one batch. Two draws per row (the answer, then the item), whatever the bands' sizes."""
        rng, picked = self.label_rng, []
        for row in rows.tolist():
            top, bottom = band(p, row, self.task.top_fraction, self.task.bottom_fraction)
            answer = "yes" if rng.random() < self.task.yes_share else "no"
            picked.append((row, pick(rng, top if answer == "yes" else bottom), answer))
        _, attributions = leave_one_out(
            self.recommender,
            [p.histories[row] for row, _, _ in picked],
            [item for _, item, _ in picked],
            [int(p.users[row]) for row, _, _ in picked],
        )
        self._explained = {
            row: (item, answer, a) for (row, item, answer), a in zip(picked, attributions, strict=True)
        }

    def _explanation(self, p, row, key, user_text, user_slots, base):
        item, answer, attributions = self._explained[row]
        history = p.histories[row]
        cited = top_attributed(history, attributions, answer, self.task.n_cited)
        target, genre = self.explainer.write(answer, item, cited)
        item_text, item_slots = self._item(item)
        values = {"user": user_text, "item": item_text}
        if self.task.evidence is not None:  # the recommender's attributions, as the explain stage shows them
            values["evidence"] = evidence_text(
                self.task.evidence, history, attributions, self.titles, self.task.n_cited
            )
        labels = {
            "item": item,
            "answer": answer,
            "rank": int(p.ranks[row, item]),
            "n_ranked": int(p.n_valid[row]),
            "score": float(p.scores[row, item]),
            "popularity": int(self.popularity[item]),
            "attributions": [round(float(a), 6) for a in attributions],  # per history item, oldest first
            "cited": cited,
            "genre": genre,
        }
        return [
            self.example(
                p.split,
                f"{key}-{'pos' if answer == 'yes' else 'neg'}",
                values,
                {"user": user_slots, "item": item_slots},
                target,
                labels=labels,
                **base,
            )
        ]

    def _history(self, p, row, key, user_text, user_slots, base):
        history = p.histories[row]
        return [
            self.example(
                p.split,
                key,
                {"user": user_text, "n": str(len(history))},
                {"user": user_slots},
                self.renderer.title_list(history),
                labels={"items": history.tolist()},
                **base,
            )
        ]

    # ---- item tasks -------------------------------------------------------------------------------
    def from_items(
        self, split: str, items: np.ndarray, item_table: list[dict], similar: np.ndarray, repeats: int = 1
    ) -> list[dict[str, Any]]:
        """Examples about single items; ``repeats`` > 1 renders each item that many times (other templates)."""
        out = []
        for item in items.tolist():
            if self.task.kind == "item_recovery":
                target, labels = self.titles[item], {"item": item}
            elif self.task.kind == "item_similar":
                target, labels = self.titles[int(similar[item])], {"item": int(similar[item])}
            else:
                target = metadata_text(item_table[item])
                if target is None:
                    continue
                labels = {}
            item_text, item_slots = self._item(item)
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


def read_replay(path: str, limit: int | None) -> list[dict[str, Any]]:
    """User-supplied instruction data: one {"instruction"|"prompt", "response"|"output"} object per line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"tasks.replay.path: file not found: {file}")
    rows = []
    for lineno, obj in json_lines(file):
        instruction = obj.get("instruction") or obj.get("prompt")
        response = obj.get("response") or obj.get("output")
        if not instruction or not response:
            raise DataFormatError(
                f"{file}:{lineno}: needs 'instruction' (or 'prompt') and 'response' (or 'output')"
            )
        if obj.get("input"):
            instruction = f"{instruction}\n\n{obj['input']}"
        rows.append({"instruction": instruction, "response": response, "line": lineno})
        if limit is not None and len(rows) >= limit:
            break
    return rows
