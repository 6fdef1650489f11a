"""LightningModule that trains any :class:`Recommender` on all positions and ranks over all items."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from recexplainer.recommender.base import Recommender
from recexplainer.recommender.metrics import FullRankingMetrics, target_rank


class RecommenderModule(L.LightningModule):
    """Full-softmax cross-entropy (``loss="ce"``) or BCE with sampled negatives (``loss="bce"``)."""

    def __init__(
        self,
        model: Recommender,
        loss: str = "ce",
        n_negatives: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ks: tuple[int, ...] = (5, 10, 20),
        plateau_factor: float | None = None,
        plateau_patience: int = 3,
        monitor: str = "valid/ndcg@10",
    ):
        super().__init__()
        if loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {loss!r}")
        self.model = model
        self.loss_name, self.n_negatives = loss, n_negatives
        self.lr, self.weight_decay = lr, weight_decay
        self.plateau_factor, self.plateau_patience, self.monitor = plateau_factor, plateau_patience, monitor
        self.metrics = torch.nn.ModuleDict({"valid": FullRankingMetrics(ks), "test": FullRankingMetrics(ks)})

    def loss(self, users: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        feats = self.model(inputs, users)  # (B, L, D)
        mask = targets != 0  # (B, L)
        items = self.model.item_embeddings()  # (N + 1, D)
        if self.loss_name == "ce":
            h = feats[mask]  # (T, D)
            logits = h @ items.T  # (T, N + 1)
            logits[:, 0] = float("-inf")
            return F.cross_entropy(logits, targets[mask])
        h = feats[mask]  # (T, D)
        pos = (h * items[targets[mask]]).sum(-1)  # (T,)
        neg_ids = torch.randint(1, items.shape[0], (h.shape[0], self.n_negatives), device=h.device)
        neg = torch.einsum("td,tkd->tk", h, items[neg_ids])  # (T, K)
        return F.binary_cross_entropy_with_logits(
            torch.cat([pos.unsqueeze(1), neg], 1),
            torch.cat([torch.ones_like(pos).unsqueeze(1), torch.zeros_like(neg)], 1),
        )

    def training_step(self, batch, batch_idx):
        users, inputs, targets = batch
        loss = self.loss(users, inputs, targets)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=users.shape[0])
        return loss

    def _eval_step(self, batch, split: str) -> None:
        users, seq, history, target = batch
        history = history.masked_fill(history == target.unsqueeze(1), 0)  # never exclude the target itself
        rank = target_rank(self.model.score(seq, users, exclude=history), target)
        self.metrics[split].update(rank)

    def _eval_epoch_end(self, split: str) -> None:
        values = self.metrics[split].compute()
        self.log_dict(
            {f"{split}/{k}": v for k, v in values.items()}, prog_bar=(split == "valid"), sync_dist=False
        )
        self.metrics[split].reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "valid")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("valid")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.plateau_factor:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=self.plateau_factor, patience=self.plateau_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor}}
