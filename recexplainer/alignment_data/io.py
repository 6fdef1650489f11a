"""What the alignment-data stage writes, and the readers the downstream stages use (never the paths).

A folder holds ``examples/<task>.<split>.jsonl`` (one JSON example per line: prompt, target, slots, labels)
and ``vectors.safetensors``: ``items`` (N + 1, d_rec), the recommender's item vectors (row 0: padding),
and ``users_<split>`` (rows, d_rec), the user vector of each example's prefix (``user_row`` indexes it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

EXAMPLES_DIR = "examples"
VECTORS_FILE = "vectors.safetensors"


def examples_path(folder: Path, task: str, split: str) -> Path:
    """The examples file of one task and split."""
    return folder / EXAMPLES_DIR / f"{task}.{split}.jsonl"


def example_files(folder: Path, split: str) -> dict[str, Path]:
    """task -> examples file of ``split``, in task-name order."""
    return {p.name.split(".")[0]: p for p in sorted((folder / EXAMPLES_DIR).glob(f"*.{split}.jsonl"))}


def read_examples(folder: Path, split: str, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """All examples of a split (optionally only some tasks), task by task in name order, in file order."""
    rows = []
    for task, path in example_files(folder, split).items():
        if tasks is not None and task not in tasks:
            continue
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle)
    return rows


def read_vectors(folder: Path, split: str) -> dict[str, torch.Tensor]:
    """``items`` and the ``users`` of ``split`` (an empty table when the split has no user examples)."""
    tables = load_file(folder / VECTORS_FILE)
    items = tables["items"]
    return {"items": items, "users": tables.get(f"users_{split}", torch.empty(0, items.shape[1]))}


def vector_width(folder: Path) -> int:
    """d_rec: the width of the recommender's vectors, read without loading them."""
    from safetensors import safe_open

    with safe_open(str(folder / VECTORS_FILE), "pt") as handle:
        return handle.get_slice("items").get_shape()[1]
