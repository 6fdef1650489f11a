"""The ``alignment_data`` stage: the frozen recommender's decisions as instruction examples.

Writes ``examples/<task>.<split>.jsonl``, ``vectors.safetensors`` (item embeddings and the user vector of
every scored prefix, so the aligner never needs the recommender) and label statistics in metrics.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from recexplainer import tasks as kinds
from recexplainer.alignment_data.build import TaskBuilder
from recexplainer.alignment_data.io import EXAMPLES_DIR, VECTORS_FILE, example_files, examples_path
from recexplainer.alignment_data.labels import (
    iter_scored_prefixes,
    most_similar_items,
    sample_prefixes,
    task_rng,
)
from recexplainer.alignment_data.templates import SlotRenderer, template_fields
from recexplainer.artifacts import atomic_path, write_json
from recexplainer.data.dataset import SequentialData
from recexplainer.recommender import load_recommender
from recexplainer.text import split_mark

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def active_tasks(cfg: DictConfig) -> dict[str, Any]:
    """Tasks that apply to the configured mode (replay only when a file is given), as plain TaskConfig objects
    (OmegaConf attribute access is far too slow for per-example loops)."""
    return {
        name: OmegaConf.to_object(task)
        for name, task in cfg.tasks.items()
        if cfg.prompt.mode in task.modes and (kinds.get(task.kind).source != "file" or task.path)
    }


def shown_history(cfg: DictConfig) -> int | None:
    """``prompt.text_hist_len`` where a user format renders ``{titles}``; None (every title) otherwise, so
    the knob cannot change an intention run's examples or cache key."""
    n = cfg.prompt.get("text_hist_len")
    formats = [cfg.prompt.user_format] + [t.user_format for t in cfg.tasks.values() if t.get("user_format")]
    return n if n is not None and any("titles" in template_fields(f) for f in formats) else None


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    prompt = OmegaConf.to_container(cfg.prompt, resolve=True)
    prompt["text_hist_len"] = shown_history(cfg)  # the effective value (intention renders no titles)
    tasks = OmegaConf.to_container(cfg.tasks, resolve=True)
    for task in tasks.values():
        if isinstance(task, dict) and task.get("target_k") == 1:
            task.pop("target_k")  # the top-1 title: the target as before the knob existed
    return {
        "alignment": prompt,  # the field's name in every existing key (renaming it would orphan artifacts)
        "tasks": tasks,
        "seed": cfg.seed,
    }


def _eval_users(n_users: int, seed: int, cap: int | None) -> np.ndarray:
    order = np.random.default_rng([seed, 7]).permutation(n_users)  # the same users for every task
    return order if cap is None else order[:cap]


