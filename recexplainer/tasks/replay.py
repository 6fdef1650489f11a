"""Replay: general instruction data from a user-supplied JSONL file, mixed into training so that the LLM
keeps its general abilities (no download: ``tasks.replay.path`` names a local file; without it the task
is inactive). Trained, not evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recexplainer.data.loaders import DataFormatError, json_lines
from recexplainer.tasks.base import TaskKind, register


@register
class Replay(TaskKind):
    name = "replay"
    order = 20
    source = "file"
    fields = frozenset({"instruction"})
    required = frozenset({"instruction"})

    def file_examples(self, builder: Any) -> list[dict[str, Any]]:
        rows = read_replay(builder.task.path, builder.task.max_train)
        return [
            builder.example(
                "train",
                f"l{r['line']}",
                {"instruction": r["instruction"]},
                {},
                r["response"],
                user=-1,
                labels={},
            )
            for r in rows
        ]


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
