"""Lightning plumbing shared by the stages that run a Trainer: the trainer, its loggers, epoch timing."""

from __future__ import annotations

import logging
import random
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from recexplainer.runtime import advise_cpu_precision, stage_precision


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


log = logging.getLogger(__name__)


def quiet_lightning_logging() -> None:
    """Lightning prints through its own console handler: remove it so each line goes out once, through the
    application's logging (Hydra's console and file handlers), and drop its advertising and noise."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # the aligner's sampler resumes mid-epoch itself (it skips the batches a checkpoint already covered)
    warnings.filterwarnings(
        "ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*"
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class EpochTimer(Callback):
    """Records the wall time of each training epoch and the elapsed training time at each epoch's end."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.elapsed_at_epoch: dict[int, float] = {}
        self._start = 0.0
        self._elapsed = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        self._elapsed += seconds
        self.elapsed_at_epoch[trainer.current_epoch] = self._elapsed

    def summary(self, best_epoch: int | None) -> dict[str, float]:
        if not self.epoch_seconds:
            return {}
        out = {
            "train/epochs_run": len(self.epoch_seconds),
            "train/sec_per_epoch_median": statistics.median(self.epoch_seconds),
            "train/sec_total": sum(self.epoch_seconds),
        }
        if best_epoch is not None and best_epoch in self.elapsed_at_epoch:
            out["train/sec_to_best_epoch"] = self.elapsed_at_epoch[best_epoch]
        return out


class RandomStateCheckpoint(Callback):
    """Saves the torch / numpy / Python random states with every checkpoint and puts them back just before
    the first training batch after a resume, where the uninterrupted run had them: dropout and any other
    draw then continue exactly (the batch order is the samplers' own, restored with the checkpoint). Under
    DDP the checkpoint holds rank 0's states, so a resumed multi-process run is not bit-identical."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        numpy_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, keys.numpy(), *rest))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def finish_wandb_run() -> None:
    """End the active W&B run (if any), so that the next stage of a pipeline gets its own run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def sweep_group() -> str | None:
    """The multirun's sweep folder name (its start time), or None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def build_logger(cfg: DictConfig, out_dir: Path, name: str) -> list:
    """The stage's loggers: always a CSV logger inside the stage folder (logs/version_N, one per attempt;
    the report's training curves come from it), plus W&B with ``logger=wandb`` (offline unless
    logger.mode=online), grouped by ``logger.group`` or, in a multirun, by the sweep."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list = [CSVLogger(save_dir=str(out_dir), name="logs")]
    if cfg.logger.name == "csv":
        return loggers
    from lightning.pytorch.loggers import WandbLogger

    wandb_logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or sweep_group(),
        tags=list(cfg.logger.tags) + [name],
        name=f"{name}-{out_dir.name}",
        save_dir=str(out_dir),
        mode=cfg.logger.mode,
    )
    wandb_logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers + [wandb_logger]


def build_trainer(
    cfg: DictConfig,
    out_dir: Path,
    name: str,
    max_epochs: int,
    callbacks: list,
    grad_clip: float | None,
    shard: bool = True,
    **kwargs,
) -> L.Trainer:
    """A Trainer for stage ``name`` on the configured hardware, at the stage's precision
    (:func:`recexplainer.runtime.stage_precision`); ``kwargs`` go to ``L.Trainer``.

    ``shard=False`` (the recommender, the evaluation): a sharding strategy (``fsdp``, ``deepspeed*``) is
    replaced by ``ddp``: those stages' models fit one device, and the evaluation calls the model outside
    the strategy's wrapper, which needs whole (unsharded) weights on every process."""
    quiet_lightning_logging()
    t = cfg.trainer
    precision = stage_precision(cfg, name)
    # advice on the stage's own precision where it asks for bf16 (evaluation.precision), else on the configured
    # one (an fp32 recommender under trainer=cpu_bf16 is meant, no reason to advise)
    advise_cpu_precision(t, precision if precision.startswith("bf16") else str(t.precision))
    strategy = t.strategy
    if not shard and isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed")):
        log.info("%s: trainer.strategy=%s is for the aligner; this stage runs with ddp", name, strategy)
        strategy = "ddp"
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy,
        precision=precision,
        num_nodes=t.num_nodes,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        log_every_n_steps=t.log_every_n_steps,
        max_epochs=max_epochs,
        callbacks=[*callbacks, RandomStateCheckpoint()],
        logger=build_logger(cfg, out_dir, name),
        gradient_clip_val=grad_clip,
        default_root_dir=str(out_dir),
        enable_model_summary=False,
        **kwargs,
    )
