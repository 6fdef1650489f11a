"""Instruction templates: validation and safe rendering. The one place prompts are put together.

Templates use named fields only (``{user}``, ``{item}``, ``{candidates}``, ``{n}``, ``{instruction}``):
no attribute or index access, no conversions or format specs, so a template can never run code.
A template naming a field its task does not provide fails at start-up.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping, Sequence
from typing import Any

# Fields each task kind provides, and those every template of the kind must use.
FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "retrieval": ({"user"}, {"user"}),
    "ranking": ({"user", "candidates", "n"}, {"user", "candidates"}),
    "interest": ({"user", "item"}, {"user", "item"}),
    "interest_hard": ({"user", "item"}, {"user", "item"}),
    "item_recovery": ({"item"}, {"item"}),
    "item_similar": ({"item"}, {"item"}),
    "item_metadata": ({"item"}, {"item"}),
    "history": ({"user", "n"}, {"user"}),
    "replay": ({"instruction"}, {"instruction"}),
    "explanation": ({"user", "item", "evidence"}, {"user", "item"}),
}
# Fields of the explanation kind's target templates (yes_templates / no_templates), and those required.
ANSWER_FIELDS: tuple[set[str], set[str]] = ({"decision", "cited", "genre"}, {"decision", "cited"})
KINDS = tuple(FIELDS)
MODES = ("behavior", "intention", "hybrid")


class TemplateError(ValueError):
    """A template or task definition is invalid; the message names the task and template."""


def template_fields(template: str) -> set[str]:
    """Names of the fields in ``template``; rejects anything but plain ``{name}`` fields."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise TemplateError(
            f"malformed template {template!r}: {err} (write literal braces as {{{{ and }}}})"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TemplateError(
                f"template {template!r}: field {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not allowed; use plain named fields such as {{user}}"
            )
        names.add(name)
    return names


def validate_task(name: str, task: Any) -> None:
    """Check a task config: known kind and modes, at least one template, only the kind's fields."""
    if task.kind not in FIELDS:
        raise TemplateError(
            f"tasks.{name}.kind={task.kind!r} is not a task kind; choose one of {', '.join(KINDS)}"
        )
    bad_modes = [m for m in task.modes if m not in MODES]
    if bad_modes:
        raise TemplateError(
            f"tasks.{name}.modes has unknown mode(s) {bad_modes}; choose from {', '.join(MODES)}"
        )
    if not task.templates:
        raise TemplateError(f"tasks.{name}.templates is empty; give at least one template")
    allowed, required = FIELDS[task.kind]
    for k, template in enumerate(task.templates):
        fields = template_fields(template)
        unknown, missing = fields - allowed, required - fields
        if unknown:
            raise TemplateError(
                f"tasks.{name}.templates[{k}] uses unknown field(s) {sorted(unknown)}; "
                f"a {task.kind} template may use {sorted(allowed)}"
            )
        if missing:
            raise TemplateError(
                f"tasks.{name}.templates[{k}] must contain {sorted('{' + f + '}' for f in missing)}"
            )
    if task.user_format is not None:
        validate_format(f"tasks.{name}.user_format", task.user_format, {"placeholder", "titles"})
    if task.kind == "explanation":
        _validate_answers(name, task)
        if getattr(task, "evidence", None) is None and any(
            "evidence" in template_fields(t) for t in task.templates
        ):
            raise TemplateError(
                f"tasks.{name}.templates use {{evidence}} but tasks.{name}.evidence is null; set it "
                "(e.g. ${{explain.evidence}}) or remove {{evidence}} from the templates"
            )


def _validate_answers(name: str, task: Any) -> None:
    """Explanation targets: both lists non-empty, known fields, and each list usable without a genre."""
    allowed, required = ANSWER_FIELDS
    for key in ("yes_templates", "no_templates"):
        templates = list(getattr(task, key, None) or [])
        if not templates:
            raise TemplateError(f"tasks.{name}.{key} is empty; give at least one target template")
        for k, template in enumerate(templates):
            fields = template_fields(template)
            if fields - allowed or required - fields:
                raise TemplateError(
                    f"tasks.{name}.{key}[{k}] must use {sorted(required)} and may use {{genre}}; "
                    f"it uses {sorted(fields)}"
                )
        if all("genre" in template_fields(t) for t in templates):
            raise TemplateError(f"tasks.{name}.{key}: at least one template must work without {{genre}}")


def validate_format(key: str, fmt: str, allowed: set[str]) -> None:
    unknown = template_fields(fmt) - allowed
    if unknown:
        raise TemplateError(
            f"{key}={fmt!r} uses unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )


@functools.lru_cache(maxsize=1024)
def _parsed(template: str) -> tuple[tuple[str, str | None], ...]:
    return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(template))


def field_order(template: str) -> list[str]:
    """The fields of a template in order of appearance (repeats included)."""
    return [name for _, name in _parsed(template) if name is not None]


def render(template: str, values: Mapping[str, Any]) -> str:
    """Substitute plain named fields; values are inserted verbatim (never parsed as templates)."""
    out = []
    for literal, name in _parsed(template):
        out.append(literal)
        if name is not None:
            out.append(str(values[name]))
    return "".join(out)


class SlotRenderer:
    """Renders users and items into prompt text for one alignment mode, and counts their placeholders."""

    def __init__(self, alignment: Any, titles: Sequence[str]):
        self.user_format = alignment.user_format
        self.item_format = alignment.item_format
        self.user_placeholder = alignment.user_placeholder
        self.item_placeholder = alignment.item_placeholder
        self.separator = alignment.title_separator
        self.text_hist_len = getattr(alignment, "text_hist_len", None)  # None: every item of the prefix
        self.titles = titles
        self._items: dict[int, str] = {}

    def user(self, history: Sequence[int], user_format: str | None = None, full: bool = False) -> str:
        """A user as text: ``{titles}`` holds the last ``text_hist_len`` items of ``history`` (all if None
        or ``full``); the user's vector, and every label, still come from the whole prefix."""
        last = None if full else self.text_hist_len
        shown = history if last is None else history[-last:]  # validated >= 1
        titles = self.separator.join(self.titles[i] for i in shown)
        return render(
            user_format or self.user_format, {"placeholder": self.user_placeholder, "titles": titles}
        )

    def item(self, item: int) -> str:
        text = self._items.get(item)
        if text is None:
            text = render(
                self.item_format, {"placeholder": self.item_placeholder, "title": self.titles[item]}
            )
            self._items[item] = text
        return text

    def items(self, items: Sequence[int]) -> str:
        return self.separator.join(self.item(i) for i in items)

    def title_list(self, items: Sequence[int]) -> str:
        """A target list of titles (ranking, history): titles joined by the separator."""
        return self.separator.join(self.titles[i] for i in items)

    def count(self, text: str) -> tuple[int, int]:
        """Number of user and item placeholders in ``text``."""
        return text.count(self.user_placeholder), text.count(self.item_placeholder)