def _item_split(n_items: int, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Items held out of item-task training; half validation, half test (the same for every item task)."""
    perm = np.random.default_rng([seed, 11]).permutation(np.arange(1, n_items + 1))
    n_eval = int(round(fraction * n_items))
    held = perm[:n_eval]
    return {
        "train": np.sort(perm[n_eval:]),
        "valid": np.sort(held[: n_eval // 2]),
        "test": np.sort(held[n_eval // 2 :]),
    }


def run(cfg: DictConfig, out_dir: Path, upstream: dict[str, Path]) -> dict[str, float]:
    data = SequentialData.load(upstream["data"])
    model = load_recommender(upstream["recommender"])
    tasks = active_tasks(cfg)
    if not tasks:
        raise ValueError(f"no task applies to prompt.mode={cfg.prompt.mode}; check tasks.*.modes")
    renderer = SlotRenderer(cfg.prompt, data.titles)
    _check_titles(data.titles, cfg.prompt)
    popularity = data.train_item_counts()
    builders = {
        n: TaskBuilder(
            n, t, cfg.prompt.mode, renderer, cfg.seed, popularity, data.titles, model, data.item_table
        )
        for n, t in tasks.items()
    }
    metrics: dict[str, float] = {}
    (out_dir / EXAMPLES_DIR).mkdir(exist_ok=True)
    vectors: dict[str, torch.Tensor] = {"items": model.item_embeddings().detach().float().contiguous()}
    counts: Counter = Counter()
    collected: dict[tuple[str, str], list[dict]] = {}

    with contextlib.ExitStack() as stack:
        writers = {}
        for name in tasks:
            for split in SPLITS:
                tmp = stack.enter_context(atomic_path(examples_path(out_dir, name, split)))
                writers[name, split] = stack.enter_context(open(tmp, "w", encoding="utf-8"))

        def emit(name: str, split: str, rows: list[dict]) -> None:
            for row in rows:
                writers[name, split].write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[name, split] += len(rows)
            if builders[name].kind.label_statistics:
                collected.setdefault((name, split), []).extend(
                    {"labels": r["labels"], "history": r["history"], "earlier": _earlier(data, r)}
                    for r in rows
                )

        user_tasks = {n: t for n, t in tasks.items() if builders[n].kind.source == "user"}
        if user_tasks:
            for split in SPLITS:
                _user_split(cfg, split, data, model, user_tasks, builders, emit, vectors)
        item_tasks = {n: t for n, t in tasks.items() if builders[n].kind.source == "item"}
        if item_tasks:
            similar = most_similar_items(vectors["items"])
            for name, task in item_tasks.items():
                parts = _item_split(data.n_items, task.eval_items_fraction, cfg.seed)
                rng = task_rng(cfg.seed, name, "items")
                for split in SPLITS:
                    items = parts[split]
                    cap = task.max_train if split == "train" else task.max_eval
                    if split == "train" and task.train_per_user == 0:
                        items = items[:0]
                    if cap is not None and len(items) > cap:
                        items = np.sort(rng.choice(items, size=cap, replace=False))
                    repeats = (
                        (task.train_per_user or 1) if split == "train" else 1
                    )  # templates vary per repeat
                    emit(
                        name,
                        split,
                        builders[name].from_items(split, items, data.item_table, similar, repeats),
                    )
        for name in tasks:
            if builders[name].kind.source == "file":
                emit(name, "train", builders[name].kind.file_examples(builders[name]))

    with atomic_path(out_dir / VECTORS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in vectors.items()}, str(tmp))
    for (name, split), n in sorted(counts.items()):
        metrics[f"count/{name}/{split}"] = n
    metrics.update(label_statistics(collected, popularity))
    metrics["n_tasks"] = len(tasks)
    write_json(
        out_dir / "protocol.json",
        {
            "labels": "from the recommender's ranking of all items for each prefix, "
            + (
                "the prefix's items masked"
                if cfg.prompt.mask == "prefix"
                else "every item the user consumed before the position masked"
            ),
            "prefix": f"the last {cfg.prompt.max_hist_len} items before the position",
            "prefix_text": (
                "every item of the prefix"
                if shown_history(cfg) is None
                else f"the last {shown_history(cfg)} items of the prefix (vectors and labels: all)"
            ),
            "splits": "train: prefixes ending inside the training part; valid / test: each user's held-out positions",
            "item_tasks": "items held out of item-task training form the valid / test split",
            "mode": cfg.prompt.mode,
        },
    )
    _log_summary(counts, metrics)
    return metrics


def _user_split(cfg, split, data, model, user_tasks, builders, emit, vectors) -> None:
    """Score the prefixes a split needs once, then let every user task read its labels off them."""
    if split == "train":
        ks = [t.train_per_user for t in user_tasks.values()]
        per_user = None if any(k is None for k in ks) else max(ks)
        if per_user == 0:
            vectors[f"users_{split}"] = torch.empty(0, vectors["items"].shape[1])
            return
        users, ends, rank = sample_prefixes(data, split, per_user, cfg.seed)
        caps = {}
        for name, task in user_tasks.items():
            k = task.train_per_user
            rows = np.flatnonzero(rank < (k if k is not None else np.inf))
            per = kinds.get(task.kind).examples_per_prefix
            if task.max_train is not None and len(rows) * per > task.max_train:
                rows = task_rng(cfg.seed, name, "cap").choice(rows, size=task.max_train // per, replace=False)
            caps[name] = np.zeros(len(users), dtype=bool)
            caps[name][rows] = True
    else:
        caps_n = [t.max_eval for t in user_tasks.values()]
        cap = None if any(c is None for c in caps_n) else max(caps_n)
        chosen = np.sort(_eval_users(data.n_users, cfg.seed, cap))
        users, ends, rank = sample_prefixes(data, split, 1, cfg.seed)
        users, ends, rank = users[chosen], ends[chosen], rank[chosen]
        order = {int(u): i for i, u in enumerate(_eval_users(data.n_users, cfg.seed, None))}
        caps = {}
        for name, task in user_tasks.items():
            limit = task.max_eval if task.max_eval is not None else data.n_users
            caps[name] = np.array([order[int(u)] < limit for u in users], dtype=bool)
    user_vectors = []
    scored = iter_scored_prefixes(
        model, data, split, users, ends, rank, cfg.prompt.max_hist_len, mask=cfg.prompt.mask
    )
    for batch in scored:
        user_vectors.append(batch.user_vectors)
        sl = slice(batch.offset, batch.offset + len(batch.users))
        for name in user_tasks:
            emit(name, split, builders[name].from_prefixes(batch, caps[name][sl]))
    d = vectors["items"].shape[1]
    vectors[f"users_{split}"] = torch.cat(user_vectors) if user_vectors else torch.empty(0, d)


def _earlier(data: SequentialData, row: dict[str, Any]) -> bool | None:
    """Whether the example's labelled item is one the user consumed before the prefix window (possible
    under prompt.mask=prefix); None for examples without one item label."""
    item = row["labels"].get("item")
    if item is None or "prefix_end" not in row:
        return None
    before = data.sequence(int(row["user"]))[: int(row["prefix_end"]) - len(row["history"])]
    return bool(item in set(before.tolist()))


def _check_titles(titles: list[str], prompt: Any) -> None:
    for placeholder in (prompt.user_placeholder, prompt.item_placeholder):
        bad = [t for t in titles[1:] if placeholder in t]
        if bad:
            raise ValueError(
                f"{len(bad)} item title(s) contain the placeholder {placeholder!r} (first: {bad[0]!r}); "
                "set prompt.user_placeholder / prompt.item_placeholder to other strings"
            )
    mark = split_mark(prompt.title_separator)  # what the evaluation splits generated lists on
    clash = sum(mark in t for t in titles[1:])
    if clash:
        log.warning(
            "%d titles contain %r, which splits lists of titles: those titles will not be matched in lists; "
            "set prompt.title_separator to a string no title contains (e.g. ' | ')",
            clash,
            mark,
        )


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties count one half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    at_or_below = np.searchsorted(neg_sorted, pos, side="right")
    return float((below + 0.5 * (at_or_below - below)).sum() / (len(pos) * len(neg)))


def label_statistics(
    collected: dict[tuple[str, str], list[dict]], popularity: np.ndarray
) -> dict[str, float]:
    """How concentrated the recommender's top-1 choices are; how much popularity alone explains task 3."""
    out: dict[str, float] = {}
    for (name, split), rows in collected.items():
        labels = [r["labels"] for r in rows]
        if not labels:
            continue
        earlier = [r["earlier"] for r in rows if r.get("earlier") is not None]
        if earlier:  # labels the user had consumed before the prefix (0 under prompt.mask=history)
            key = "top1" if "answer" not in labels[0] else "item"
            out[f"labels/{name}/{split}/{key}_in_earlier_history"] = float(np.mean(earlier))
        if "answer" not in labels[0]:
            items = Counter(lab["item"] for lab in labels)
            total = sum(items.values())
            shares = np.array(sorted(items.values(), reverse=True)) / total
            out[f"labels/{name}/{split}/distinct_top1"] = len(items)
            out[f"labels/{name}/{split}/top1_share_most_frequent"] = float(shares[0])
            out[f"labels/{name}/{split}/top1_share_top5"] = float(shares[:5].sum())
            out[f"labels/{name}/{split}/top1_entropy_bits"] = float(-(shares * np.log2(shares)).sum())
        else:
            pos = np.array([lab["popularity"] for lab in labels if lab["answer"] == "yes"])
            neg = np.array([lab["popularity"] for lab in labels if lab["answer"] == "no"])
            out[f"labels/{name}/{split}/popularity_auc"] = _auc(pos, neg)
            if "attributions" in labels[0]:
                out.update(_explanation_statistics(f"labels/{name}/{split}", rows))
            if "hard_fallback" in labels[0]:
                out[f"labels/{name}/{split}/hard_fallback_rate"] = float(
                    np.mean([lab["hard_fallback"] for lab in labels if lab["answer"] == "no"])
                )
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def _explanation_statistics(prefix: str, rows: list[dict]) -> dict[str, float]:
    """How the explanation targets cite: items per target, targets naming a genre, targets whose answer no
    history item supports (cited by absolute attribution instead), and the mean |attribution| of the cited
    items over that of all history items (how much more the cited items move the score than average)."""
    labels = [r["labels"] for r in rows]
    cited_abs, all_abs, against = [], [], 0
    for row, lab in zip(rows, labels, strict=True):
        values = np.asarray(lab["attributions"], dtype=np.float64)
        sign = 1.0 if lab["answer"] == "yes" else -1.0
        against += int(not (sign * values > 0).any())
        all_abs.append(np.abs(values).mean() if len(values) else 0.0)
        cited = set(lab["cited"])
        history_abs = [abs(v) for v, i in zip(values, row["history"], strict=True) if i in cited]
        if history_abs:
            cited_abs.append(np.mean(history_abs))
    out = {
        f"{prefix}/cited_per_target": float(np.mean([len(lab["cited"]) for lab in labels])),
        f"{prefix}/genre_rate": float(np.mean([lab.get("genre") is not None for lab in labels])),
        f"{prefix}/unsupported_rate": against / len(labels),
    }
    if cited_abs:
        out[f"{prefix}/cited_abs_over_mean_abs"] = float(np.mean(cited_abs) / max(np.mean(all_abs), 1e-12))
    return out


