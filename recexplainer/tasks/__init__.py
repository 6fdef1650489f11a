"""Task kinds: everything about one kind of alignment task in one module, registered in :mod:`.base`.

Built-in kinds, in registry order (the report's column order): ``retrieval`` (task 1), ``ranking``
(task 2), ``interest`` / ``interest_hard`` (task 3), ``history`` (task 6), ``item_recovery``,
``item_similar``, ``item_metadata``, ``replay`` and ``explanation``. Adding a kind is one module defining a
:class:`TaskKind` subclass decorated with :func:`register` (imported here or by the user's code before the
run) and one task-set file in ``conf/tasks/`` with a task whose ``kind`` names it; docs/usage.md shows an
example.
"""

from typing import Any

from recexplainer.alignment_data.templates import TemplateError, validate_format
from recexplainer.tasks import explanation, history, interest, items, ranking, replay, retrieval  # noqa: F401
from recexplainer.tasks.base import (
    KINDS,
    Column,
    TaskKind,
    evaluable,
    get,
    headline_columns,
    metric_prefix,
    register,
    report_columns,
)

__all__ = [
    "KINDS",
    "Column",
    "TaskKind",
    "evaluable",
    "get",
    "headline_columns",
    "metric_prefix",
    "register",
    "report_columns",
    "validate",
]


def validate(name: str, task: Any) -> None:
    """Check one task config (``tasks.<name>``): a known kind, then the kind's own rules."""
    if task.kind not in KINDS:
        raise TemplateError(
            f"tasks.{name}.kind={task.kind!r} is not a task kind; choose one of {', '.join(KINDS)}"
        )
    KINDS[task.kind].validate(name, task)
    if task.user_format is not None:
        validate_format(f"tasks.{name}.user_format", task.user_format, {"placeholder", "titles"})
