"""The ``recommender`` stage: train the target model, rank over all items, export it as safetensors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from recexplainer.artifacts import atomic_path, write_json
from recexplainer.data.dataset import SequentialData
from recexplainer.recommender import build_model, model_kwargs
from recexplainer.recommender.datamodule import SequenceDataModule
from recexplainer.recommender.module import RecommenderModule
from recexplainer.runtime import keep_freed_memory, stage_precision
from recexplainer.training import EpochTimer, build_trainer, peak_rss_mb

log = logging.getLogger(__name__)


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    """What determines the trained model: its config, the seed and the numeric precision (not the hardware)."""
    return {
        "recommender": OmegaConf.to_container(cfg.recommender, resolve=True),
        "seed": cfg.seed,
        "precision": stage_precision(cfg, "recommender"),
    }


def run(cfg: DictConfig, out_dir: Path, upstream: dict[str, Path]) -> dict[str, float]:
    rc = cfg.recommender
    data = SequentialData.load(upstream["data"])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    kwargs = model_kwargs(rc, data.n_items, data.n_users)
    model = build_model(rc.name, kwargs)
    module = RecommenderModule(
        model,
        rc.loss,
        rc.n_negatives,
        rc.train.lr,
        rc.train.weight_decay,
        plateau_factor=rc.train.plateau_factor,
        plateau_patience=rc.train.plateau_patience,
        monitor=rc.train.monitor,
    )
    max_len = getattr(rc, "max_len", 50)
    datamodule = SequenceDataModule(
        data,
        max_len,
        getattr(rc, "window_stride", None),
        model.predicts_first_item,
        rc.train.batch_size,
        rc.train.eval_batch_size,
        rc.train.num_workers,
        cfg.seed,
    )
    ckpt_dir = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=rc.train.monitor,
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    timer = EpochTimer()
    callbacks = [checkpoint, EarlyStopping(rc.train.monitor, mode="max", patience=rc.train.patience), timer]
    trainer = build_trainer(
        cfg,
        out_dir,
        "recommender",
        rc.train.max_epochs,
        callbacks,
        rc.train.grad_clip,
        shard=False,
    )
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        log.info("resuming recommender training from %s", last)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "training %s (%d parameters) on %d users / %d items", rc.name, n_params, data.n_users, data.n_items
    )
    with keep_freed_memory():
        trainer.fit(
            module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None, weights_only=True
        )

    best_path = checkpoint.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    best_epoch = int(state["epoch"])
    valid = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]

    if trainer.global_rank != 0:  # the other processes of a DDP run: rank 0 writes the artifacts
        return {}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(out_dir / "model.json", {"name": rc.name, "kwargs": kwargs})
    write_json(
        out_dir / "protocol.json",
        {
            "ranking": "full: every catalog item is a candidate",
            "exclusion": "the user's history items (before the target) are excluded from the ranking",
            "split": "leave-one-out, time-ordered; valid = second-to-last item, test = last item",
            "model_selection": f"best epoch by {rc.train.monitor}",
        },
    )
    metrics: dict[str, float] = {k: float(v) for k, v in {**valid, **test}.items()}
    metrics.update(timer.summary(best_epoch))
    metrics.update(
        {
            "train/best_epoch": best_epoch,
            "train/n_parameters": n_params,
            "train/peak_rss_mb": peak_rss_mb(),
            "protocol/full_ranking": 1,
            "protocol/exclude_history": 1,
            "protocol/leave_one_out": 1,
            "protocol/n_users": data.n_users,
            "protocol/n_items": data.n_items,
            "protocol/n_interactions": int(len(data.items)),
        }
    )
    log.info(
        "%s test: HR@10 %.4f NDCG@10 %.4f (valid NDCG@10 %.4f, best epoch %d)",
        rc.name,
        metrics["test/hr@10"],
        metrics["test/ndcg@10"],
        metrics["valid/ndcg@10"],
        best_epoch,
    )
    return metrics
