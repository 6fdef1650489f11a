"""Counterfactual faithfulness of explanations, checked against the recommender itself (no judge).

An explanation cites history items (their titles appear in its text). Removing the cited items from the
history and re-scoring the item shows whether they drive the recommender's decision; removing as many
random history items (several draws) is the reference. Titles mentioned that are not in the history are
hallucinated citations (citation precision).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recexplainer.recommender.attribution import item_scores
from recexplainer.recommender.base import Recommender
from recexplainer.text import TitleIndex


@dataclass
class Citations:
    mentioned: list[int]  # catalog items whose titles occur in the text (the explained item excluded)
    cited: list[int]  # those in the user's history
    hallucinated: list[int]  # those not in the history

    @property
    def precision(self) -> float | None:
        return len(self.cited) / len(self.mentioned) if self.mentioned else None


def citations(text: str, index: TitleIndex, history: Sequence[int], item: int) -> Citations:
    mentioned = [m for m in index.mentions(text) if m != item]
    in_history = set(int(h) for h in history)
    return Citations(
        mentioned,
        [m for m in mentioned if m in in_history],
        [m for m in mentioned if m not in in_history],
    )


def counterfactual(
    model: Recommender,
    history: Sequence[int],
    item: int,
    cited: Sequence[int],
    n_random: int,
    seed: int,
    key: str,
) -> dict[str, float]:
    """Score change of ``item`` when the cited items leave the history vs as many random ones.

    Returns the full-history score, the change (full minus reduced) for the cited removal and the mean
    change over ``n_random`` random removals of the same size, and whether the cited removal moved the
    score more (in absolute value) than the random ones do on average.
    """
    history = [int(h) for h in history]
    cited_set = set(int(c) for c in cited)
    k = sum(1 for h in history if h in cited_set)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    variants = [history, [h for h in history if h not in cited_set]]
    for _ in range(n_random):
        drop = set(rng.choice(len(history), size=k, replace=False).tolist()) if k else set()
        variants.append([h for i, h in enumerate(history) if i not in drop])
    scores = item_scores(model, variants, [item] * len(variants))
    full, cited_delta = float(scores[0]), float(scores[0] - scores[1])
    random_deltas = scores[0] - scores[2:]
    return {
        "score": full,
        "cited_delta": cited_delta,
        "random_delta": float(random_deltas.mean()) if n_random else 0.0,
        "cited_abs": abs(cited_delta),
        "random_abs": float(np.abs(random_deltas).mean()) if n_random else 0.0,
        "cited_wins": float(abs(cited_delta) > float(np.abs(random_deltas).mean())) if n_random else 0.0,
        "n_cited": float(k),
    }


def attribution_agreement(cited: Sequence[int], top: Sequence[int]) -> float | None:
    """Share of the cited items that are among the recommender's top attributed history items (None when
    nothing is cited)."""
    cited = list(dict.fromkeys(int(c) for c in cited))
    if not cited:
        return None
    top_set = set(int(t) for t in top)
    return sum(c in top_set for c in cited) / len(cited)


def template_pattern(template: str) -> re.Pattern:
    """A regex that matches any rendering of an explanation target template (its fields as wildcards)."""
    parts = re.split(r"(\{decision\}|\{cited\}|\{genre\})", template)
    regex = "".join(
        "(?:Yes|No)" if p == "{decision}" else ".+?" if p in ("{cited}", "{genre}") else re.escape(p)
        for p in parts
    )
    return re.compile(regex, re.IGNORECASE | re.DOTALL)


def copies_template(text: str, patterns: Sequence[re.Pattern]) -> bool:
    """True when ``text`` is one of the training target forms with some titles filled in."""
    text = " ".join(text.split())
    return any(p.fullmatch(text) for p in patterns)
