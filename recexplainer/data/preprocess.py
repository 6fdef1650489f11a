"""Filtering and re-indexing: raw interactions -> per-user, time-ordered item sequences.

Order of steps (each optional, counts recorded): rating filter, missing-title policy, duplicate handling,
top-N items, iterative k-core, user sampling, minimum sequence length, stable re-indexing, unique titles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recexplainer.data.dataset import SequentialData
from recexplainer.data.loaders import DataFormatError, RawData
from recexplainer.text import unique_titles


def _natural_order(ids: np.ndarray) -> np.ndarray:
    """Unique ids sorted numerically when all are integers, else lexicographically (stable id maps)."""
    uniq = np.unique(ids.astype(str))
    if all(s.lstrip("-").isdigit() for s in uniq):
        return uniq[np.argsort([int(s) for s in uniq], kind="stable")]
    return uniq


def _kcore(users: np.ndarray, items: np.ndarray, user_core: int, item_core: int) -> np.ndarray:
    """Boolean mask of interactions surviving iterative k-core filtering. users/items: integer codes."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        u_cnt = np.bincount(users[keep], minlength=users.max() + 1)
        i_cnt = np.bincount(items[keep], minlength=items.max() + 1)
        new_keep = keep & (u_cnt[users] >= user_core) & (i_cnt[items] >= item_core)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def preprocess(raw: RawData, cfg: Any, seed: int) -> tuple[SequentialData, dict[str, float]]:
    """Apply ``cfg.preprocess`` and the missing-title policy; return sequences and step statistics."""
    pp = cfg.preprocess
    stats: dict[str, float] = {"raw/interactions": len(raw.users)}
    users, items, times = raw.users, raw.items, raw.timestamps
    keep = np.ones(len(users), dtype=bool)

    if pp.min_rating is not None:
        if raw.ratings is None:
            raise DataFormatError(
                f"{raw.source}: dataset.preprocess.min_rating is set but the data has no rating column"
            )
        keep &= raw.ratings >= pp.min_rating
        stats["dropped/min_rating"] = int((~keep).sum())

    titled = np.array([bool(raw.item_info.get(i, {}).get("title")) for i in items], dtype=bool)
    if not titled.all():
        missing = sorted(set(items[~titled]))
        if cfg.missing_title == "error":
            raise DataFormatError(
                f"{raw.source}: {len(missing)} item(s) used in interactions have no title "
                f"(first: {', '.join(map(str, missing[:5]))}). Add them to the item file, or set "
                "dataset.missing_title=drop (drop their interactions) or =id (use the id as title)"
            )
        if cfg.missing_title == "drop":
            stats["dropped/missing_title"] = int((keep & ~titled).sum())
            keep &= titled
    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise DataFormatError(f"{raw.source}: no interactions left after filtering ({stats})")

    # Time order per user; ties keep file order (stable sort).
    order = np.lexsort((np.arange(len(users)), times, users.astype(str)))
    users, items, times = users[order], items[order], times[order]

    if pp.dedup != "none":
        _, uc = np.unique(users.astype(str), return_inverse=True)
        _, ic = np.unique(items.astype(str), return_inverse=True)
        pair = uc.astype(np.int64) * (ic.max() + 1) + ic
        if pp.dedup == "first":
            _, first = np.unique(pair, return_index=True)
        else:
            _, rev = np.unique(pair[::-1], return_index=True)
            first = len(pair) - 1 - rev
        mask = np.zeros(len(pair), dtype=bool)
        mask[first] = True
        stats["dropped/duplicates"] = int((~mask).sum())
        users, items, times = users[mask], items[mask], times[mask]

    _, u_code = np.unique(users.astype(str), return_inverse=True)
    i_uniq, i_code = np.unique(items.astype(str), return_inverse=True)
    keep = np.ones(len(users), dtype=bool)
    if pp.top_n_items is not None:
        counts = np.bincount(i_code)
        ranked = np.lexsort((i_uniq, -counts))  # most frequent first, ties by id
        top = np.zeros(len(i_uniq), dtype=bool)
        top[ranked[: pp.top_n_items]] = True
        keep &= top[i_code]
        stats["dropped/top_n_items"] = int((~keep).sum())
    if pp.user_core > 1 or pp.item_core > 1:
        before = int(keep.sum())
        sub = np.flatnonzero(keep)
        keep[sub[~_kcore(u_code[sub], i_code[sub], pp.user_core, pp.item_core)]] = False
        stats["dropped/kcore"] = before - int(keep.sum())
    if pp.sample_users is not None:
        present = np.unique(u_code[keep])
        if pp.sample_users < len(present):
            chosen = np.random.default_rng(seed).choice(present, size=pp.sample_users, replace=False)
            before = int(keep.sum())
            keep &= np.isin(u_code, chosen)
            stats["dropped/sample_users"] = before - int(keep.sum())
    lengths = np.bincount(u_code[keep], minlength=u_code.max() + 1)
    short = keep & (lengths[u_code] < pp.min_seq_len)
    stats["dropped/short_users"] = int(len(np.unique(u_code[short])))
    keep &= ~short
    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise DataFormatError(
            f"{raw.source}: no interactions left after preprocessing ({stats}); relax dataset.preprocess.*"
        )

    user_ids = _natural_order(users)
    item_ids = _natural_order(items)
    u_index = {u: k for k, u in enumerate(user_ids)}
    i_index = {i: k + 1 for k, i in enumerate(item_ids)}  # 0 is padding
    u_arr = np.fromiter((u_index[u] for u in users.astype(str)), dtype=np.int64, count=len(users))
    i_arr = np.fromiter((i_index[i] for i in items.astype(str)), dtype=np.int64, count=len(items))
    order = np.lexsort((np.arange(len(u_arr)), times, u_arr))
    u_arr, i_arr, t_arr = u_arr[order], i_arr[order], times[order]

    item_table: list[dict[str, Any]] = [{"id": None, "title": "<pad>"}]
    for raw_id in item_ids:
        info = dict(raw.item_info.get(raw_id, {}))
        if not info.get("title"):
            info["title"] = f"item {raw_id}"
        item_table.append({"id": str(raw_id), **info})
    renamed = 0
    if pp.unique_titles:
        titles = [row["title"] for row in item_table[1:]]
        renamed = unique_titles(titles)  # " [2]", " [3]", ... so that a title names one item
        for row, title in zip(item_table[1:], titles, strict=True):
            row["title"] = title
    stats["renamed/duplicate_titles"] = renamed
    data = SequentialData.from_arrays(u_arr, i_arr, t_arr, [str(u) for u in user_ids], item_table)
    return data, stats
