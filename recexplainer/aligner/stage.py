"""The ``aligner`` stage: fine-tune the LLM (LoRA) and the projectors on the alignment examples."""

from __future__ import annotations

import copy
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from recexplainer.aligner import setup
from recexplainer.aligner.budget import budget_tokens, steps_for_budget
from recexplainer.aligner.data import AlignmentDataset, LengthGroupedSampler, collate, target_ids
from recexplainer.aligner.model import store_frozen_linears, use_fp32_training_attention
from recexplainer.aligner.module import AlignerModule
from recexplainer.alignment_data.io import example_files, read_examples, read_vectors, vector_width
from recexplainer.runtime import stage_precision
from recexplainer.training import EpochTimer, build_trainer, peak_rss_mb

log = logging.getLogger(__name__)


# knobs left out of the key at their neutral value (they change nothing there), so that the aligners trained
# before they existed keep their keys and caches
NEUTRAL_KNOBS = {
    "item_head_weight": 0.0,
    "item_head_temperature": 1.0,
    "item_head_space": "projected",
}
DISTILL_KNOBS = {"title_distill_weight": 0.0, "title_distill_temperature": 1.0}


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    aligner = OmegaConf.to_container(cfg.aligner, resolve=True)
    if not aligner.get("item_head_weight"):  # no item head: its temperature and tasks are unused too
        for knob in NEUTRAL_KNOBS:
            aligner.pop(knob, None)
        aligner.pop("item_head_tasks", None)
    if aligner.get("item_head_space") == "projected":
        aligner.pop("item_head_space")  # the head as before the knob existed
    if aligner.get("item_head_tasks") == ["retrieval"]:
        aligner.pop("item_head_tasks")  # the task-1 examples alone: the head as before the knob existed
    if not aligner.get("title_distill_weight"):  # no title distillation: its temperature is unused too
        for knob in DISTILL_KNOBS:
            aligner.pop(knob, None)
    if not aligner.get("cpu_attention_fp32", False):
        aligner.pop("cpu_attention_fp32", None)  # off: the attention as before the knob existed
    if aligner.get("max_train_examples") is None or not aligner.get("uncapped_tasks"):
        aligner.pop("uncapped_tasks", None)  # without a cap, or empty: changes nothing
    return {
        "llm": OmegaConf.to_container(cfg.llm, resolve=True),
        "aligner": aligner,
        "seed": cfg.seed,
        "precision": stage_precision(cfg, "aligner"),
    }


def training_seed(cfg: DictConfig) -> int:
    """The aligner's seed (initialisation, training sample, batch order): ``aligner.seed``, else ``seed``."""
    return cfg.seed if cfg.aligner.get("seed") is None else int(cfg.aligner.seed)


def head_tasks(cfg: DictConfig, model: Any) -> dict[str, tuple[str, ...]]:
    """Which training examples carry the recommender's distribution for their prefix: those of the tasks in
    ``aligner.item_head_tasks`` train the item head, the task-1 (retrieval) examples title distillation."""
    item = tuple(cfg.aligner.item_head_tasks) if model.has_item_head else ()
    title = ("retrieval",) if model.distills_titles else ()
    return {"head_kinds": item + title, "item_kinds": item, "title_kinds": title}


def encoded_split(
    cfg: DictConfig, folder: Path, split: str, model: Any, tokenizer: Any, formatter: Any
) -> AlignmentDataset:
    """A split of the alignment data encoded exactly as the stage trains / validates on it: the configured
    tasks, length bound and cap; the training sample follows the aligner's seed, the validation sample the
    top-level seed (so replicates with ``aligner.seed`` share it)."""
    ac = cfg.aligner
    train = split == "train"
    return AlignmentDataset.for_model(
        folder,
        split,
        model,
        tokenizer,
        formatter,
        max_length=ac.max_length,
        tasks=list(ac.train_tasks) if ac.train_tasks else None,
        limit=ac.max_train_examples if train else ac.max_valid_examples,
        seed=training_seed(cfg) if train else cfg.seed,
        **head_tasks(cfg, model),
        uncapped=tuple(ac.uncapped_tasks or ()) if train else (),
    )


