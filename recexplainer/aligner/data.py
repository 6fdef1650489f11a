"""Alignment examples -> token ids, labels on the response only, and the vectors for each placeholder.

Prompts go through the tokenizer's chat template (or an explicit template for models without one). Every
example is tokenized once; batches are grouped by length so CPU time is not spent on padding.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from recexplainer.alignment_data.io import read_examples, read_vectors
from recexplainer.text import ChatFormatter

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    user_rows: list[int]  # one row of the split's user-vector table per <user> token, in order
    items: list[int]  # one item index per <item> token, in order
    example_id: str
    # item-head target (retrieval examples when the aligner has an item head): the row of the prefix's user
    # vector in the split's table and the items the recommender may not return for it (the prefix)
    head_user_row: int | None = None
    head_exclude: tuple[int, ...] = ()
    head_item: bool = True  # the target trains the item head (its task is in aligner.item_head_tasks)
    head_title: bool = True  # the answer is a title: title distillation follows it (task-1 examples)


def target_ids(tokenizer: Any, text: str) -> list[int]:
    """An answer's token ids as training targets hold them: the text and the end-of-sequence token, no special
    tokens in front."""
    return list(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"])


def encode(
    row: dict[str, Any],
    formatter: ChatFormatter,
    tokenizer: Any,
    user_token_id: int,
    item_token_id: int,
    with_target: bool = True,
) -> Encoded:
    """Token ids of the formatted prompt (+ target and eos); labels cover the target only."""
    prompt_ids = tokenizer(formatter(row["prompt"]), add_special_tokens=False)["input_ids"]
    answer = target_ids(tokenizer, row["target"]) if with_target else []
    ids = list(prompt_ids) + answer
    slots = row["slots"]
    n_user, n_item = ids.count(user_token_id), ids.count(item_token_id)
    if n_user != slots.count("user") or n_item != len(slots) - slots.count("user"):
        raise ValueError(
            f"example {row['id']}: tokenized prompt has {n_user} <user> / {n_item} <item> tokens but the example "
            f"has slots {slots}; the placeholders must be single special tokens of the tokenizer"
        )
    return Encoded(
        input_ids=ids,
        labels=[IGNORE] * len(prompt_ids) + answer,
        user_rows=[row["user_row"]] * slots.count("user") if "user" in slots else [],
        items=[s for s in slots if s != "user"],
        example_id=row["id"],
    )


class AlignmentDataset(Dataset):
    """Tokenized examples of one split, with the vector tables their placeholders refer to."""

    def __init__(
        self,
        folder: Path,
        split: str,
        tokenizer: Any,
        formatter: ChatFormatter,
        user_token_id: int,
        item_token_id: int,
        max_length: int,
        tasks: Sequence[str] | None = None,
        limit: int | None = None,
        seed: int = 0,
        head_kinds: Sequence[str] = (),
        uncapped: Sequence[str] = (),
        title_kinds: Sequence[str] | None = None,
        item_kinds: Sequence[str] | None = None,
    ):
        """``limit``: at most that many examples, a seeded sample; the examples of the tasks in ``uncapped`` go
        first (all of them, unless they alone exceed the limit) and the rest of the sample is drawn from the
        other tasks. ``head_kinds``: the tasks (names or kinds) whose examples carry the recommender's distribution
        for their prefix (its user-vector row and the items to exclude): those that train the item head
        (``item_kinds``; None: all of them) and those whose answer is a catalog title, which title distillation
        follows (``title_kinds``; None: all of them)."""
        rows = read_examples(folder, split, tasks)
        if limit is not None and len(rows) > limit:
            rng = random.Random(seed)
            first = [r for r in rows if r.get("task") in uncapped]
            others = [r for r in rows if r.get("task") not in uncapped]
            if len(first) >= limit and others:
                log.warning(
                    "%s: the %d examples of the uncapped tasks %s fill the cap of %d: the sample holds no example "
                    "of the other tasks (raise aligner.max_train_examples or set aligner.uncapped_tasks=[])",
                    split,
                    len(first),
                    sorted(set(uncapped)),
                    limit,
                )
            if len(first) > limit:
                first = rng.sample(first, limit)
            rows = first + rng.sample(others, min(len(others), limit - len(first)))
        vectors = read_vectors(folder, split)
        self.items, self.users = vectors["items"], vectors["users"]  # (N + 1, d_rec), (rows, d_rec)
        self.examples: list[Encoded] = []
        self.dropped = 0
        for row in rows:
            enc = encode(row, formatter, tokenizer, user_token_id, item_token_id)
            if len(enc.input_ids) > max_length:  # never truncate: a cut placeholder would misalign vectors
                self.dropped += 1
                continue
            if _named(row, head_kinds) and "user_row" in row:
                enc.head_user_row = int(row["user_row"])
                enc.head_exclude = tuple(int(i) for i in row.get("history", []))
                enc.head_item = item_kinds is None or _named(row, item_kinds)
                enc.head_title = title_kinds is None or _named(row, title_kinds)
            self.examples.append(enc)
        if self.dropped:
            log.warning(
                "%s: dropped %d of %d examples longer than max_length=%d tokens",
                split,
                self.dropped,
                len(rows),
                max_length,
            )
        self.n_tokens = sum(len(e.input_ids) for e in self.examples)

    @classmethod
    def for_model(
        cls,
        folder: Path,
        split: str,
        model: Any,
        tokenizer: Any,
        formatter: ChatFormatter,
        max_length: int = 512,
        **kwargs: Any,
    ) -> AlignmentDataset:
        """The split encoded for ``model``'s placeholder tokens (kwargs: tasks, limit, seed)."""
        return cls(
            folder,
            split,
            tokenizer,
            formatter,
            model.user_token_id,
            model.item_token_id,
            max_length,
            **kwargs,
        )

    def batch(self, pad_id: int) -> dict[str, torch.Tensor]:
        """All examples as one padded batch (small splits: checks, tests, benchmarks)."""
        return collate([self[i] for i in range(len(self))], pad_id=pad_id)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.examples[index]
        out = {
            "input_ids": e.input_ids,
            "labels": e.labels,
            "users": self.users[e.user_rows],
            "items": self.items[e.items],
        }
        if e.head_user_row is not None:
            out["head_user"] = self.users[e.head_user_row]
            out["head_exclude"] = list(e.head_exclude)
            out["head_item"] = e.head_item
            out["head_title"] = e.head_title
        return out

    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    def groups(self) -> list[str]:
        """One key per example: the two answers of an interest prefix (ids ``...-pos`` / ``...-neg``) share
        theirs, every other example has its own (see ``LengthGroupedSampler(groups=...)``)."""
        return [pair_key(e.example_id) for e in self.examples]


