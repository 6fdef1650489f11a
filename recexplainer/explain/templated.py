"""Explanations without an LLM, for reference on the same pairs as the LLM's.

- ``template``: the recommender's own decision and its top leave-one-out attributed history items, written
  with the explanation task's target templates: what a perfectly aligned LLM would say (the ceiling).
- ``template_random``: the same decision and templates, citing random history items (the floor).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recexplainer.alignment_data.explanations import ExplanationWriter
from recexplainer.config import ConfigError
from recexplainer.recommender.attribution import top_attributed

MODELS = ("template", "template_random")


def explanation_config(cfg: DictConfig) -> DictConfig:
    """The explanation task's config node (its target templates and number of cited items)."""
    for task in cfg.tasks.values():
        if task.kind == "explanation":
            return task
    raise ConfigError(
        f"explain.model={cfg.explain.model} writes with the explanation task's target templates, but "
        "the tasks group has no task of kind 'explanation' (tasks=default has one)"
    )


def explanation_task(cfg: DictConfig) -> Any:
    return OmegaConf.to_object(explanation_config(cfg))


def explain(
    cfg: DictConfig,
    rows: Sequence[dict[str, Any]],
    attributions: Sequence[np.ndarray],
    titles: Sequence[str],
    item_table: Sequence[dict],
) -> dict[str, dict[str, Any]]:
    """{row id: {"id", "p_yes", "text"}} for every row: P(yes) is the recommender's decision (0 or 1)."""
    task = explanation_task(cfg)
    writer = ExplanationWriter(task, titles, item_table, np.random.default_rng([cfg.seed, 3]))
    out = {}
    for row, values in zip(rows, attributions, strict=True):
        history = [int(h) for h in row["history"]]
        if cfg.explain.model == "template":
            cited = top_attributed(history, values, row["answer"], task.n_cited)
        else:
            rng = np.random.default_rng([cfg.seed, zlib.crc32(row["id"].encode())])
            distinct = list(dict.fromkeys(history))
            cited = [distinct[i] for i in rng.permutation(len(distinct))[: task.n_cited]]
        text, _ = writer.write(row["answer"], row["item"], cited)
        out[row["id"]] = {"id": row["id"], "p_yes": 1.0 if row["answer"] == "yes" else 0.0, "text": text}
    return out