def _loader(
    dataset: AlignmentDataset,
    batch_size: int,
    pad_id: int,
    seed: int,
    shuffle: bool,
    num_workers: int,
    world_size: int,
    rank: int,
    mega: int = 50,
    groups: list[str] | None = None,
) -> DataLoader:
    sampler = LengthGroupedSampler(
        dataset.lengths(),
        batch_size,
        seed=seed,
        num_replicas=world_size,
        rank=rank,
        mega=mega if shuffle else 1,
        groups=groups,
    )
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=partial(collate, pad_id=pad_id), num_workers=num_workers
    )


def _planned_steps(cfg: DictConfig, train: AlignmentDataset, loader: DataLoader, trainer: L.Trainer) -> int:
    """Optimizer steps of the run: ``max_epochs`` / ``max_steps``, or those of ``budget_minutes`` (which then
    replaces both in the trainer's loop)."""
    ac = cfg.aligner
    steps_per_epoch = math.ceil(len(loader) / ac.accumulate_grad_batches)
    if ac.budget_minutes is None:
        epochs = steps_per_epoch * ac.max_epochs
        return epochs if ac.max_steps < 0 else min(ac.max_steps, epochs)
    tokens = budget_tokens(ac.budget_minutes, ac.budget_tokens_per_s)
    sampler = loader.batch_sampler

    def epoch_batches(epoch: int, rank: int) -> list[list[int]]:
        other = copy.copy(sampler)  # the training sampler's batches for (epoch, rank), its state untouched
        other.rank, other.skip = rank, 0
        other.set_epoch(epoch)
        return list(other)

    steps, epochs = steps_for_budget(
        epoch_batches, train.lengths(), tokens, ac.accumulate_grad_batches, trainer.world_size
    )
    trainer.fit_loop.max_epochs = epochs
    trainer.fit_loop.epoch_loop.max_steps = steps
    log.info(
        "aligner.budget_minutes=%g at %g tokens/s: %d tokens, %d optimizer steps (%d epoch(s) of %d steps)",
        ac.budget_minutes,
        ac.budget_tokens_per_s,
        tokens,
        steps,
        epochs,
        steps_per_epoch,
    )
    return steps


def _catalog_titles(folder: Path) -> list[str]:
    """The item titles (index 0: padding) of the dataset the alignment data in ``folder`` was built from."""
    import json

    from recexplainer.data.dataset import SequentialData

    data_folder = Path(json.loads((folder / "key.json").read_text())["upstream"]["data"])
    return list(SequentialData.load(data_folder).titles)


def _init_projectors(cfg: DictConfig, model: Any, tokenizer: Any, folder: Path) -> dict[str, float]:
    """Closed-form projector initialisation from title embeddings (aligner.projector_init=title_lsq*)."""
    from recexplainer.aligner.init import init_projectors_from_titles

    titles = _catalog_titles(folder)
    vectors = read_vectors(folder, "train")
    histories: dict[int, list[int]] = {}
    for row in read_examples(folder, "train"):
        if "user_row" in row and "history" in row:
            histories.setdefault(row["user_row"], row["history"])
    rows = sorted(histories)
    users = vectors["users"][rows] if rows else None
    return init_projectors_from_titles(
        model,
        tokenizer,
        titles,
        vectors["items"],
        users,
        [histories[r] for r in rows],
        user_target="top1" if cfg.aligner.projector_init == "title_lsq_top1" else "history",
    )


