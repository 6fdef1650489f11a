"""Training windows over user sequences and leave-one-out evaluation batches."""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from recexplainer.data.dataset import SequentialData
from recexplainer.recommender.base import pad_left


def training_windows(
    data: SequentialData, max_len: int, stride: int, predicts_first_item: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each user's training part into left-padded windows; every target is counted exactly once.

    A window ending at ``e`` reads inputs ``[e - max_len, e)`` and trains on the targets in
    ``[e - stride, e)``; windows end at ``m, m - stride, ...`` so the latest window is full.
    Returns users (W,), inputs (W, max_len), targets (W, max_len) with 0 = ignored position.
    """
    if not 1 <= stride <= max_len:
        raise ValueError(f"window stride must be in [1, max_len={max_len}], got {stride}")
    users, inputs, targets = [], [], []
    for u in range(data.n_users):
        seq = data.history(u, "train")
        inp = np.concatenate([[0], seq[:-1]]) if predicts_first_item else seq[:-1]
        tgt = seq if predicts_first_item else seq[1:]
        end = len(tgt)
        while end > 0:
            start = max(0, end - max_len)
            t = tgt[start:end].copy()
            t[: max(0, (end - stride) - start)] = 0  # targets owned by an earlier window
            users.append(u)
            inputs.append(inp[start:end])
            targets.append(t)
            end -= stride
    return torch.tensor(users, dtype=torch.long), pad_left(inputs, max_len), pad_left(targets, max_len)


class EvalDataset(Dataset):
    """One example per user: (user, history, target) for the validation or test position."""

    def __init__(self, data: SequentialData, split: str):
        self.data, self.split = data, split

    def __len__(self) -> int:
        return self.data.n_users

    def __getitem__(self, user: int):
        return user, self.data.history(user, self.split), self.data.target(user, self.split)


def collate_eval(batch, max_len: int | None):
    users, histories, targets = zip(*batch, strict=True)
    full = pad_left(histories)  # (B, H) every history item, for exclusion from the ranking
    seq = full[:, -max_len:] if max_len else full[:, -1:]
    return torch.tensor(users), seq, full, torch.tensor(targets)


class SequenceDataModule(L.LightningDataModule):
    def __init__(
        self,
        data: SequentialData,
        max_len: int,
        window_stride: int | None,
        predicts_first_item: bool,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.data = data
        self.max_len = max_len
        self.stride = window_stride or max_len
        self.predicts_first_item = predicts_first_item
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.train_set: TensorDataset | None = None
        # one generator for the whole fit: epoch e shuffles with its e-th draws; its state is checkpointed
        # (state_dict), so that a resumed run shuffles the next epochs as the uninterrupted one
        self.shuffle_generator = torch.Generator().manual_seed(seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = TensorDataset(
                *training_windows(self.data, self.max_len, self.stride, self.predicts_first_item)
            )

    def state_dict(self) -> dict:
        return {"shuffle_generator": self.shuffle_generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "shuffle_generator" in state_dict:
            self.shuffle_generator.set_state(state_dict["shuffle_generator"])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=self.shuffle_generator,
            num_workers=self.num_workers,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = EvalDataset(self.data, split)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=ShardSampler.for_current_process(dataset),
            collate_fn=partial(collate_eval, max_len=self.max_len),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class ShardSampler(DistributedSampler):
    """Every ``num_replicas``-th example from ``rank``, in order, without the padding (repeated examples)
    of ``DistributedSampler``: each user is ranked exactly once across processes, so the reduced metric
    sums are exact. A ``DistributedSampler`` subclass, so that Lightning keeps it instead of its own."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))

    @classmethod
    def for_current_process(cls, dataset: Dataset) -> ShardSampler | None:
        """A shard for this process when a process group is up (DDP), else None (the whole set in order)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        return cls(dataset, torch.distributed.get_world_size(), torch.distributed.get_rank())
