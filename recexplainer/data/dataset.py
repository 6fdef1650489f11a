"""The normalized dataset every later stage reads: time-ordered item sequences per user.

Item index 0 is padding; real items are 1..n_items. Users are 0..n_users-1. The split is leave-one-out
in time order: per user the last item is test, the second-to-last validation, the rest training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recexplainer.artifacts import atomic_path, atomic_write_text, write_json

SPLITS = ("train", "valid", "test")


@dataclass
class SequentialData:
    users: np.ndarray  # (N,) int64, sorted by user then time
    items: np.ndarray  # (N,) int64 in 1..n_items
    timestamps: np.ndarray  # (N,) float64
    user_ids: list[str]  # raw id of each user index
    item_table: list[dict[str, Any]]  # per item index: {"id", "title", metadata...}; row 0 = padding

    @classmethod
    def from_arrays(cls, users, items, timestamps, user_ids, item_table) -> SequentialData:
        order = np.lexsort((np.arange(len(users)), timestamps, users))
        return cls(users[order], items[order], timestamps[order], list(user_ids), list(item_table))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_table) - 1

    @cached_property
    def offsets(self) -> np.ndarray:  # (n_users + 1,)
        counts = np.bincount(self.users, minlength=self.n_users)
        return np.concatenate([[0], np.cumsum(counts)])

    @cached_property
    def titles(self) -> list[str]:
        return [row["title"] for row in self.item_table]

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def history(self, user: int, split: str) -> np.ndarray:
        """Items the model may see before predicting ``split``'s target ("train": the training part)."""
        seq = self.sequence(user)
        return seq[:-2] if split in ("train", "valid") else seq[:-1]

    def target(self, user: int, split: str) -> int:
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        return int(self.sequence(user)[-2 if split == "valid" else -1])

    def train_item_counts(self) -> np.ndarray:
        """(n_items + 1,) interactions per item in the training part (popularity without leakage)."""
        position = np.arange(len(self.items)) - self.offsets[self.users]
        length = np.diff(self.offsets)[self.users]
        return np.bincount(self.items[position < length - 2], minlength=self.n_items + 1)

    def statistics(self) -> dict[str, float]:
        lengths = np.diff(self.offsets)
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": int(len(self.items)),
            "density": float(len(self.items) / (self.n_users * self.n_items)),
            "seq_len/mean": float(lengths.mean()),
            "seq_len/median": float(np.median(lengths)),
            "seq_len/min": int(lengths.min()),
            "seq_len/max": int(lengths.max()),
            "n_train_interactions": int(len(self.items) - 2 * self.n_users),
        }

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "interactions.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, users=self.users, items=self.items, timestamps=self.timestamps)
        lines = "".join(json.dumps({"item": k, **row}) + "\n" for k, row in enumerate(self.item_table))
        atomic_write_text(folder / "items.jsonl", lines)
        write_json(folder / "users.json", self.user_ids)

    @classmethod
    def load(cls, folder: Path) -> SequentialData:
        with np.load(folder / "interactions.npz", allow_pickle=False) as arrays:
            users, items, timestamps = arrays["users"], arrays["items"], arrays["timestamps"]
        rows = [
            json.loads(line) for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        item_table = [{k: v for k, v in row.items() if k != "item"} for row in rows]
        user_ids = json.loads((folder / "users.json").read_text(encoding="utf-8"))
        return cls(users, items, timestamps, user_ids, item_table)