def _log_summary(counts: Counter, metrics: dict[str, float]) -> None:
    names = sorted({n for n, _ in counts})
    for name in names:
        log.info(
            "task %-14s train %6d  valid %5d  test %5d",
            name,
            counts[name, "train"],
            counts[name, "valid"],
            counts[name, "test"],
        )
    for key in (
        "labels/retrieval/train/distinct_top1",
        "labels/retrieval/train/top1_share_top5",
        "labels/interest/test/popularity_auc",
        "labels/interest_hard/test/popularity_auc",
    ):
        if key in metrics:
            log.info("%s = %.3f", key, metrics[key])


def show(folder: Path, n: int) -> None:
    """Print ``n`` rendered training examples per task (validation examples where a task has none)."""
    for path in example_files(folder, "train").values():
        source = path if path.stat().st_size else path.with_name(path.name.replace(".train.", ".valid."))
        with open(source, encoding="utf-8") as handle:
            rows = [json.loads(line) for _, line in zip(range(n), handle, strict=False)]
        print(f"\n=== {path.name.split('.')[0]} ({source.name}) ===")
        for row in rows:
            print(f"[{row['id']}] template {row['template_id']}, slots {row['slots']}")
            print(f"  PROMPT: {row['prompt']}")
            print(f"  TARGET: {row['target']}")