def _named(row: dict[str, Any], names: Sequence[str]) -> bool:
    """Whether an example's task name or kind is among ``names``."""
    return row.get("task") in names or row.get("kind") in names


def pair_key(example_id: str) -> str:
    """``interest/train/u3-e9-pos`` and ``...-neg`` -> ``interest/train/u3-e9``; other ids unchanged."""
    for suffix in ("-pos", "-neg"):
        if example_id.endswith(suffix):
            return example_id[: -len(suffix)]
    return example_id


def collate(batch: list[dict[str, Any]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest example; vectors are concatenated in row-major placeholder order."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(b["input_ids"])
        labels[i, sl] = torch.tensor(b["labels"])
        mask[i, sl] = 1
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "user_vectors": torch.cat([b["users"] for b in batch]),
        "item_vectors": torch.cat([b["items"] for b in batch]),
    }
    heads = [i for i, b in enumerate(batch) if "head_user" in b]
    if heads:  # item-head targets: the rows, their recommender user vectors, the excluded items (0-padded)
        out["head_rows"] = torch.tensor(heads, dtype=torch.long)
        out["head_users"] = torch.stack([torch.as_tensor(batch[i]["head_user"]) for i in heads])
        out["head_exclude"] = pad_items([batch[i]["head_exclude"] for i in heads])
        # which of those rows train the item head, and which answer with a title (title distillation)
        out["head_item"] = torch.tensor([bool(batch[i].get("head_item", True)) for i in heads])
        out["head_title"] = torch.tensor([bool(batch[i].get("head_title", True)) for i in heads])
    return out


def pad_items(lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """Item-id lists as one (len(lists), longest) long tensor, 0 (the padding item) after each list's end."""
    out = torch.zeros((len(lists), max(1, max((len(x) for x in lists), default=0))), dtype=torch.long)
    for k, items in enumerate(lists):
        out[k, : len(items)] = torch.tensor([int(i) for i in items], dtype=torch.long)
    return out


class LengthGroupedSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into mega-batches, sort each by length, cut into batches,
    shuffle the batches. Deterministic per (seed, epoch). Under DDP each of ``num_replicas`` processes takes
    every ``num_replicas``-th batch (the tail that cannot be shared evenly is dropped).

    ``groups`` (one key per example, e.g. ``AlignmentDataset.groups()``): examples with the same key move as
    one unit through the shuffle and the length sort, so they land in the same batch (a unit only straddles
    the cut between two batches); the batch count is unchanged. ``None``: every example on its own (the same
    batches as before the option existed).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        mega: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        groups: Sequence[Any] | None = None,
    ):
        self.lengths, self.batch_size, self.seed, self.mega = list(lengths), batch_size, seed, mega
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.skip = 0  # batches of the current epoch already trained on before a resume
        if groups is None:
            self.units = [[i] for i in range(len(self.lengths))]
        else:
            if len(groups) != len(self.lengths):
                raise ValueError(f"{len(groups)} group keys for {len(self.lengths)} examples")
            units: dict[Any, list[int]] = {}
            for i, g in enumerate(groups):
                units.setdefault(g, []).append(i)
            self.units = list(units.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        units = list(self.units)
        rng.shuffle(units)
        size = self.batch_size * self.mega
        order: list[int] = []
        chunk: list[list[int]] = []
        filled = 0
        for k, unit in enumerate(units):  # mega-batches of whole units, each sorted by its longest example
            chunk.append(unit)
            filled += len(unit)
            if filled >= size or k == len(units) - 1:
                chunk.sort(key=lambda u: -max(self.lengths[i] for i in u))
                order.extend(i for u in chunk for i in u)
                chunk, filled = [], 0
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.num_replicas
        mine = batches[self.rank : usable : self.num_replicas]
        skip, self.skip = self.skip, 0
        return iter(mine[skip:])

    def __len__(self) -> int:
        n = -(-len(self.lengths) // self.batch_size)
        return n // self.num_replicas
