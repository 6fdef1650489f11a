"""A training budget stated as time, turned into optimizer steps without reading a clock.

``aligner.budget_minutes`` x 60 x ``aligner.budget_tokens_per_s`` is a token budget; the aligner trains the
optimizer steps (over as many epochs as that takes) whose micro-batches, in the order the training sampler
yields them, hold that many tokens. The same budget trains the same steps on any machine; only the wall time
differs, by the machine's throughput against the one the budget assumes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence


def budget_tokens(minutes: float, tokens_per_s: float) -> int:
    return int(round(minutes * 60 * tokens_per_s))


def steps_for_budget(
    epoch_batches: Callable[[int, int], Iterable[list[int]]],
    lengths: Sequence[int],
    tokens: int,
    accumulate: int,
    world_size: int = 1,
) -> tuple[int, int]:
    """(optimizer steps, epochs) whose micro-batches first hold at least ``tokens`` tokens.

    ``epoch_batches(epoch, rank)`` yields the micro-batches (example indices) one process trains in that
    epoch, as the training sampler does; an optimizer step takes ``accumulate`` micro-batches from each of
    the ``world_size`` processes (the last step of an epoch may take fewer, as Lightning's does).
    """
    if tokens <= 0:
        raise ValueError(f"a training budget must hold at least one token, got {tokens}")
    steps, seen = 0, 0
    for epoch in itertools.count():  # every epoch adds tokens: the budget is reached
        per_rank = [[sum(lengths[i] for i in b) for b in epoch_batches(epoch, r)] for r in range(world_size)]
        n = max((len(sizes) for sizes in per_rank), default=0)
        if n == 0:
            raise ValueError("the training sampler yields no batch: nothing to spend a budget on")
        for k in range(math.ceil(n / accumulate)):
            seen += sum(sum(sizes[k * accumulate : (k + 1) * accumulate]) for sizes in per_rank)
            steps += 1
            if seen >= tokens:
                return steps, epoch + 1
    raise AssertionError("unreachable")  # pragma: no cover
