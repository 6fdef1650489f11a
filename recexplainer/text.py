"""Text rules every stage shares: the one place they live.

- titles: normalisation, the `` [N]`` suffix that makes repeated catalog titles unique, the catalog index
  that maps generated text back to items (exact match after normalisation; fuzzy match as its own setting);
- lists of titles: joined with the configured separator (``prompt.title_separator``) in training
  targets and prompts, parsed back with the same separator from LLM output;
- yes / no answers;
- chat formatting of prompts for the aligner, the evaluation, the explain stage and the local judge.

Parsing never raises on odd output: numbering, bullets, quotes, separators and extra words are tolerated.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

DEFAULT_SEPARATOR = "; "
_SPACES = re.compile(r"\s+")
_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*\u2022])\s*")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_SUFFIX = re.compile(r" \[\d+\]$")
_TRAILING = ".,;:!"  # stripped from parsed titles, so catalog titles are also indexed without it


# -- titles --------------------------------------------------------------------------------------------
def normalize(title: str) -> str:
    """Strip, lower-case and collapse whitespace."""
    return _SPACES.sub(" ", title.strip().lower())


def with_suffix(title: str, n: int) -> str:
    """The ``n``-th item sharing ``title``: "Title [n]" (n >= 2)."""
    return f"{title} [{n}]"


def strip_suffix(title: str) -> str:
    """The title without a `` [N]`` suffix."""
    return _SUFFIX.sub("", title)


def unique_titles(titles: list[str]) -> int:
    """Suffix repeated titles in place (" [2]", " [3]", ... in order, compared after :func:`normalize`) so
    that a title names one item; returns how many were renamed."""
    taken = {normalize(t) for t in titles}
    seen: set[str] = set()
    renamed = 0
    for k, title in enumerate(titles):
        key = normalize(title)
        if key in seen:
            n = 2
            while normalize(with_suffix(key, n)) in taken:
                n += 1
            titles[k] = with_suffix(title, n)
            taken.add(normalize(titles[k]))
            renamed += 1
        seen.add(key)
    return renamed


# -- lists of titles -----------------------------------------------------------------------------------
def join_titles(titles: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> str:
    return separator.join(titles)


def split_mark(separator: str) -> str:
    """What a list is split on when parsed: the separator without its surrounding spaces ("; " -> ";"), so
    that "A;B" and "A ; B" parse as "A; B" does."""
    return separator.strip() or separator


def parse_list(text: str, separator: str = DEFAULT_SEPARATOR, limit: int | None = None) -> list[str]:
    """Split an answer into titles: one per line, or separated by ``separator`` (the one the targets were
    joined with; None: lines only); drops numbering, bullets, surrounding quotes and trailing punctuation;
    empty pieces are skipped."""
    mark = split_mark(separator) if separator else None
    pieces = []
    for line in text.replace("\r", "\n").split("\n"):
        for piece in line.split(mark) if mark else [line]:
            piece = _clean(piece)
            if piece:
                pieces.append(piece)
    return pieces[:limit] if limit is not None else pieces


def split_strict(text: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """A list answer as the reference scoring reads it: split on the separator only (no numbering, bullet
    or quote removal), pieces stripped, empty pieces dropped."""
    mark = split_mark(separator)
    return [piece.strip() for piece in text.split(mark) if piece.strip()]


def distinct_titles(titles: Sequence[str], k: int) -> list[str]:
    """The first ``k`` distinct titles (after the matcher's ``normalize``), in beam order.

    Beam search can return one title several times (different token paths that decode or parse to the same
    title, e.g. with and without a trailing period); a repeat would only take a candidate slot, so the
    candidates are the first ``k`` distinct ones (a wider search, ``evaluation.beam_width``, fills all ``k``).
    An empty title (an unparsable beam) is kept as a miss, so that the beam count stays visible.
    """
    seen: set[str] = set()
    out = []
    for title in titles:
        key = normalize(title)
        if key and key in seen:
            continue
        seen.add(key)
        out.append(title)
        if len(out) == k:
            break
    return out


def _clean(piece: str) -> str:
    """One parsed title: numbering, bullets, surrounding quotes and trailing punctuation dropped."""
    piece = _NUMBERING.sub("", piece).strip().strip(_QUOTES).strip()
    return piece.rstrip(_TRAILING).strip().strip(_QUOTES).strip()


def parse_yes_no(text: str) -> str | None:
    """'yes' / 'no' from the start of an answer, else from the first occurrence; None if neither."""
    words = re.findall(r"[a-z]+", text.lower())
    for word in words[:3] + words:
        if word in ("yes", "no"):
            return word
    return None


class TitleIndex:
    """Catalog titles (index 0 = padding) -> item ids, by exact normalised match or fuzzy match.

    Every title is indexed as written, without its `` [N]`` suffix, and in the forms :func:`parse_list`
    produces (trailing punctuation and surrounding quotes dropped: "Airplane!" -> "airplane", "Gone Fishin'"
    -> "gone fishin"), unless another title is spelled exactly so."""

    def __init__(self, titles: Sequence[str]):
        self.titles = list(titles)
        self.exact: dict[str, int] = {}
        for item, title in enumerate(self.titles[1:], start=1):
            for key in {normalize(title), normalize(strip_suffix(title))}:
                self.exact.setdefault(key, item)  # first item wins for a repeated title
        for key, item in list(self.exact.items()):
            parsed = _clean(key)
            if parsed:
                self.exact.setdefault(parsed, item)
        self._keys = list(self.exact)
        # the reference scoring's rule: the whole answer, strip().lower(), equals a title (with or without
        # its [N] suffix); no whitespace collapsing, no punctuation or quote removal
        self.strict: dict[str, int] = {}
        for item, title in enumerate(self.titles[1:], start=1):
            for key in (title.strip().lower(), strip_suffix(title).strip().lower()):
                self.strict.setdefault(key, item)

    def match(self, text: str) -> int | None:
        """Item id of an exact (normalised) title match, else None."""
        return self.exact.get(normalize(text))

    def strict_match(self, text: str) -> int | None:
        """Item id when ``text.strip().lower()`` is a title exactly (the reference scoring), else None."""
        return self.strict.get(text.strip().lower())

    def fuzzy(self, text: str, cutoff: float = 0.85) -> int | None:
        """Item id of the most similar title when its difflib ratio is at least ``cutoff``."""
        exact = self.match(text)
        if exact is not None:
            return exact
        close = difflib.get_close_matches(normalize(text), self._keys, n=1, cutoff=cutoff)
        return self.exact[close[0]] if close else None

    def mentions(self, text: str, min_length: int = 4) -> list[int]:
        """Items whose title occurs in free text (word-bounded, case-insensitive), longest titles first so
        that a title inside a longer one is not counted twice; in order of first appearance."""
        haystack = normalize(text)
        taken = [False] * len(haystack)
        found: list[tuple[int, int]] = []
        for key in sorted(self._keys, key=len, reverse=True):
            if len(key) < min_length or key not in haystack:  # the substring test spares the regex
                continue
            for m in re.finditer(r"(?<!\w)" + re.escape(key) + r"(?!\w)", haystack):
                if not any(taken[m.start() : m.end()]):
                    taken[m.start() : m.end()] = [True] * (m.end() - m.start())
                    found.append((m.start(), self.exact[key]))
        seen, out = set(), []
        for _, item in sorted(found):
            if item not in seen:
                seen.add(item)
                out.append(item)
        return out


# -- chat formatting -----------------------------------------------------------------------------------
class ChatFormatter:
    """Wraps an instruction into the model's chat format, ready for the response to follow: the tokenizer's
    chat template, or an explicit ``template`` with ``{prompt}`` (models without one, e.g. Vicuna v1.1)."""

    def __init__(self, tokenizer: Any, template: str | None = None, system_prompt: str | None = None):
        if template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat template; set llm.prompt_template, e.g. "
                "'USER: {prompt} ASSISTANT:' (Vicuna v1.1)"
            )
        if template is not None and "{prompt}" not in template:
            raise ValueError(f"llm.prompt_template must contain {{prompt}}, got {template!r}")
        self.tokenizer, self.template, self.system_prompt = tokenizer, template, system_prompt

    def __call__(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt ready for the answer; ``shots`` are (prompt, answer) pairs shown as earlier turns."""
        messages = []
        for p, a in shots:
            messages += [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
        return self.messages([*messages, {"role": "user", "content": prompt}])

    def messages(self, messages: Sequence[dict[str, str]]) -> str:
        """A conversation (user / assistant turns, optionally a leading system message, which replaces
        ``system_prompt``) ready for the next assistant turn."""
        messages = list(messages)
        system = self.system_prompt
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        if self.template is not None:
            turns, pending = [], None
            for m in messages:
                if m["role"] == "user":
                    pending = self.template.replace("{prompt}", m["content"])
                    turns.append(pending)
                elif pending is not None:
                    turns[-1] = f"{pending} {m['content']}"
                    pending = None
            text = " ".join(turns)
            return f"{system} {text}" if system else text
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
