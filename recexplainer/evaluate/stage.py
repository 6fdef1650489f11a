"""The ``evaluate`` stage: alignment metrics of the LLM and of the baselines on the same examples.

Writes ``metrics.json`` (``task1/hr@5`` ... for the evaluated model, ``baseline/<name>/task1/hr@5`` ...
for each baseline, ``head/task1/hr@5`` ... for tasks 1, 2 and 3 read off an aligner's item head, ``task3/acc/calibrated``
... for the LLM's yes/no decisions at a threshold fit on validation examples (:mod:`.calibration`),
``speed/...`` examples per second), ``protocol.json`` (decoding, matching rule,
counts) and ``predictions/<predictor>.jsonl`` (per example: raw output, parsed titles, matched ids,
metric values). A killed run resumes: examples already in the predictions files are not recomputed.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from recexplainer import tasks as kinds
from recexplainer.aligner import autocast_weights
from recexplainer.alignment_data.io import example_files, read_examples, read_vectors
from recexplainer.artifacts import write_json
from recexplainer.data.dataset import SequentialData
from recexplainer.evaluate import calibration
from recexplainer.evaluate.evaluator import EvaluatorModule, PredictionStore, answer_diversity
from recexplainer.evaluate.predictors import BaselinePredictor, ItemHeadPredictor, LLMPredictor
from recexplainer.runtime import autocast, environment, inference_device, process_rank, stage_precision
from recexplainer.text import ChatFormatter, TitleIndex, join_titles, split_mark
from recexplainer.training import build_trainer

log = logging.getLogger(__name__)
WANDB_TABLE_ROWS = 500  # predictions logged as a W&B table (all of them are in predictions/*.jsonl)


def requires(cfg: DictConfig) -> tuple[str, ...]:
    """Upstream stages: the aligned model needs the aligner, the student baseline the recommender."""
    stages = ["data", "alignment_data"]
    if "student" in cfg.evaluation.baselines:
        stages.insert(1, "recommender")
    if cfg.evaluation.model == "aligned":
        stages.append("aligner")
    return tuple(stages)


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
    evaluation.pop("precision", None)  # keyed as the effective precision below
    fields = {"evaluation": evaluation, "seed": cfg.seed}
    if cfg.evaluation.model == "unaligned":  # the aligned model's LLM is part of the aligner's key
        fields["llm"] = OmegaConf.to_container(cfg.llm, resolve=True)
    if cfg.evaluation.model != "none":
        fields["precision"] = stage_precision(cfg, "evaluate")
    return fields


def select_examples(folder: Path, cfg: DictConfig) -> dict[str, list[dict[str, Any]]]:
    """Per task, the evaluated examples of the split: every evaluable task (or the configured ones),
    capped by a seeded sample; in file order."""
    ev = cfg.evaluation
    rows = defaultdict(list)
    for row in read_examples(folder, ev.split, list(ev.tasks) if ev.tasks else None):
        rows[row["task"]].append(row)
    if ev.tasks:
        missing = [t for t in ev.tasks if t not in rows]
        if missing:
            raise ValueError(
                f"evaluation.tasks {missing} have no {ev.split} examples in {folder}; tasks there: "
                f"{sorted(example_files(folder, ev.split))}"
            )
    selected = {}
    for task, task_rows in sorted(rows.items()):
        kind = task_rows[0]["kind"]
        if kind not in kinds.evaluable():
            if ev.tasks:
                raise ValueError(
                    f"task {task} (kind {kind}) has no evaluation metric; evaluable kinds: "
                    f"{', '.join(kinds.evaluable())}"
                )
            continue  # e.g. item_metadata: free text without a metric
        cap = ev.max_examples_per_task.get(task, ev.max_examples)
        if cap is not None and len(task_rows) > cap:
            keep = set(random.Random(f"{cfg.seed}/{task}").sample(range(len(task_rows)), cap))
            task_rows = [r for i, r in enumerate(task_rows) if i in keep]
        selected[task] = task_rows
    return selected


def _predictors(cfg: DictConfig, upstream: dict[str, Path], data: SequentialData) -> list[tuple[str, Any]]:
    """(metric prefix, predictor) pairs: the LLM (prefix '') first, then the baselines."""
    ev = cfg.evaluation
    out: list[tuple[str, Any]] = []
    folder = upstream["alignment_data"]
    titles = data.titles
    train = defaultdict(list)
    if ev.baselines or ev.few_shot:
        for row in read_examples(folder, "train"):
            train[row["kind"]].append(row)
    llm = llm_predictor(cfg, upstream, titles, train, ev.model, ev.split) if ev.model != "none" else None
    if llm is not None:
        out.append(("", llm))
    if process_rank() != 0:  # the other processes of a DDP run share the LLM's examples; baselines: rank 0
        return out
    if llm is not None and llm.aligned and getattr(llm.model, "has_item_head", False):
        # tasks 1, 2 and 3 read off the item head
        out.append(("head/", ItemHeadPredictor(llm, ev.batch_size)))
    sequences = [data.history(u, "valid") for u in range(data.n_users)]  # training part of each user
    for name in ev.baselines:
        scorer, stats = _student(cfg, upstream, data) if name == "student" else (None, {})
        predictor = BaselinePredictor(
            name, titles, data.train_item_counts(), sequences, train, cfg.seed, scorer=scorer
        )
        predictor.fit_stats = stats
        out.append((f"baseline/{name}/", predictor))
    return out


def _student(
    cfg: DictConfig, upstream: dict[str, Path], data: SequentialData
) -> tuple[Any, dict[str, float]]:
    from recexplainer.evaluate import student
    from recexplainer.recommender import load_recommender

    sc = cfg.evaluation.student
    model, stats = student.distill(
        load_recommender(upstream["recommender"]),
        data,
        cfg.prompt.max_hist_len,
        cfg.seed,
        hidden_size=sc.hidden_size,
        epochs=sc.epochs,
        lr=sc.lr,
        max_prefixes=sc.max_prefixes,
        mask=cfg.prompt.mask,
    )
    return student.scorer(model, cfg.prompt.max_hist_len), stats


def llm_predictor(
    cfg: DictConfig, upstream: dict[str, Path], titles: list[str], train: dict, model: str, split: str
) -> LLMPredictor:
    """The LLM to evaluate: ``model`` aligned (the aligner stage's) or unaligned (the base LLM); the
    vectors of ``split``'s users. Decoding settings come from ``cfg.evaluation``."""
    from recexplainer.aligner import setup

    ev = cfg.evaluation
    aligned = model == "aligned"
    vectors = read_vectors(upstream["alignment_data"], split)
    if aligned:
        net, tokenizer, formatter = setup.load(upstream["aligner"], cfg.paths.assets)
        name = "aligned"
    else:
        lm, tokenizer = setup.load_base_llm(cfg.llm, cfg.paths.assets)
        net, formatter = lm.eval(), ChatFormatter(tokenizer, cfg.llm.prompt_template, cfg.llm.system_prompt)
        name = "unaligned" if not ev.few_shot else f"unaligned_{ev.few_shot}shot"
    shots = {}
    if ev.few_shot:
        rng = random.Random(f"{cfg.seed}/shots")
        by_task = defaultdict(list)
        for rows in train.values():
            for row in rows:
                by_task[row["task"]].append(row)
        shots = {task: rng.sample(rows, min(ev.few_shot, len(rows))) for task, rows in by_task.items()}
    return LLMPredictor(
        name,
        net,
        tokenizer,
        formatter,
        TitleIndex(titles),
        vectors,
        aligned=aligned,
        placeholders=(cfg.prompt.user_placeholder, cfg.prompt.item_placeholder),
        num_beams=ev.num_beams,
        beam_width=ev.beam_width,
        constrained=ev.constrained,
        max_new_tokens_margin=ev.max_new_tokens_margin,
        fuzzy_cutoff=ev.fuzzy_cutoff,
        shots=shots,
        separator=cfg.prompt.title_separator,
    )


def _loader(rows: list[dict[str, Any]], predictor: Any, batch_size: int) -> DataLoader:
    """Examples in order of prompt length (similar lengths share a batch: little padding)."""
    if hasattr(predictor, "prompt_length"):
        rows = sorted(rows, key=predictor.prompt_length)
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=list)


