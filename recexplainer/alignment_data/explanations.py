"""Explanation targets: the recommender's decision and the history items its attributions rank highest,
rendered with paraphrased templates (``tasks.explanation.yes_templates`` / ``no_templates``).

Template fields: ``{decision}`` (Yes / No), ``{cited}`` (the cited titles: "A", "A and B", "A, B and C")
and, optionally, ``{genre}``: a genre the cited items share with the item (yes) or share among themselves
while the item lacks it (no). A template naming ``{genre}`` is used only where such a genre exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from recexplainer.alignment_data.templates import render
from recexplainer.recommender.attribution import ranked_attributions

IGNORED_GENRES = {"unknown", ""}


def join_titles(titles: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    titles = list(titles)
    if len(titles) <= 1:
        return "".join(titles)
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def evidence_text(
    fmt: str, history: Sequence[int], attributions: Sequence[float], titles: Sequence[str], k: int
) -> str:
    """The recommender's leave-one-out attributions as prompt text: ``fmt``'s ``{up}`` lists the ``k`` history
    items whose presence raises the item's score most (largest positive attributions), ``{down}`` those that
    lower it most, each as "Title (+0.45)", strongest first; a side without such items reads "no item".
    These are the items an explanation of a yes (up) or a no (down) cites."""

    def side(answer: str) -> str:
        ranked = ranked_attributions(history, attributions, answer, k, fallback=False)
        return join_titles([f"{titles[i]} ({value:+.2f})" for i, value in ranked]) or "no item"

    return render(fmt, {"up": side("yes"), "down": side("no")})


def shared_genre(
    answer: str, item_genres: Sequence[str], cited_genres: Sequence[Sequence[str]]
) -> str | None:
    """yes: the genre of the item that most cited items have; no: the genre most cited items share that
    the item lacks (needs two cited items, or one when it is the only one). Ties: catalogue order."""
    if not cited_genres:
        return None
    counts = Counter(g for genres in cited_genres for g in dict.fromkeys(genres) if g not in IGNORED_GENRES)
    if answer == "yes":
        candidates = [g for g in item_genres if counts.get(g)]
    else:
        need = min(2, len(cited_genres))
        candidates = [g for g, c in counts.items() if c >= need and g not in set(item_genres)]
    if not candidates:
        return None
    return max(candidates, key=lambda g: (counts[g], -candidates.index(g)))


class ExplanationWriter:
    """Renders explanation targets for one task config; one template draw per target."""

    def __init__(
        self, task: Any, titles: Sequence[str], item_table: Sequence[dict], rng: np.random.Generator
    ):
        self.titles, self.item_table, self.rng = titles, item_table, rng
        self.templates = {"yes": list(task.yes_templates), "no": list(task.no_templates)}

    def genres(self, item: int) -> list[str]:
        row = self.item_table[item] if 0 <= item < len(self.item_table) else {}
        return list(row.get("genres") or row.get("categories") or [])

    def write(self, answer: str, item: int, cited: Sequence[int]) -> tuple[str, str | None]:
        """(the target text, the genre it names or None)."""
        genre = shared_genre(answer, self.genres(item), [self.genres(c) for c in cited])
        pool = [t for t in self.templates[answer] if genre is not None or "{genre}" not in t]
        template = pool[int(self.rng.integers(len(pool)))]
        values = {
            "decision": "Yes" if answer == "yes" else "No",
            "cited": join_titles([self.titles[c] for c in cited]) or "the user's history",
            "genre": genre or "",
        }
        return render(template, values), (genre if "{genre}" in template else None)
