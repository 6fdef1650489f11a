"""Instruction templates: validation and safe rendering. The one place prompts are put together.

Templates use named fields only (``{user}``, ``{item}``, ``{candidates}``, ``{n}``, ``{instruction}``):
no attribute or index access, no conversions or format specs, so a template can never run code.
A template naming a field its task kind does not provide fails at start-up (``recexplainer.tasks.validate``).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping, Sequence
from typing import Any


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

    def __init__(self, prompt: Any, titles: Sequence[str]):
        self.user_format = prompt.user_format
        self.item_format = prompt.item_format
        self.user_placeholder = prompt.user_placeholder
        self.item_placeholder = prompt.item_placeholder
        self.separator = prompt.title_separator
        self.text_hist_len = getattr(prompt, "text_hist_len", None)  # None: every item of the prefix
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
