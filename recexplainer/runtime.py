"""Where and at what numeric precision each stage runs, and the process facts around it: the rank of this
process, the CPU's bf16 support, the package versions a run records, glibc's memory settings."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)

INFERENCE_STAGES = ("evaluate", "explain")  # stages that run the LLM at inference (evaluation.precision)


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
    faster than fp32 (benchmarks/README.md); where it does not, PyTorch emulates bf16 and it is slower."""
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


def stage_precision(cfg: DictConfig, stage: str) -> str:
    """The numeric precision (Lightning's name) a stage runs with, the one rule for every stage:

    - ``recommender``: ``trainer.recommender_precision`` where set (so ``trainer=cpu_bf16`` keeps the fp32
      recommender, and with it the labels and every stage built on them), else ``trainer.precision``;
    - ``evaluate`` and ``explain`` (the LLM at inference, the local judge too): ``evaluation.precision``
      where set, else ``trainer.precision``;
    - every other stage: ``trainer.precision``."""
    trainer = cfg.trainer
    if stage == "recommender" and trainer.get("recommender_precision"):
        return str(trainer.recommender_precision)
    evaluation = cfg.get("evaluation")
    if stage in INFERENCE_STAGES and evaluation is not None and evaluation.get("precision"):
        return str(evaluation.precision)
    return str(trainer.get("precision", "32-true"))


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


def inference_device(cfg: DictConfig, stage: str) -> tuple[Any, Any]:
    """(device, autocast dtype or None) for a model run outside a Trainer (explanations, the local judge):
    the GPU when ``trainer.accelerator`` asks for one (gpu / cuda / auto) and CUDA is there, the CPU
    otherwise; bf16 autocast where the stage's precision (:func:`stage_precision`) is a ``bf16`` one, as
    the Trainer's ``bf16-mixed`` does. A GPU asked for but missing is an error (as a Trainer would raise),
    not a silent 50x slower run."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    dtype = torch.bfloat16 if stage_precision(cfg, stage).startswith("bf16") else None
    if accelerator not in ("gpu", "cuda", "auto"):
        return torch.device("cpu"), dtype
    if not torch.cuda.is_available():
        if accelerator == "auto":
            return torch.device("cpu"), dtype
        raise RuntimeError(
            f"trainer.accelerator={accelerator} but torch sees no CUDA device "
            f"(torch {torch.__version__}); use trainer=cpu or install a CUDA build of torch"
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()), dtype


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
