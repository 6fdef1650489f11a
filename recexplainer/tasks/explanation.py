"""Explanation: the LLM says whether the recommender would recommend an item and cites the history items
that drive its decision (trained so that the explain stage's prompt form is one the aligner has seen).

Labels: per prefix one item from the top band (share ``yes_share``) or the bottom band, the recommender's
leave-one-out attribution of every history item, and the ``n_cited`` items that support its answer most;
targets are rendered from ``yes_templates`` / ``no_templates``. Not evaluated here: the explain stage
scores generated explanations against the recommender.
"""

from __future__ import annotations

from typing import Any

from recexplainer.alignment_data.explanations import ExplanationWriter, evidence_text
from recexplainer.alignment_data.labels import band, pick, task_rng
from recexplainer.alignment_data.templates import TemplateError, template_fields, validate_format
from recexplainer.recommender.attribution import leave_one_out, top_attributed
from recexplainer.tasks.base import TaskKind, decision_labels, register

# fields of the target templates (yes_templates / no_templates), and those required
ANSWER_FIELDS, ANSWER_REQUIRED = frozenset({"decision", "cited", "genre"}), frozenset({"decision", "cited"})


@register
class Explanation(TaskKind):
    name = "explanation"
    order = 30
    fields = frozenset({"user", "item", "evidence"})
    required = frozenset({"user", "item"})
    label_statistics = True

    def validate(self, name: str, task: Any) -> None:
        super().validate(name, task)
        for key in ("yes_templates", "no_templates"):
            templates = list(getattr(task, key, None) or [])
            if not templates:
                raise TemplateError(f"tasks.{name}.{key} is empty; give at least one target template")
            for k, template in enumerate(templates):
                used = template_fields(template)
                if used - ANSWER_FIELDS or ANSWER_REQUIRED - used:
                    raise TemplateError(
                        f"tasks.{name}.{key}[{k}] must use {sorted(ANSWER_REQUIRED)} and may use {{genre}}; "
                        f"it uses {sorted(used)}"
                    )
            if all("genre" in template_fields(t) for t in templates):
                raise TemplateError(f"tasks.{name}.{key}: at least one template must work without {{genre}}")
        evidence = getattr(task, "evidence", None)
        if evidence is None and any("evidence" in template_fields(t) for t in task.templates):
            raise TemplateError(
                f"tasks.{name}.templates use {{evidence}} but tasks.{name}.evidence is null; set it "
                "(e.g. ${{explain.evidence}}) or remove {{evidence}} from the templates"
            )
        if evidence is not None:
            validate_format(f"tasks.{name}.evidence", evidence, {"up", "down"})

    def setup(self, builder: Any) -> None:
        rng = task_rng(builder.seed, builder.name, "answers")
        builder.state["writer"] = ExplanationWriter(builder.task, builder.titles, builder.item_table, rng)

    def prepare(self, builder, p, rows):
        """Draw each row's (item, answer) and score the recommender's leave-one-out attributions for all
        rows in one batch. Two draws per row (the answer, then the item), whatever the bands' sizes."""
        task, rng, picked = builder.task, builder.label_rng, []
        for row in rows:
            top, bottom = band(p, row, task.top_fraction, task.bottom_fraction)
            answer = "yes" if rng.random() < task.yes_share else "no"
            picked.append((row, pick(rng, top if answer == "yes" else bottom), answer))
        _, attributions = leave_one_out(
            builder.recommender,
            [p.histories[row] for row, _, _ in picked],
            [item for _, item, _ in picked],
            [int(p.users[row]) for row, _, _ in picked],
        )
        builder.state["picked"] = {
            row: (item, answer, a) for (row, item, answer), a in zip(picked, attributions, strict=True)
        }

    def examples(self, builder, p, row, key, user, base):
        task = builder.task
        item, answer, attributions = builder.state["picked"][row]
        history = p.histories[row]
        cited = top_attributed(history, attributions, answer, task.n_cited)
        target, genre = builder.state["writer"].write(answer, item, cited)
        item_text, item_slots = builder.item_text(item)
        text, slots = user
        values = {"user": text, "item": item_text}
        if task.evidence is not None:  # the recommender's attributions, as the explain stage shows them
            values["evidence"] = evidence_text(
                task.evidence, history, attributions, builder.titles, task.n_cited
            )
        labels = {
            **decision_labels(builder, p, row, item, answer),
            "attributions": [round(float(a), 6) for a in attributions],  # per history item, oldest first
            "cited": cited,
            "genre": genre,
        }
        key = f"{key}-{'pos' if answer == 'yes' else 'neg'}"
        field_slots = {"user": slots, "item": item_slots}
        return [builder.example(p.split, key, values, field_slots, target, labels=labels, **base)]
