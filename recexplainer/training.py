"""Lightning plumbing shared by every training stage: trainer, loggers, timing."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf


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


def finish_wandb_run() -> None:
    """End the active W&B run (if any), so that the next stage of a pipeline gets its own run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def process_rank() -> int:
    """This process's global rank when several processes run one job (Lightning's DDP launcher re-running
    the command with LOCAL_RANK / NODE_RANK, torchrun's RANK, a multi-task SLURM step), from the
    environment, before any Trainer exists; 0 otherwise."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    local, node = int(env.get("LOCAL_RANK", "0")), int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    return local if node == 0 else max(1, local + node)  # only zero / non-zero matters to the pipeline


_PRECISION_ADVICE_GIVEN: set[str] = set()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX tiles). Where it does, bf16 is
    faster than fp32 (measured on a 2-core Xeon with AMX, experiments/probe_cpu_bf16.py: matrix products
    7.5x, a SmolLM2-135M forward pass
    2.6x under autocast, the evaluation's LLM part 2-2.6x, aligner training 1.08x); where it does not,
    PyTorch emulates bf16 and it is slower than fp32 (measured: 5x slower on a 2-core AVX2 EPYC)."""
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a private probe that changed between torch versions: assume no
            continue
    return False


def cpu_description() -> str:
    """The CPU's model name and whether it has native bf16, for benchmark records: figures from machines
    with and without it differ severalfold."""
    name = "unknown CPU"
    try:
        name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{name} ({'native bf16' if cpu_has_bf16() else 'no native bf16'})"


def environment() -> dict[str, str]:
    """Package versions and hardware that shaped a run's numbers (recorded, not keyed)."""
    import importlib.metadata

    import torch

    versions = {}
    for package in ("torch", "transformers", "peft", "lightning", "torchmetrics"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**versions, "cpu": cpu_description(), **({"gpu": gpu} if gpu else {})}


def stage_precision(trainer_cfg: DictConfig, stage: str) -> str:
    """The numeric precision a stage runs with: ``trainer.recommender_precision`` for the recommender where
    set (so that ``trainer=cpu_bf16`` keeps the fp32 recommender, and with it the labels and every stage
    built on them), ``trainer.precision`` otherwise."""
    if stage == "recommender" and trainer_cfg.get("recommender_precision"):
        return str(trainer_cfg.recommender_precision)
    return str(trainer_cfg.get("precision", "32-true"))


def advise_cpu_precision(trainer_cfg: DictConfig, precision: str) -> None:
    """Log once per process where a CPU run's precision does not suit the CPU: bf16 without native bf16
    (slow), or fp32 where bf16 is native (the default ``trainer=cpu`` would pick bf16 there)."""
    if str(trainer_cfg.get("accelerator", "cpu")) != "cpu":
        return
    bf16 = precision.startswith("bf16")
    advice = None
    if bf16 and not cpu_has_bf16():
        advice = (
            f"precision {precision} on a CPU without native bf16 (no AVX512-BF16 / AMX): PyTorch emulates "
            "bf16 here and it is slower than fp32 (measured 5x); use trainer=cpu (it picks fp32 on this CPU) "
            "and evaluation.precision=null"
        )
    elif not bf16 and precision in ("32-true", "32") and cpu_has_bf16():
        advice = (
            "this CPU has native bf16 (AVX512-BF16 / AMX): evaluation.precision=bf16-true (or bf16-mixed) "
            "evaluates the LLM about 2x faster, and trainer=cpu without a trainer.precision override also "
            "trains in bf16 here (a LoRA step 1.1-1.5x faster); measured in benchmarks/README.md"
        )
    if advice and advice not in _PRECISION_ADVICE_GIVEN:
        _PRECISION_ADVICE_GIVEN.add(advice)
        (log.warning if bf16 else log.info)(advice)


def inference_device(trainer_cfg: DictConfig):
    """(device, autocast dtype or None) for the stages that run a model outside a Trainer (explain, the
    local judge): the GPU when ``trainer.accelerator`` asks for one (gpu / cuda / auto) and CUDA is there,
    with bf16 autocast under a ``bf16`` precision; the CPU otherwise (bf16 autocast there too under a ``bf16``
    precision, as the Trainer's ``bf16-mixed`` does on the CPU). A GPU asked for but missing is an
    error (as a Trainer would raise), not a silent 50x slower run."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    precision = str(trainer_cfg.get("precision", "32-true"))
    cpu = torch.device("cpu"), (torch.bfloat16 if precision.startswith("bf16") else None)
    if accelerator not in ("gpu", "cuda", "auto"):
        return cpu
    if not torch.cuda.is_available():
        if accelerator == "auto":
            return cpu
        raise RuntimeError(
            f"trainer.accelerator={accelerator} but torch sees no CUDA device "
            f"(torch {torch.__version__}); use trainer=cpu or install a CUDA build of torch"
        )
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device, (torch.bfloat16 if precision.startswith("bf16") else None)


def autocast(device, dtype):
    """``torch.autocast`` on ``device`` to ``dtype``, or a no-op context when ``dtype`` is None."""
    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@contextlib.contextmanager
def keep_freed_memory():
    """Keep freed memory in the process (glibc: no ``mmap`` for large blocks, no trimming) while the block
    runs, then set glibc's default values back (its dynamic mmap threshold stays off). PyTorch has no caching allocator on the CPU: each training step
    allocates and frees its large tensors (SASRec's 5,000 x 1,683 logits and their gradients: 34 MB each),
    and glibc serves blocks of that size with fresh ``mmap`` pages that fault in again every step. On the
    2-core CPU this cut SASRec's ml-100k epoch by about 15 % (benchmarks/README.md). Elsewhere (no glibc)
    it does nothing."""
    libc = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt  # noqa: B018 (musl and others: AttributeError)
        except (OSError, AttributeError):
            libc = None
    m_trim_threshold, m_mmap_max = -1, -4
    if libc is not None:
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(m_mmap_max, 65536)  # glibc's defaults
            libc.mallopt(m_trim_threshold, 128 * 1024)
            libc.malloc_trim(0)


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
    precision: str | None = None,
    **kwargs,
) -> L.Trainer:
    """A Trainer for the configured hardware; ``kwargs`` go to ``L.Trainer`` (stage-specific settings).

    ``shard=False`` (the recommender, the evaluation): a sharding strategy (``fsdp``, ``deepspeed*``) is
    replaced by ``ddp``: those stages' models fit one device, and the evaluation calls the model outside
    the strategy's wrapper, which needs whole (unsharded) weights on every process. ``precision``: the
    stage's own (:func:`stage_precision`), ``trainer.precision`` when None."""
    quiet_lightning_logging()
    t = cfg.trainer
    # advice on the stage's own precision where it asks for bf16 (evaluation.precision), else on the configured
    # one (an fp32 recommender under trainer=cpu_bf16 is meant, no reason to advise)
    advise_cpu_precision(t, precision if precision and precision.startswith("bf16") else str(t.precision))
    precision = precision or str(t.precision)
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
        callbacks=callbacks,
        logger=build_logger(cfg, out_dir, name),
        gradient_clip_val=grad_clip,
        default_root_dir=str(out_dir),
        enable_model_summary=False,
        **kwargs,
    )
