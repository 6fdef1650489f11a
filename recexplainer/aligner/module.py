"""LightningModule that fine-tunes the LLM (LoRA) and the projectors on the alignment examples."""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from recexplainer.aligner.model import RecExplainerLM


def warmup_decay(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 (a multiplier of the peak learning rate)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class AlignerModule(L.LightningModule):
    """Loss on response tokens only (labels are -100 elsewhere); separate learning rates for the LoRA
    weights and the projectors; optional projector-only warm-up phase."""

    def __init__(
        self,
        model: RecExplainerLM,
        lr: float = 2e-4,
        projector_lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        total_steps: int = 1,
        projector_only_steps: int = 0,
    ):
        super().__init__()
        self.model = model
        self.lr, self.projector_lr, self.weight_decay = lr, projector_lr, weight_decay
        self.warmup_ratio, self.total_steps = warmup_ratio, max(1, total_steps)
        self.projector_only_steps = projector_only_steps
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self.train_sampler = None  # set by the stage: a LengthGroupedSampler that can skip on resume
        self._tokens = 0
        self._t0 = time.perf_counter()
        self._loss_ema: float | None = None
        self.validated_step = -1  # global step of the latest validation (sanity checks excluded)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()
        # batches of the current epoch already trained on, so that a resume continues mid-epoch exactly
        checkpoint["batches_done_in_epoch"] = (
            self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        )
        checkpoint["loss_ema"] = self._loss_ema  # the logged smoothed loss continues where it was

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.train_sampler is not None:
            self.train_sampler.skip = int(checkpoint.get("batches_done_in_epoch", 0))
        self._loss_ema = checkpoint.get("loss_ema")
        # checkpoints written when the item head's scale was a 0-dim parameter: its Adam moments become shape (1,)
        # like the parameter (it is the only trainable scalar; the optimizer's own 0-dim step counts stay)
        for optimizer in checkpoint.get("optimizer_states", []):
            for state in optimizer.get("state", {}).values():
                for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    if isinstance(state.get(name), torch.Tensor) and state[name].dim() == 0:
                        state[name] = state[name].reshape(1)

    def training_step(self, batch, batch_idx):
        lm_frozen = self.global_step < self.projector_only_steps
        for group in self.optimizers().param_groups:
            if group["name"] == "lm":
                group["lr"] = 0.0 if lm_frozen else group["lr"]
        out = self.model(**batch)
        n_tokens = int(batch["attention_mask"].sum())
        self._tokens += n_tokens
        elapsed = time.perf_counter() - self._t0
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        # batches are length-grouped, so consecutive losses come from different tasks: log a smoothed
        # curve too (exponential moving average over ~20 micro-batches) for plots and dashboards
        loss = float(out.loss.detach())
        self._loss_ema = loss if self._loss_ema is None else 0.95 * self._loss_ema + 0.05 * loss
        self.log("train/loss_smooth", self._loss_ema, batch_size=batch["input_ids"].shape[0])
        self.log("train/tokens_per_s", self._tokens / max(elapsed, 1e-9), prog_bar=True)
        self._log_head("train", out, batch)
        return out.loss

    def _log_head(self, split: str, out, batch) -> None:
        """With an item head or title distillation: the next-token loss alone; the head's cross-entropy and its KL
        divergence from the recommender's distribution (the cross-entropy minus the target's entropy: 0 when the
        head matches); the title distillation's cross-entropy."""
        if getattr(out, "lm_loss", None) is None:
            return
        sync = split == "valid"
        self.log(f"{split}/lm_loss", out.lm_loss, sync_dist=sync, batch_size=batch["input_ids"].shape[0])
        if out.item_head_kl is not None and "head_rows" in batch:
            n = _rows(batch, "head_item")
            # not synced: a rank whose batch holds no head row logs nothing here, and a collective
            # that only some ranks enter would hang
            self.log(f"{split}/item_head_loss", out.item_head_loss, batch_size=n)
            self.log(f"{split}/item_head_kl", out.item_head_kl, batch_size=n)
        if getattr(out, "title_distill_loss", None) is not None and "head_rows" in batch:
            n = _rows(batch, "head_title")
            # not synced, as above
            self.log(f"{split}/title_distill_loss", out.title_distill_loss, batch_size=n)

    def on_fit_start(self) -> None:
        """Training mode for the whole model: Hugging Face loads it in eval mode and Lightning (>= 2.2) keeps
        each module's mode, which silently turned off gradient checkpointing and any dropout of the base model
        (both act only in training mode; LoRA's own new modules start in training mode). Validation still
        runs in eval mode (Lightning switches and restores)."""
        self.model.train()

    def on_train_epoch_start(self) -> None:
        self._tokens, self._t0 = 0, time.perf_counter()

    def validation_step(self, batch, batch_idx):
        out = self.model(**batch)
        self.log(
            "valid/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0]
        )
        self._log_head("valid", out, batch)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_step = self.global_step

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by global norm; under FSDP through the wrapper's own ``clip_grad_norm_`` (which sees every
        shard), since Lightning's FSDP precision plugin does not clip by norm."""
        from lightning.pytorch.strategies import FSDPStrategy

        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        projector, lm = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (projector if "projector" in name or "placeholder_embeddings" in name else lm).append(p)
        groups = [{"params": projector, "lr": self.projector_lr, "name": "projector"}]
        if lm:
            groups.append({"params": lm, "lr": self.lr, "name": "lm"})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        warmup = int(self.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_decay(step, self.total_steps, warmup)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _rows(batch: dict, which: str) -> int:
    """How many of the batch's head rows the mask ``which`` keeps (all of them without one)."""
    mask = batch.get(which)
    return int(batch["head_rows"].numel()) if mask is None else int(mask.sum())
