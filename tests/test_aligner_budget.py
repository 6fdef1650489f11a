"""aligner.budget_minutes: a time budget turned into optimizer steps by counting the sampler's tokens."""

import pytest

from recexplainer.aligner.budget import budget_tokens, steps_for_budget
from recexplainer.aligner.data import LengthGroupedSampler


def _batches(lengths, batch_size, world_size=1, seed=0):
    def epoch_batches(epoch, rank):
        sampler = LengthGroupedSampler(
            lengths, batch_size, seed=seed, mega=2, num_replicas=world_size, rank=rank
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    return epoch_batches


def test_budget_tokens_are_minutes_times_throughput():
    assert budget_tokens(10, 200) == 120_000 and budget_tokens(0.5, 3) == 90


def test_a_budget_inside_one_epoch_stops_at_the_first_step_that_reaches_it():
    lengths = [10] * 8  # batches of 2: 20 tokens each, 4 steps of 20 per epoch
    assert steps_for_budget(_batches(lengths, 2), lengths, 20, accumulate=1) == (1, 1)
    assert steps_for_budget(_batches(lengths, 2), lengths, 21, accumulate=1) == (2, 1)
    assert steps_for_budget(_batches(lengths, 2), lengths, 80, accumulate=1) == (4, 1)


def test_a_budget_beyond_one_epoch_runs_more_epochs_of_the_same_sampler():
    lengths = [3, 5, 7, 9, 11, 13, 2]  # 50 tokens an epoch
    steps, epochs = steps_for_budget(_batches(lengths, 2), lengths, 120, accumulate=1)
    assert epochs == 3  # 50 + 50 < 120 <= 150
    per_epoch = [[sum(lengths[i] for i in b) for b in _batches(lengths, 2)(e, 0)] for e in range(3)]
    flat = [t for epoch in per_epoch for t in epoch]
    assert sum(flat[: steps - 1]) < 120 <= sum(flat[:steps])


def test_accumulation_and_processes_share_one_optimizer_step():
    lengths = [4] * 16  # 8 micro-batches of 8 tokens; 2 processes x 2 micro-batches = 32 tokens a step
    assert steps_for_budget(_batches(lengths, 2, world_size=2), lengths, 33, accumulate=2, world_size=2) == (
        2,
        1,
    )
    # an epoch of 3 micro-batches and accumulation 2: the last step of the epoch takes the odd one alone
    short = [5] * 6
    assert steps_for_budget(_batches(short, 2), short, 30, accumulate=2) == (2, 1)
    assert steps_for_budget(_batches(short, 2), short, 31, accumulate=2) == (3, 2)


def test_an_empty_or_non_positive_budget_is_an_error():
    with pytest.raises(ValueError, match="at least one token"):
        steps_for_budget(_batches([1, 2], 1), [1, 2], 0, accumulate=1)
    with pytest.raises(ValueError, match="no batch"):
        steps_for_budget(lambda epoch, rank: [], [], 10, accumulate=1)
