"""Title normalisation, matching and parsing of LLM output: the one place these rules live.

Exact match (after strip, lower-case and whitespace collapsing) is the headline rule; a fuzzy match
(difflib ratio) is offered separately and must be reported as its own setting. Parsing never raises on
odd output: numbering, bullets, quotes, separators and extra words are tolerated.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

_SPACES = re.compile(r"\s+")
_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*\u2022])\s*")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_SUFFIX = re.compile(r" \[\d+\]$")  # the data stage's suffix for repeated titles
_TRAILING = ".,;:!"  # stripped from parsed titles, so catalog titles are also indexed without it


def normalize(title: str) -> str:
    """Strip, lower-case and collapse whitespace."""
    return _SPACES.sub(" ", title.strip().lower())


def parse_list(text: str, separator: str = ";", limit: int | None = None) -> list[str]:
    """Split an answer into titles: one per line, or separated by ``separator``; drops numbering, bullets,
    surrounding quotes and trailing punctuation; empty pieces are skipped."""
    pieces = []
    for line in text.replace("\r", "\n").split("\n"):
        for piece in line.split(separator) if separator else [line]:
            piece = _NUMBERING.sub("", piece).strip().strip(_QUOTES).strip()
            piece = piece.rstrip(_TRAILING).strip().strip(_QUOTES).strip()
            if piece:
                pieces.append(piece)
    return pieces[:limit] if limit is not None else pieces


def parse_yes_no(text: str) -> str | None:
    """'yes' / 'no' from the start of an answer, else from the first occurrence; None if neither."""
    words = re.findall(r"[a-z]+", text.lower())
    for word in words[:3] + words:
        if word in ("yes", "no"):
            return word
    return None


class TitleIndex:
    """Catalog titles (index 0 = padding) -> item ids, by exact normalised match or fuzzy match."""

    def __init__(self, titles: Sequence[str]):
        self.titles = list(titles)
        self.exact: dict[str, int] = {}
        for item, title in enumerate(self.titles[1:], start=1):
            for key in {normalize(title), normalize(_SUFFIX.sub("", title))}:
                self.exact.setdefault(key, item)  # first item wins for a repeated title
        # parse_list drops trailing punctuation ("Airplane!", "Escape from L.A."): match that form too,
        # unless another title is spelled exactly so
        for key, item in list(self.exact.items()):
            stripped = key.rstrip(_TRAILING).strip()
            if stripped:
                self.exact.setdefault(stripped, item)
        self._keys = list(self.exact)

    def match(self, text: str) -> int | None:
        """Item id of an exact (normalised) title match, else None."""
        return self.exact.get(normalize(text))

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
            if len(key) < min_length:
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