def title_token_table(tokenizer: Any, titles: list[str]) -> torch.Tensor:
    """Each title tokenized as a training target is (title + end of sequence, no special tokens): (len(titles),
    longest) token ids, -1 after each title's end; an empty title (the padding item) all -1."""
    encoded = [target_ids(tokenizer, title) if title else [] for title in titles]
    table = torch.full((len(encoded), max(1, max(len(e) for e in encoded))), -1, dtype=torch.long)
    for i, ids in enumerate(encoded):
        table[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return table


def answers_on_titles(table: torch.Tensor, answers: list[list[int]]) -> tuple[int, int]:
    """How many answers (token ids) are exactly one tokenized title of ``table`` (``title_token_table``), and how
    many start like one (their first token is a title's first token: title distillation has at least that
    position to follow; a top-k list's answer is such one)."""
    titles = {tuple(t for t in row if t >= 0) for row in table.tolist()} - {()}  # not the padding item's
    firsts = {title[0] for title in titles}
    exact = sum(tuple(a) in titles for a in answers)
    started = sum(bool(a) and a[0] in firsts for a in answers)
    return exact, started


def _set_title_tokens(
    model: Any, tokenizer: Any, folder: Path, train: AlignmentDataset, weight: float
) -> None:
    """Title distillation: the catalog's tokenized titles, checked against the task-1 training answers."""
    titles = _catalog_titles(folder)
    if len(titles) != model.item_table.shape[0]:
        raise ValueError(
            f"{len(titles)} titles for {model.item_table.shape[0]} items in {folder}: the alignment data and its "
            "dataset disagree; rebuild the alignment data (recexplainer stage=alignment_data)"
        )
    table = title_token_table(tokenizer, titles)
    model.set_title_tokens(table)
    answers = [
        [t for t in e.labels if t >= 0]
        for e in train.examples
        if e.head_user_row is not None and e.head_title
    ]
    exact, started = answers_on_titles(table, answers)
    if started == 0:
        raise ValueError(
            "aligner.title_distill_weight > 0 but no task-1 training answer in "
            f"{folder} starts with a catalog title: title distillation has nothing to follow; rebuild the "
            "alignment data from this dataset, or set aligner.title_distill_weight=0"
        )
    log.info(
        "title distillation: %d task-1 examples (%d of them exactly one title; weight %g)",
        len(answers),
        exact,
        weight,
    )


def run(cfg: DictConfig, out_dir: Path, upstream: dict[str, Path]) -> dict[str, float]:
    ac = cfg.aligner
    folder = upstream["alignment_data"]
    seed = training_seed(cfg)
    L.seed_everything(seed, workers=True, verbose=False)
    d_rec = vector_width(folder)
    model, tokenizer, formatter = setup.build(cfg, d_rec)
    # behavior prompts carry no placeholders: the projectors never see a vector, so nothing to initialise
    use_vectors = cfg.prompt.mode != "behavior"
    init_stats = (
        _init_projectors(cfg, model, tokenizer, folder)
        if ac.projector_init in ("title_lsq", "title_lsq_top1") and use_vectors
        else {}
    )
    tasks = list(ac.train_tasks) if ac.train_tasks else None
    if tasks is not None:
        present = set(example_files(folder, "train"))
        absent = [t for t in tasks if t not in present]
        if absent:  # e.g. item_recovery in behavior mode: expected, but say so
            log.info(
                "aligner.train_tasks %s have no examples in %s (mode %s): skipped",
                absent,
                folder.name,
                cfg.prompt.mode,
            )
    train = encoded_split(cfg, folder, "train", model, tokenizer, formatter)
    valid = encoded_split(cfg, folder, "valid", model, tokenizer, formatter)
    if len(train) == 0:
        raise ValueError(
            f"no training examples in {folder} for tasks {tasks or 'all'} (max_length {ac.max_length})"
        )
    if model.needs_recommender_targets:
        model.set_item_table(train.items)
        heads = [e for e in train.examples if e.head_user_row is not None]
        n_item = sum(e.head_item for e in heads)
        n_title = sum(e.head_title for e in heads)
        if (model.has_item_head and n_item == 0) or (model.distills_titles and n_title == 0):
            raise ValueError(
                "aligner.item_head_weight > 0 or aligner.title_distill_weight > 0 but no training example carries "
                "the recommender's distribution: the item head learns from the examples of "
                f"aligner.item_head_tasks ({list(ac.item_head_tasks)}), title distillation "
                f"from the task-1 (retrieval) examples; aligner.train_tasks is {list(ac.train_tasks or ['all'])}: "
                "add them to it"
            )
        if model.has_item_head:
            log.info(
                "item head: %d examples of %s also train it (weight %g)",
                n_item,
                list(ac.item_head_tasks),
                ac.item_head_weight,
            )
        if model.distills_titles:
            _set_title_tokens(model, tokenizer, folder, train, ac.title_distill_weight)

    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="{step}",
        save_last=True,
        every_n_train_steps=max(1, ac.checkpoint_every_n_steps),
        save_top_k=1,
        monitor=None,
        enable_version_counter=False,
    )
    timer = EpochTimer()
    trainer = build_trainer(
        cfg,
        out_dir,
        "aligner",
        ac.max_epochs,
        [checkpoint, timer],
        grad_clip=1.0,
        accumulate_grad_batches=ac.accumulate_grad_batches,
        max_steps=ac.max_steps,
        val_check_interval=ac.val_check_interval,
        use_distributed_sampler=False,
    )
    if str(trainer.precision).startswith("bf16-mixed") and isinstance(
        trainer.strategy, (SingleDeviceStrategy, DDPStrategy)
    ):  # sharding strategies (FSDP, DeepSpeed) manage their own parameter dtypes
        n = store_frozen_linears(model, torch.bfloat16)
        log.info("bf16-mixed: %d frozen linear weights stored in bf16 (same products, no per-step casts)", n)
    if ac.cpu_attention_fp32 and isinstance(trainer.accelerator, CPUAccelerator):
        if not str(trainer.precision).startswith(("32", "64")) and use_fp32_training_attention(model.lm):
            log.info("%s on a CPU: the attention trains in fp32 (a faster backward)", trainer.precision)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_loader = _loader(
        train,
        ac.batch_size,
        pad_id,
        seed,
        True,
        ac.num_workers,
        trainer.world_size,
        trainer.global_rank,
        ac.length_group_mega,
        train.groups() if ac.pair_batching else None,
    )
    valid_loader = (
        _loader(
            valid,
            ac.batch_size,
            pad_id,
            cfg.seed,
            False,
            ac.num_workers,
            trainer.world_size,
            trainer.global_rank,
        )
        if len(valid)
        else None
    )
    total = _planned_steps(cfg, train, train_loader, trainer)
    module = AlignerModule(
        model, ac.lr, ac.projector_lr, ac.weight_decay, ac.warmup_ratio, total, ac.projector_only_steps
    )
    module.train_sampler = train_loader.batch_sampler
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log.info(
        "aligner: %s, %d training examples (%d tokens), %d validation; %d optimizer steps; "
        "%.2f M trainable of %.1f M parameters",
        cfg.llm.name,
        len(train),
        train.n_tokens,
        len(valid),
        total,
        n_trainable / 1e6,
        n_total / 1e6,
    )
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming aligner training from %s", last)
    trainer.fit(
        module, train_loader, valid_loader, ckpt_path=str(last) if last.is_file() else None, weights_only=True
    )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "valid/"))}
    if valid_loader is not None and module.validated_step != trainer.global_step:
        # the run stopped between validations (a budget or max_steps ending mid-epoch): the reported
        # validation loss is that of the final weights, not of an earlier step's
        log.info("validating the final weights (step %d)", trainer.global_step)
        trainer.validate(module, valid_loader, verbose=False)  # under DDP only some ranks return the results
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")})
    if trainer.global_rank == 0:
        setup.save(model, tokenizer, cfg, d_rec, out_dir)
    metrics.update(timer.summary(None))
    metrics.update(init_stats)
    metrics.update(
        {
            "aligner/train_examples": len(train),
            "aligner/train_tokens": train.n_tokens,
            "aligner/dropped_too_long": train.dropped,
            "aligner/valid_examples": len(valid),
            "aligner/optimizer_steps": trainer.global_step,
            "aligner/planned_steps": total,
            "aligner/validated_at_step": module.validated_step,
            "aligner/trainable_parameters": n_trainable,
            "aligner/total_parameters": n_total,
            "train/peak_rss_mb": peak_rss_mb(),
        }
    )
    return metrics
