"""The evaluator: a Lightning module that runs a predictor over each task's examples, scores every
example, accumulates the means in torchmetrics state (summed across processes under DDP) and appends
per-example records to a predictions file, so a killed run resumes from what it has written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from recexplainer import tasks as kinds
from recexplainer.artifacts import atomic_write_text

log = logging.getLogger(__name__)


def answer_diversity(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Distinct first answers and the share of the most common one: a model (or baseline) that answers
    a constant scores well on skewed labels, and these numbers show it."""
    firsts = []
    for r in records:
        items, titles = r.get("items") or [None], r.get("titles") or [""]
        firsts.append(items[0] if items[0] is not None else "text:" + (titles[0] if titles else "").lower())
    if not firsts:
        return {}
    counts = Counter(firsts)
    return {
        "distinct_answers": float(len(counts)),
        "top_answer_share": counts.most_common(1)[0][1] / len(firsts),
    }


class ExampleMeans(Metric):
    """Means of named per-example values; sums and counts are states reduced by summation, so shards
    evaluated on different processes merge exactly."""

    full_state_update = False

    def __init__(self, names: Sequence[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.names = list(names)
        self.add_state(
            "total", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "count", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum"
        )

    def _apply(self, fn: Any, exclude_state: Sequence[str] = ()) -> nn.Module:
        """Device moves apply to the states; dtype changes do not. ``module.to(torch.bfloat16)`` (Lightning's
        ``bf16-true`` converts the whole evaluator) would otherwise turn the float64 sums into bf16, where
        256 + 1 == 256: counts stall and means come out wrong (measured: task 3 accuracy 1.0)."""
        this = super()._apply(fn, exclude_state)
        for key in ("total", "count"):
            this._defaults[key] = this._defaults[key].to(torch.float64)
            setattr(this, key, getattr(this, key).to(torch.float64))
        return this

    def update(self, values: Sequence[dict[str, float]]) -> None:  # type: ignore[override]
        for row in values:
            for i, name in enumerate(self.names):
                if name in row:
                    self.total[i] += float(row[name])
                    self.count[i] += 1

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        return {
            name: float(self.total[i] / self.count[i])
            for i, name in enumerate(self.names)
            if self.count[i] > 0
        } | {"n": float(self.count.max()) if len(self.names) else 0.0}


class PredictionStore:
    """Per-example records in JSON lines (one file per process), appended and flushed batch by batch."""

    def __init__(self, folder: Path, name: str, rank: int = 0, world_size: int = 1):
        self.folder = folder
        self.name = name
        suffix = f".rank{rank}" if world_size > 1 else ""
        self.path = folder / f"{name}{suffix}.jsonl"
        self._handle = None

    def load(self) -> list[dict[str, Any]]:
        """Every complete record written so far by any process; a torn last line (a kill mid-write) is
        dropped and this process's file rewritten without it."""
        records = []
        for path in sorted(self.folder.glob(f"{self.name}.jsonl")) + sorted(
            self.folder.glob(f"{self.name}.rank*.jsonl")
        ):
            good = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    good.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s: dropping a torn record (an interrupted write)", path)
            if path == self.path and len(good) != len(path.read_text(encoding="utf-8").splitlines()):
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in good))
            records.extend(good)
        return records

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        if self._handle is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write("".join(json.dumps(r) + "\n" for r in records))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class EvaluatorModule(L.LightningModule):
    """Scores one predictor on several tasks (name, kind, metric prefix).

    ``done``: records already written (resume), folded into the metrics before new batches run.
    """

    def __init__(
        self,
        predictor: Any,
        tasks: Sequence[tuple[str, str, str]],  # (task name, kind, metric prefix)
        store: PredictionStore,
        done: Sequence[dict[str, Any]] = (),
        loader_tasks: Sequence[int] | None = None,
        sync: bool = True,
        scoring: str = "recai",
    ):
        """``sync``: reduce the metrics across processes at ``results()`` (the Trainer-driven LLM pass);
        False for predictors stepped by one process alone (baselines), which must not wait for the others."""
        super().__init__()
        self.predictor = predictor
        if isinstance(getattr(predictor, "model", None), nn.Module):
            self.model = predictor.model  # registered, so Lightning moves it to the device
        self.tasks = list(tasks)
        # dataloader i holds the examples of tasks[loader_tasks[i]] (tasks already finished have none)
        self.loader_tasks = list(range(len(self.tasks))) if loader_tasks is None else list(loader_tasks)
        self.store, self.scoring = store, scoring
        self.task_metrics = nn.ModuleDict(
            {
                name.replace(".", "_"): ExampleMeans(
                    kinds.get(kind).metric_names(scoring), sync_on_compute=sync
                )
                for name, kind, _ in self.tasks
            }
        )
        self.seconds = {name: 0.0 for name, _, _ in self.tasks}
        self.counts = {name: 0 for name, _, _ in self.tasks}
        self._done = list(done)

    def _metric(self, task: str) -> ExampleMeans:
        return self.task_metrics[task.replace(".", "_")]

    def on_test_start(self) -> None:
        if self.global_rank == 0:  # resumed records count once, not once per process
            for name, _, _ in self.tasks:
                self._metric(name).update([r["metrics"] for r in self._done if r["task"] == name])

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> None:
        name, kind, _ = self.tasks[self.loader_tasks[dataloader_idx]]
        start = time.perf_counter()
        predictions = self.predictor.predict(kind, batch)
        self.seconds[name] += time.perf_counter() - start
        self.counts[name] += len(batch)
        records, task = [], kinds.get(kind)
        for row, prediction in zip(batch, predictions, strict=True):
            values = task.scores(row, prediction, self.scoring)
            records.append({"id": row["id"], "task": name, **prediction, "metrics": values})
        self._metric(name).update([r["metrics"] for r in records])
        self.store.write(records)

    def on_test_epoch_end(self) -> None:
        # computed here, on every process while the states are still on the device: after the Trainer's
        # teardown the module is back on the CPU, and NCCL cannot gather CPU tensors
        self._results = self._compute()

    def on_test_end(self) -> None:
        self.store.close()

    def _compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, _, prefix in self.tasks:
            for key, value in self._metric(name).compute().items():
                out[f"{prefix}/{key}"] = value
        return out

    def results(self) -> dict[str, float]:
        """Metric means per task (synced across processes), ``<prefix>/<metric>``, plus counts."""
        results = getattr(self, "_results", None)
        return dict(results) if results is not None else self._compute()