def evaluate(
    cfg: DictConfig,
    predictor: Any,
    prefix: str,
    examples: dict[str, list[dict[str, Any]]],
    out_dir: Path,
    thresholds: dict[str, float] | None = None,
) -> dict[str, float]:
    """Run one predictor over every task it supports; return its prefixed metrics. ``thresholds``: per yes/no
    task, a calibrated decision threshold; its decisions are reported as ``<task>/acc/calibrated``."""
    name = getattr(predictor, "name", "model")
    # examples are sharded here (every world-th one per process), so Lightning must not add a
    # DistributedSampler on top: that would drop half of each shard
    trainer = (
        build_trainer(
            cfg,
            out_dir,
            "evaluate",
            1,
            [],
            None,
            shard=False,
            use_distributed_sampler=False,
        )
        if prefix == ""
        else None
    )
    rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
    store = PredictionStore(out_dir / "predictions", name, rank, world)
    done = store.load()
    done_ids = {r["id"] for r in done}
    tasks, loaders = [], []
    for task, rows in examples.items():
        kind = rows[0]["kind"]
        if kind not in predictor.kinds:
            continue
        tasks.append((task, kind, kinds.metric_prefix(task, kind)))
        todo = [r for r in rows if r["id"] not in done_ids]
        if todo:  # decided on the whole set, so that every process runs the same dataloaders (some empty)
            loaders.append((len(tasks) - 1, _loader(todo[rank::world], predictor, cfg.evaluation.batch_size)))
    if done:
        log.info("evaluate %s: resuming, %d examples already scored", name, len(done))
    module = EvaluatorModule(
        predictor,
        tasks,
        store,
        done,
        loader_tasks=[i for i, _ in loaders],
        sync=trainer is not None,
        scoring=cfg.evaluation.scoring,
    )
    start = time.perf_counter()
    if trainer is not None and loaders:
        # under bf16-mixed the linear weights are held in bf16 while the model runs: the products autocast
        # computes anyway, without a cast of every weight at every call
        model = getattr(predictor, "model", None)
        mixed = model is not None and str(trainer.precision) in ("bf16-mixed", "bf16")
        with autocast_weights(model, torch.bfloat16 if mixed else None):
            trainer.test(module, dataloaders=[dl for _, dl in loaders], verbose=False)
    else:  # baselines (cheap, no weights) and the item head (rank 0 alone): the same module, stepped directly
        model = getattr(predictor, "model", None)
        if model is not None:  # the item head, without autocast (ItemHeadPredictor.autocast)
            model.to(inference_device(cfg, "evaluate")[0])
        module.on_test_start()
        for i, (_, loader) in enumerate(loaders):
            for b, batch in enumerate(loader):
                module.test_step(batch, b, i)
        module.on_test_end()
        if model is not None:
            model.to("cpu")
    elapsed = time.perf_counter() - start
    metrics = {prefix + k: v for k, v in module.results().items()}
    records = store.load()
    for task, kind, mprefix in tasks:
        if kinds.get(kind).diversity:
            task_records = [r for r in records if r["task"] == task]
            metrics |= {f"{prefix}{mprefix}/{k}": v for k, v in answer_diversity(task_records).items()}
        if thresholds and task in thresholds:
            metrics |= {
                f"{prefix}{mprefix}/{k}": v
                for k, v in calibrated_metrics(examples[task], records, thresholds[task]).items()
            }
        if module.counts[task] and prefix == "":
            metrics[f"speed/{mprefix}/examples_per_s"] = module.counts[task] / max(module.seconds[task], 1e-9)
    for logger in trainer.loggers if trainer is not None and trainer.global_rank == 0 else []:
        logger.log_metrics(metrics)
        if hasattr(logger, "log_table"):  # W&B: the predictions, readable in the dashboard
            logger.log_table(
                key="predictions",
                columns=["id", "task", "output", "parsed titles", "metrics"],
                data=[
                    [
                        r["id"],
                        r["task"],
                        (r.get("outputs") or [""])[0][:500],
                        join_titles([t for t in r.get("titles") or [] if t], cfg.prompt.title_separator),
                        json.dumps(r["metrics"]),
                    ]
                    for r in records[:WANDB_TABLE_ROWS]
                ],
            )
        logger.save()
    log.info("evaluate %s: %d tasks in %.1f s", name, len(tasks), elapsed)
    return metrics


