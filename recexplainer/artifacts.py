"""Artifact folders and atomic writes: the one place that knows where stages put things.

A stage's folder is ``<paths.artifacts>/<stage>/<key>/`` where ``key`` hashes the config that determines
the stage's output plus the keys of its upstream stages. The completion marker ``_COMPLETE`` is written
last; a folder without it is never reused (it may hold checkpoints to resume from).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = "_COMPLETE"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
KEY_FILE = "key.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def stage_key(fields: dict[str, Any]) -> str:
    """Stable 12-hex-digit hash of a JSON-serialisable dict (key order does not matter)."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_dir(root: str | os.PathLike, stage: str, key: str) -> Path:
    return Path(root) / stage / key


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def mark_complete(folder: Path) -> None:
    atomic_write_text(folder / MARKER, "ok\n")


def clear_complete(folder: Path) -> None:
    (folder / MARKER).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock so that parallel sweep points never build the same stage folder twice."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_file = folder.parent / f".{folder.name}.lock"
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
