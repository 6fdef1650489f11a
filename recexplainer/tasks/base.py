"""The task-kind interface and its registry.

A :class:`TaskKind` is everything the pipeline knows about one kind of alignment task: the template fields
its prompts may use, how the recommender's scores become its labels (stage ``alignment_data``), how an
answer is decoded, parsed and scored and what each baseline answers (stage ``evaluate``), and which report
columns it fills. Stages ask the registry (:func:`get`) instead of naming kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from recexplainer.alignment_data.templates import TemplateError, template_fields
from recexplainer.text import parse_list, split_strict

SOURCES = ("user", "item", "file")
# the headline metrics' definitions (evaluation.scoring); the other one is reported with a suffix
SCORINGS = ("recai", "lenient")
MODES = ("behavior", "intention", "hybrid")


@dataclass(frozen=True)
class Column:
    label: str  # table header (report tables and HTML)
    title: str  # line label of the run summary
    metric: str  # metric name in metrics.json (task prefix included)


class TaskKind:
    """One kind of task. Subclasses set the class attributes and override the hooks their source uses.

    Examples of a ``user`` kind come from the recommender's scores of one history prefix
    (:meth:`examples`), those of an ``item`` kind from one catalog item (:meth:`item_label`), those of a
    ``file`` kind from a user-supplied file (:meth:`file_examples`).
    """

    name: ClassVar[str]
    # position in reports and listings (the paper's task number where it has one)
    order: ClassVar[float] = 100.0
    source: ClassVar[str] = "user"
    fields: ClassVar[frozenset[str]]  # template fields the kind provides
    required: ClassVar[frozenset[str]]  # fields every template of the kind must use
    examples_per_prefix: ClassVar[int] = 1  # examples one scored prefix gives (caps divide by it)
    label_statistics: ClassVar[bool] = False  # the alignment-data stage reports its label statistics
    # -- evaluation (prefix None: the kind is trained on but not evaluated, e.g. free text) ------------------
    prefix: ClassVar[str | None] = None  # metric-name prefix (task1, task2, ...)
    answer: ClassVar[str | None] = None  # "titles": a generated list of titles; "yes_no": next-token P(yes)
    metrics: ClassVar[tuple[str, ...]] = ()  # per-example metric names (without the prefix)
    strict: ClassVar[tuple[str, ...]] = ()  # those of them the reference (RecAI) scoring defines too
    beam_search: ClassVar[bool] = False  # decoded by beam search, one title per returned sequence
    diversity: ClassVar[bool] = False  # report how many distinct first answers the model gives
    columns: ClassVar[tuple[Column, ...]] = ()  # headline report columns
    checks: ClassVar[tuple[Column, ...]] = ()  # secondary report columns (after every kind's headline)

    # -- configuration ------------------------------------------------------------------------------------
    def validate(self, name: str, task: Any) -> None:
        """Check a task config of this kind (known modes, templates using only the kind's fields)."""
        bad_modes = [m for m in task.modes if m not in MODES]
        if bad_modes:
            raise TemplateError(
                f"tasks.{name}.modes has unknown mode(s) {bad_modes}; choose from {', '.join(MODES)}"
            )
        if not task.templates:
            raise TemplateError(f"tasks.{name}.templates is empty; give at least one template")
        for k, template in enumerate(task.templates):
            used = template_fields(template)
            unknown, missing = used - self.fields, self.required - used
            if unknown:
                raise TemplateError(
                    f"tasks.{name}.templates[{k}] uses unknown field(s) {sorted(unknown)}; "
                    f"a {self.name} template may use {sorted(self.fields)}"
                )
            if missing:
                raise TemplateError(
                    f"tasks.{name}.templates[{k}] must contain {sorted('{' + f + '}' for f in missing)}"
                )

    # -- labels (stage alignment_data) ----------------------------------------------------------------------
    def setup(self, builder: Any) -> None:
        """Per-task state on the builder before any example is built (default: none)."""

    def prepare(self, builder: Any, prefixes: Any, rows: Sequence[int]) -> None:
        """Batch work before :meth:`examples` runs on ``rows`` of a scored batch (default: none)."""

    def examples(
        self, builder: Any, p: Any, row: int, key: str, user: tuple[str, list], base: dict
    ) -> list[dict]:
        """The examples of one scored prefix (``p``'s row ``row``); ``user`` is its (text, slots)."""
        raise NotImplementedError(f"task kind {self.name} has no examples from history prefixes")

    def item_label(
        self, builder: Any, item: int, item_table: list[dict], similar: Any
    ) -> tuple[str, dict] | None:
        """(target, labels) of an example about ``item``; None skips the item."""
        raise NotImplementedError(f"task kind {self.name} has no examples from catalog items")

    # -- answers (stage evaluate) ---------------------------------------------------------------------------
    def titles_asked(self, row: dict[str, Any]) -> int:
        """How many titles a correct answer lists (bounds generation length and constrained decoding)."""
        return 1

    def parse(self, texts: Sequence[str], separator: str, k: int) -> list[str]:
        """The answer's titles from the generated texts (one per returned sequence)."""
        return parse_list(texts[0], separator)

    def strict_answers(self, texts: Sequence[str], separator: str, row: dict[str, Any] | None) -> list[str]:
        """The answers as the reference scoring reads them from the generated texts: every returned sequence
        whole (beam-search kinds), else the first sequence split on the separator."""
        return list(texts) if self.beam_search else split_strict(texts[0], separator)

    def score(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        """One example's metric values under the lenient scoring (names without the prefix): parsed titles
        (numbering, bullets, quotes and trailing punctuation dropped), repeats removed."""
        raise NotImplementedError(f"task kind {self.name} has no evaluation metric")

    def score_recai(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, float]:
        """The :attr:`strict` metrics under the public reference code's rules: each answer whole, exact
        after strip().lower() (``prediction["items_strict"]``), no deduplication, lists cut to the length
        asked."""
        return {}

    def metric_names(self, scoring: str) -> tuple[str, ...]:
        """Every per-example metric of a run scored by ``scoring``: the headline names, then the strict
        metrics under the other scoring as ``<metric>/<other scoring>``."""
        other = _other(scoring)
        return self.metrics + tuple(f"{m}/{other}" for m in self.strict)

    def scores(self, row: dict[str, Any], prediction: dict[str, Any], scoring: str) -> dict[str, float]:
        """One example's metrics (:meth:`metric_names`): ``scoring`` under the plain names."""
        lenient, recai = self.score(row, prediction), self.score_recai(row, prediction)
        headline, other = (recai, lenient) if scoring == "recai" else (lenient, recai)
        out = {**lenient, **headline}
        out.update({f"{m}/{_other(scoring)}": other[m] for m in self.strict})
        return out

    def baselines(self) -> set[str]:
        """The baselines that answer this kind: those with an ``answer_<baseline>`` method."""
        return {n[len("answer_") :] for n in dir(self) if n.startswith("answer_")}

    def baseline_answer(self, baseline: Any, row: dict[str, Any]) -> list[int] | float:
        """A baseline's answer: item ids in order, or P(yes) for yes/no kinds."""
        return getattr(self, f"answer_{baseline.name}")(baseline, row)


def _other(scoring: str) -> str:
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
    return SCORINGS[1 - SCORINGS.index(scoring)]


KINDS: dict[str, TaskKind] = {}


def register(kind: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: add a task kind to the registry (its ``name`` is what ``tasks.<t>.kind`` names)."""
    if kind.source not in SOURCES:
        raise ValueError(f"task kind {kind.name}: source {kind.source!r} is not one of {SOURCES}")
    if kind.name in KINDS and type(KINDS[kind.name]) is not kind:
        raise ValueError(f"task kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind()
    for name in sorted(KINDS, key=lambda n: KINDS[n].order):  # keep the registry in report order
        KINDS[name] = KINDS.pop(name)
    return kind


def get(name: str) -> TaskKind:
    if name not in KINDS:
        raise TemplateError(f"{name!r} is not a task kind; choose one of {', '.join(KINDS)}")
    return KINDS[name]


def evaluable() -> dict[str, TaskKind]:
    """Kinds with an evaluation metric, in registry order."""
    return {n: k for n, k in KINDS.items() if k.prefix is not None}


def metric_prefix(task: str, kind: str) -> str:
    """``task1`` ... for the standard tasks; a renamed or extra task of a kind keeps its own name."""
    return KINDS[kind].prefix if task == kind else task


def headline_columns() -> list[Column]:
    """Every kind's headline columns (the paper's Table 1), in registry order."""
    return [c for k in KINDS.values() for c in k.columns]


def report_columns() -> list[Column]:
    """The headline columns, then every kind's secondary ones."""
    return headline_columns() + [c for k in KINDS.values() for c in k.checks]


def decision_labels(builder: Any, p: Any, row: int, item: int, answer: str) -> dict[str, Any]:
    """Labels of a yes / no decision about ``item`` for prefix ``row``: the answer and where the recommender
    ranks the item (rank, items ranked, score) and its popularity."""
    return {
        "item": item,
        "answer": answer,
        "rank": int(p.ranks[row, item]),
        "n_ranked": int(p.n_valid[row]),
        "score": float(p.scores[row, item]),
        "popularity": int(builder.popularity[item]),
    }


def strict_items(prediction: dict[str, Any]) -> Sequence[int | None]:
    """The answers as the reference scoring reads them (an empty answer is one miss)."""
    return prediction.get("items_strict") or [None]


def predicted(prediction: dict[str, Any]) -> tuple[Sequence[int | None], Sequence[int | None]]:
    """(items, items under the fuzzy rule) of a title answer; an empty answer is one miss."""
    items = prediction["items"] or [None]
    return items, prediction.get("items_fuzzy") or items
