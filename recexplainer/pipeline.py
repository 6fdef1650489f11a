"""Stage registry and runner: resolves upstream stages, reuses complete artifact folders, writes markers last.

Adding a stage: a module with ``key_fields(cfg) -> dict`` (what determines its output besides upstream
artifacts) and ``run(cfg, out_dir, upstream) -> metrics``, registered in :data:`STAGES`.

The cache-key rule: ``key_fields`` returns the config sections that determine the stage's output, whole and
resolved, with effective values where a knob is resolved from others (the precision a stage runs at, the
history a prompt shows), minus only the fields that cannot change the output (how a judge is reached). A
field is never left out because it has its default value: a new knob changes every key of its stage once,
as a bump of :attr:`Stage.version` does for a change of the stage's code; both recompute on purpose.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recexplainer import artifacts
from recexplainer.runtime import process_rank
from recexplainer.training import finish_wandb_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # module with key_fields(cfg) and run(cfg, out_dir, upstream)
    requires: tuple[str, ...] = ()  # a stage module may narrow this per config with requires(cfg)
    version: int = 1  # bump when the stage's code changes its output, to invalidate old caches
    # its run() drives a Lightning Trainer that every process of a multi-process (DDP / FSDP / DeepSpeed)
    # launch must join; the other stages are built by rank 0 alone while the other ranks wait
    distributed: bool = False


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("data", "recexplainer.data.stage"),
        Stage("recommender", "recexplainer.recommender.stage", requires=("data",), distributed=True),
        Stage(
            "alignment_data",
            "recexplainer.alignment_data.stage",
            requires=("data", "recommender"),
            version=2,  # 2: task-2/3 items drawn by item id, not by score position (stable across CPUs)
        ),
        Stage("aligner", "recexplainer.aligner.stage", requires=("alignment_data",), distributed=True),
        Stage(
            "evaluate",
            "recexplainer.evaluate.stage",
            requires=("data", "alignment_data", "aligner"),
            distributed=True,
            # 2: task-1 candidates are distinct titles; constrained beam search without early stop; 3: task 3 read
            # off the item head too (head/task3/...; task 2 as well where evaluated)
            version=3,
        ),
        Stage(
            "explain",
            "recexplainer.explain.stage",
            requires=("data", "recommender", "alignment_data", "aligner"),
            version=2,  # 2: the prompt shows every history title; leave-one-out attributions per pair
        ),
    )
}


def _step(name: str) -> str:
    """'[4/7]': where a stage sits in the whole method (data ... explain, then the report)."""
    order = [*STAGES, "report"]
    return f"[{order.index(name) + 1}/{len(order)}]"


def requirements(cfg: DictConfig, name: str) -> tuple[str, ...]:
    """The upstream stages of ``name`` for this config."""
    stage = STAGES[name]
    module = importlib.import_module(stage.module)
    return tuple(module.requires(cfg)) if hasattr(module, "requires") else stage.requires


def artifacts_root(cfg: DictConfig) -> Path:
    return Path(cfg.paths.artifacts).expanduser().resolve()


def stage_folder(cfg: DictConfig, name: str, _memo: dict[str, Path] | None = None) -> Path:
    """The artifact folder a stage would use for this config (computed from the config alone)."""
    memo = {} if _memo is None else _memo
    if name in memo:
        return memo[name]
    stage = STAGES[name]
    upstream = {dep: stage_folder(cfg, dep, memo).name for dep in requirements(cfg, name)}
    module = importlib.import_module(stage.module)
    key = artifacts.stage_key(
        {"stage": name, "version": stage.version, "config": module.key_fields(cfg), "upstream": upstream}
    )
    memo[name] = artifacts.stage_dir(artifacts_root(cfg), name, key)
    return memo[name]


def run_stage(cfg: DictConfig, name: str, force: bool = False, _done: dict[str, Path] | None = None) -> Path:
    """Run ``name`` (and its missing upstream stages); return its complete artifact folder.

    Each upstream stage is resolved once per call, however many stages depend on it."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    done = {} if _done is None else _done
    stage = STAGES[name]
    upstream = {}
    for dep in requirements(cfg, name):
        if dep not in done:
            done[dep] = run_stage(cfg, dep, _done=done)
        upstream[dep] = done[dep]
    folder = stage_folder(cfg, name)
    if process_rank() != 0:
        return _run_as_worker(cfg, stage, folder, upstream, force)
    with artifacts.folder_lock(folder):
        if artifacts.is_complete(folder) and not force:
            log.info("%s stage %s: reusing %s", _step(name), name, folder)
            return folder
        if force and folder.exists():
            log.info("stage %s: force=true, discarding %s", name, folder)
            shutil.rmtree(folder)
        artifacts.clear_complete(folder)  # an incomplete folder keeps its checkpoints: the stage resumes
        folder.mkdir(parents=True, exist_ok=True)
        module = importlib.import_module(stage.module)
        artifacts.atomic_write_text(folder / artifacts.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        artifacts.write_json(
            folder / artifacts.KEY_FILE,
            {
                "stage": name,
                "version": stage.version,
                "config": module.key_fields(cfg),
                "upstream": {d: str(p) for d, p in upstream.items()},
            },
        )
        log.info("%s stage %s: running into %s", _step(name), name, folder)
        start = time.perf_counter()
        try:
            metrics = module.run(cfg, folder, upstream)
        finally:
            finish_wandb_run()  # one W&B run per stage, not the first stage's run reused by the next ones
        metrics = {**metrics, f"time/{name}_s": time.perf_counter() - start}
        artifacts.write_json(folder / artifacts.METRICS_FILE, metrics)
        artifacts.mark_complete(folder)
    log.info("stage %s: done in %.1f s -> %s", name, metrics[f"time/{name}_s"], folder)
    return folder


WORKER_WAIT_S = float(os.environ.get("RECEXPLAINER_WORKER_WAIT_S", 6 * 3600))


def _run_as_worker(
    cfg: DictConfig, stage: Stage, folder: Path, upstream: dict[str, Path], force: bool = False
) -> Path:
    """A non-zero rank of a multi-process launch: it never takes the folder lock, writes no config, key,
    metrics or completion marker (rank 0 does), joins the distributed stages' Trainer in rank 0's folder and
    waits for rank 0 to finish the others. With ``force`` rank 0 clears the folder; a worker that finds it
    still complete waits for that before joining a distributed stage (rank 0 cannot finish it alone)."""
    rank = process_rank()
    if artifacts.is_complete(folder) and not (force and stage.distributed):
        return folder
    if force and stage.distributed:
        _wait(lambda: not artifacts.is_complete(folder), f"rank 0 to clear {folder} (force=true)")
    if not stage.distributed:
        log.info("stage %s: rank %d waits for rank 0 to build %s", stage.name, rank, folder)
        _wait(lambda: artifacts.is_complete(folder), f"rank 0 to complete {folder}")
        return folder
    _wait(lambda: (folder / artifacts.KEY_FILE).is_file(), f"rank 0 to start {folder}")
    log.info("stage %s: rank %d joins %s", stage.name, rank, folder)
    importlib.import_module(stage.module).run(cfg, folder, upstream)
    return folder


def _wait(ready, what: str, poll_s: float = 2.0) -> None:
    start = last_log = time.monotonic()
    while not ready():
        now = time.monotonic()
        if now - start > WORKER_WAIT_S:
            raise TimeoutError(
                f"waited {WORKER_WAIT_S:.0f} s for {what} (RECEXPLAINER_WORKER_WAIT_S); did rank 0 fail?"
            )
        if now - last_log > 300:
            log.info("still waiting for %s (%.0f s)", what, now - start)
            last_log = now
        time.sleep(poll_s)