def calibrated_metrics(
    rows: list[dict[str, Any]], records: list[dict[str, Any]], threshold: float
) -> dict[str, float]:
    """Accuracy and yes rate of "yes iff P(yes) > threshold" over the scored examples of one yes/no task."""
    answers = {r["id"]: r["labels"]["answer"] == "yes" for r in rows}
    decided = [(r["p_yes"] > threshold, answers[r["id"]]) for r in records if r["id"] in answers]
    if not decided:
        return {}
    return {
        "acc/calibrated": sum(said == yes for said, yes in decided) / len(decided),
        "yes_rate/calibrated": sum(said for said, _ in decided) / len(decided),
    }


def calibrate(
    cfg: DictConfig, llm: Any, folder: Path, examples: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per evaluated yes/no task, the decision threshold of ``llm`` (the LLM predictor, or its item head's) fit on
    up to ``evaluation.calibration_examples`` validation examples of that task (:mod:`.calibration`); returns
    (thresholds, metrics)."""
    ev = cfg.evaluation
    tasks = {
        t: rows[0]["kind"]
        for t, rows in examples.items()
        if kinds.get(rows[0]["kind"]).answer == "yes_no" and rows[0]["kind"] in llm.kinds
    }
    if not tasks or not ev.calibration_examples:
        return {}, {}
    users = read_vectors(folder, "valid")["users"]
    device, dtype = inference_device(cfg, "evaluate")
    # the test examples' numerics: bf16 autocast under a bf16(-mixed) precision (as inference_device says) and,
    # under a "-true" precision, the weights themselves cast as Lightning casts them for the test run; a predictor
    # that runs without autocast (the item head) is calibrated without it, as its test examples are scored
    original = next(llm.model.parameters()).dtype
    weights = {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(stage_precision(cfg, "evaluate"))
    if not getattr(llm, "autocast", True):
        dtype = weights = None
    model = llm.model.to(device=device, dtype=weights or original)
    thresholds, metrics = {}, {}
    start = time.perf_counter()
    with autocast_weights(model, dtype), autocast(device, dtype), calibration.split_users(llm, users):
        for task, kind in tasks.items():
            valid = read_examples(folder, "valid", [task])
            if not valid:
                raise ValueError(
                    f"evaluation.calibration_examples={ev.calibration_examples} needs valid examples of {task} in "
                    f"{folder}; there are none: set evaluation.calibration_examples=0"
                )
            rows = calibration.sample_rows(valid, ev.calibration_examples, cfg.seed, task)
            p_yes = calibration.p_yes_in_batches(
                lambda batch, kind=kind: [a["p_yes"] for a in llm.predict(kind, batch)], rows, ev.batch_size
            )
            yes = [r["labels"]["answer"] == "yes" for r in rows]
            thresholds[task] = calibration.fit_threshold(p_yes, yes, ev.calibration)
            mprefix = kinds.metric_prefix(task, kind)
            metrics |= {
                f"{mprefix}/{k}": v for k, v in calibration.summary(p_yes, yes, thresholds[task]).items()
            }
    model.to(device="cpu", dtype=original)  # the Trainer places (and casts) it for the test run
    log.info(
        "evaluate %s: decision thresholds %s fit on validation examples in %.1f s",
        llm.name,
        {t: round(v, 4) for t, v in thresholds.items()},
        time.perf_counter() - start,
    )
    return thresholds, metrics


def run(cfg: DictConfig, out_dir: Path, upstream: dict[str, Path]) -> dict[str, float]:
    ev = cfg.evaluation
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = SequentialData.load(upstream["data"])
    examples = select_examples(upstream["alignment_data"], cfg)
    if not examples:
        raise ValueError(f"no evaluable {ev.split} examples in {upstream['alignment_data']}")
    metrics: dict[str, float] = {}
    predictors = _predictors(cfg, upstream, data)
    thresholds: dict[str, dict[str, float]] = {}
    # the LLM and its item head decide at thresholds fit on valid examples
    for prefix, predictor in predictors:
        if prefix in ("", "head/"):
            thresholds[prefix], calibration_metrics = calibrate(
                cfg, predictor, upstream["alignment_data"], examples
            )
            metrics |= {prefix + k: v for k, v in calibration_metrics.items()}
    for prefix, predictor in predictors:
        metrics |= evaluate(cfg, predictor, prefix, examples, out_dir, thresholds.get(prefix))
        metrics |= {prefix + k: v for k, v in getattr(predictor, "fit_stats", {}).items()}
    if process_rank() != 0:  # rank 0 writes the protocol and the metrics
        return metrics
    counts = {f"count/{t}": len(rows) for t, rows in examples.items()}
    protocol = {
        "split": ev.split,
        "model": ev.model,
        "predictors": [getattr(p, "name", "model") for _, p in predictors],
        "examples_per_task": {t: len(rows) for t, rows in examples.items()},
        # the LLM's numerics (trainer=cpu_bf16 / gpu: bf16 autocast), None for baselines only
        "precision": stage_precision(cfg, "evaluate") if ev.model != "none" else None,
        "decoding": {
            "beam_search": f"beam search, {ev.beam_width or ev.num_beams} beams, as many returned sequences, "
            f"one title each; candidates: the first {ev.num_beams} distinct titles",
            "titles": "greedy (num_beams 1)",
            "yes_no": "next-token probability of yes vs no (sum over spellings yes/Yes/ yes/ Yes)",
            "constrained": ev.constrained,
            "item_head": (
                f"tasks 1, 2 and 3 read off the item head, in {ItemHeadPredictor.NUMERICS}; task 1: its five best "
                "items; task 2: the shown candidates by its scores; task 3: P(yes) is the item's percentile in its "
                "ranking (the share of the other items scored below it)"
                if "head/" in thresholds
                else None
            ),
            "beam_early_stopping": not ev.constrained,
            "max_new_tokens": "titles asked x longest catalog title + separators + "
            f"{ev.max_new_tokens_margin}",
            "batch_size": ev.batch_size,
            "padding": "left",
        },
        "matching": {
            "scoring": ev.scoring,
            "recai": "each answer whole (task 1: each returned sequence; lists: split on the separator), exact "
            "match after strip().lower() (with or without a [N] suffix); no deduplication: a repeat keeps its "
            "slot; lists cut to the length asked (task 6: the first len(history) titles); task 3 yes when "
            "P(yes) >= P(no). Reported under the plain names when scoring=recai, else as <metric>/recai",
            "lenient": "parsed titles (numbering, bullets, quotes and trailing punctuation dropped), exact match "
            "after strip, lower-case and whitespace collapsing; repeats removed before cutting to k; task 3 yes "
            "when P(yes) > P(no). Reported under the plain names when scoring=lenient, else as <metric>/lenient",
            "fuzzy": f"difflib ratio >= {ev.fuzzy_cutoff}, reported as *_fuzzy",
            "list_separator": cfg.prompt.title_separator,
            "list_split_on": split_mark(cfg.prompt.title_separator),
        },
        "baselines": list(ev.baselines),
        "threshold_rules": "popularity / item_knn interest thresholds fit on the training interest examples",
        "calibration": (
            f"the LLM's yes/no threshold fit on up to {ev.calibration_examples} valid examples per task, rule "
            f"{ev.calibration} (prior: as many yes answers as yes labels there; accuracy: the most accurate t, ties "
            "to the t nearest 0.5); yes iff P(yes) > t, reported as <task>/acc/calibrated"
            if thresholds
            else None
        ),
        # figures differ across CPU types and package versions (benchmarks/README.md, "The same key on two CPUs")
        "environment": environment(),
    }
    write_json(out_dir / "protocol.json", protocol)
    _log_table(metrics)
    return {**metrics, **counts}


def _log_table(metrics: dict[str, float]) -> None:
    heads = [c.metric for c in kinds.headline_columns()]
    sources = sorted(
        {k[: -len(h)] for k in metrics for h in heads if k.endswith(h)}, key=lambda s: (s != "", s)
    )
    log.info("%-28s %s", "method", " ".join(f"{h:>17}" for h in heads))
    for source in sources:
        cells = [f"{metrics[source + h]:17.4f}" if source + h in metrics else f"{'-':>17}" for h in heads]
        log.info("%-28s %s", source.rstrip("/") or "model", " ".join(cells))
