"""The ``explain`` stage: the aligned model decides (user, item) pairs (by default its item head, else the LLM's
answer: ``explain.decision``) and the LLM explains them; explanations are judged and checked for counterfactual
faithfulness against the recommender.

Pairs come from the split's task-3 examples (the recommender's top band = yes, bottom band = no), so
the decision has a ground truth. Writes ``explanations.jsonl`` (per pair: decision probability, text,
cited / hallucinated titles, counterfactual score changes, judge score), ``metrics.json``
(``explain/...``), ``protocol.json``, ``report.md`` (examples), ``ratings_blind.csv`` (for human raters:
no model name, no decision) and, while running, ``generated.jsonl``: a killed run resumes from it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from recexplainer.aligner import autocast_weights
from recexplainer.alignment_data.explanations import evidence_text
from recexplainer.alignment_data.io import read_examples, read_vectors
from recexplainer.alignment_data.templates import SlotRenderer, render
from recexplainer.artifacts import atomic_write_text, write_json
from recexplainer.config import ConfigError
from recexplainer.data.dataset import SequentialData
from recexplainer.evaluate import calibration
from recexplainer.evaluate.decoding import yes_probability
from recexplainer.evaluate.evaluator import PredictionStore
from recexplainer.explain import faithfulness, generate, templated
from recexplainer.explain.judge import Judge, JudgeCache, JudgeFailed, LocalJudge, OpenAIJudge, rubric_prompt
from recexplainer.explain.metrics import explanation_metrics, score_predictor_metrics, target_patterns
from recexplainer.explain.outputs import blind_csv, judge_histogram, log_to_loggers, report_markdown
from recexplainer.recommender.attribution import leave_one_out, top_attributed
from recexplainer.runtime import autocast, inference_device, stage_precision
from recexplainer.text import TitleIndex, parse_yes_no

log = logging.getLogger(__name__)


def requires(cfg: DictConfig) -> tuple[str, ...]:
    base = ("data", "recommender", "alignment_data")
    return (*base, "aligner") if cfg.explain.model == "aligned" else base


JUDGE_TRANSIENT = (
    "concurrency",
    "max_retries",
    "backoff_s",
    "timeout_s",
    "cache_dir",
    "api_key_env",
    "retry_unparsable",
    "max_failed_share",
)


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    judge = OmegaConf.to_container(cfg.judge, resolve=True)
    for key in JUDGE_TRANSIENT:
        judge.pop(key, None)  # how the judge is reached does not change its scores
    if judge.get("name") != "local":
        judge.pop("constrained", None)  # a local-judge setting
    fields = {
        "explain": OmegaConf.to_container(cfg.explain, resolve=True),
        "judge": judge,
        "seed": cfg.seed,
        "precision": stage_precision(cfg, "explain"),
    }
    if cfg.explain.model == "unaligned" or cfg.judge.name == "local":
        fields["llm"] = OmegaConf.to_container(cfg.llm, resolve=True)
    if cfg.explain.model in templated.MODELS:
        fields["explanation_task"] = OmegaConf.to_container(templated.explanation_config(cfg), resolve=True)
    return fields


def select_pairs(folder: Path, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` task-3 examples, half yes and half no, seeded."""
    rows = [r for r in read_examples(folder, split) if r["kind"] == "interest"]
    if not rows:
        raise ValueError(
            f"no interest (task 3) examples in the {split} split of {folder}: the explain stage needs them"
        )
    rng = random.Random(f"{seed}/explain")
    by_answer = {a: [r for r in rows if r["labels"]["answer"] == a] for a in ("yes", "no")}
    half = n // 2
    picked = rng.sample(by_answer["yes"], min(half, len(by_answer["yes"])))
    picked += rng.sample(by_answer["no"], min(n - len(picked), len(by_answer["no"])))
    return sorted(picked, key=lambda r: r["id"])


TOP_ATTRIBUTED = 2  # attribution agreement: cited items among the recommender's top-2 attributed items


def explain_rows(
    pairs: list[dict[str, Any]],
    cfg: DictConfig,
    titles: list[str],
    attributions: list[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Render the explanation prompt of each pair in the alignment mode (placeholders and/or titles), as
    the explanation task renders it: the history as that task shows it (``full_history``; the whole
    prefix where no explanation task is configured) and, where the template has ``{evidence}``, the
    recommender's leave-one-out ``attributions`` of the pair (one array per pair)."""
    renderer = SlotRenderer(cfg.prompt, titles)
    template = cfg.explain.template
    user_first = template.index("{user}") < template.index("{item}")
    try:
        task = templated.explanation_config(cfg)
        full, n_cited = bool(task.full_history), int(task.n_cited)
    except ConfigError:
        full, n_cited = True, TOP_ATTRIBUTED
    if "{evidence}" in template and attributions is None:
        raise ValueError("explain.template has {evidence}: pass the recommender's attributions")
    out = []
    for i, pair in enumerate(pairs):
        item = int(pair["labels"]["item"])
        user_text, item_text = renderer.user(pair["history"], full=full), renderer.item(item)
        user_slots = ["user"] * renderer.count(user_text)[0]
        item_slots = [item] * renderer.count(item_text)[1]
        values = {"user": user_text, "item": item_text}
        if "{evidence}" in template:
            values["evidence"] = evidence_text(
                cfg.explain.evidence, pair["history"], attributions[i], titles, n_cited
            )
        out.append(
            {
                "id": pair["id"].replace("interest/", "explain/", 1),
                "task": "explain",
                "prompt": render(template, values),
                "slots": user_slots + item_slots if user_first else item_slots + user_slots,
                "user_row": pair["user_row"],
                "history": pair["history"],
                "item": item,
                "answer": pair["labels"]["answer"],
                "rank": pair["labels"].get("rank"),
                # the task-3 question about the same pair (explain.decision=interest_prompt decides by the LLM's
                # answer to it, item_head by the item head's reading of it)
                "decision_row": {
                    **{k: pair[k] for k in ("id", "task", "prompt", "slots", "user_row", "history")},
                    "labels": {"item": item},
                },
            }
        )
    return out


DECIDE_ON_INTEREST = ("interest_prompt", "item_head")  # decisions read at the task-3 question about the pair


def decision_rule(cfg: DictConfig, llm: Any) -> str:
    """``explain.decision`` with ``auto`` resolved: ``item_head`` where the explained model has an item head,
    ``interest_prompt`` otherwise."""
    if cfg.explain.decision != "auto":
        return str(cfg.explain.decision)
    return "item_head" if getattr(llm.model, "has_item_head", False) else "interest_prompt"


def decision_maker(cfg: DictConfig, llm: Any) -> Any:
    """What decides a pair (:func:`decision_rule`): the LLM predictor itself, or its item head's predictor."""
    from recexplainer.evaluate.predictors import ItemHeadPredictor

    if decision_rule(cfg, llm) != "item_head":
        return llm
    if not getattr(llm.model, "has_item_head", False):
        raise ConfigError(
            "explain.decision=item_head reads the aligner's item head, and this model has none (explain.model="
            f"{cfg.explain.model}, aligner.item_head_weight={cfg.aligner.item_head_weight}): set "
            "explain.decision=interest_prompt, or train an aligner with aligner.item_head_weight > 0"
        )
    return ItemHeadPredictor(llm, cfg.evaluation.batch_size)


def decision_threshold(
    cfg: DictConfig, predictor: Any, folder: Path, recommender: Any, titles: list[str], decision: str
) -> tuple[float, dict[str, float]]:
    """The LLM's decision threshold fit on up to ``explain.calibration_examples`` validation examples, decided as
    the test pairs are (``explain.decision``); returns (threshold, ``explain/decision_...`` metrics).

    ``interest_prompt``: the task-3 question's P(yes) on the very examples (and batches) the evaluate stage
    calibrates task 3 on, so that with equal ``calibration_examples`` both stages decide at the same threshold;
    ``item_head``: the item head's P(yes) (the item's percentile in its ranking) on those same examples, as the
    evaluate stage calibrates ``head/task3``; ``explain_prompt``: the explain prompt's P(yes) on balanced
    validation pairs, with their own evidence. ``decision``: the rule (:func:`decision_rule`); ``predictor``: what
    decides by it (:func:`decision_maker`), the LLM predictor or its item head's."""
    ex = cfg.explain
    if decision in DECIDE_ON_INTEREST:
        valid = [r for r in read_examples(folder, "valid") if r["kind"] == "interest"]
        if not valid:
            raise ValueError(
                f"explain.calibration_examples={ex.calibration_examples} needs valid interest examples in {folder}; "
                "there are none: set explain.calibration_examples=0"
            )
        rows = calibration.sample_rows(valid, ex.calibration_examples, cfg.seed, valid[0]["task"])
        yes = [r["labels"]["answer"] == "yes" for r in rows]
        batch_size = cfg.evaluation.batch_size

        def answer(batch: list[dict[str, Any]]) -> list[float]:
            return [a["p_yes"] for a in predictor.predict("interest", batch)]

    else:
        pairs = select_pairs(folder, "valid", ex.calibration_examples, cfg.seed)
        _, attributions = leave_one_out(
            recommender, [p["history"] for p in pairs], [int(p["labels"]["item"]) for p in pairs]
        )
        rows = explain_rows(pairs, cfg, titles, attributions)
        yes = [r["answer"] == "yes" for r in rows]
        batch_size = ex.batch_size

        def answer(batch: list[dict[str, Any]]) -> list[float]:
            logits = predictor.decoder.next_token_logits([predictor.encode(r) for r in batch])
            return yes_probability(logits, predictor.yes_ids, predictor.no_ids).tolist()

    device, dtype = inference_device(cfg, "explain")
    if not getattr(predictor, "autocast", True):
        dtype = None  # the item head reads in the weights' own dtype, as in the evaluate stage
    predictor.model.to(device)
    users = read_vectors(folder, "valid")["users"]
    with (
        autocast_weights(predictor.model, dtype),
        autocast(device, dtype),
        calibration.split_users(predictor, users),
    ):
        p_yes = calibration.p_yes_in_batches(answer, rows, batch_size)
    threshold = calibration.fit_threshold(p_yes, yes, ex.calibration)
    stats = calibration.summary(p_yes, yes, threshold)
    log.info(
        "explain: decision threshold %.4f fit on %d validation examples (accuracy there %.3f; %.3f at 0.5)",
        threshold,
        len(rows),
        stats["valid_acc/calibrated"],
        stats["valid_acc"],
    )
    return threshold, {f"explain/decision_{k}": v for k, v in stats.items()}


def _generate(
    cfg: DictConfig,
    out_dir: Path,
    predictor: Any,
    rows: list[dict[str, Any]],
    threshold: float,
    decider: Any,
    decision: str,
) -> dict[str, dict]:
    """The decision (P(yes) against ``threshold``, by the rule ``decision``; ``decider``, what answers the task-3
    question about the pair: the LLM predictor or its item head's) and the LLM's explanation for every row;
    resumes from ``generated.jsonl``."""
    ex = cfg.explain
    device, dtype = inference_device(cfg, "explain")
    predictor.model.to(device)
    log.info("explain: the LLM runs on %s%s", device, f" ({dtype} autocast)" if dtype else "")
    store = PredictionStore(out_dir, "generated")
    done = {r["id"]: r for r in store.load()}
    todo = [r for r in rows if r["id"] not in done]
    if done:
        log.info("explain: resuming, %d of %d pairs already generated", len(done), len(rows))
    todo.sort(key=predictor.prompt_length)
    head_p_yes: dict[str, float] = {}
    if decision == "item_head" and todo:  # outside autocast: the head reads in the weights' own dtype
        with torch.no_grad():
            answers = decider.predict("interest", [r["decision_row"] for r in todo])
        head_p_yes = {r["id"]: a["p_yes"] for r, a in zip(todo, answers, strict=True)}
    with (
        autocast_weights(predictor.model, dtype),  # the products autocast computes, without per-call casts
        tqdm(
            total=len(todo), desc="explain", unit="pair", disable=not cfg.trainer.enable_progress_bar
        ) as bar,
    ):
        for start in range(0, len(todo), ex.batch_size):
            batch = todo[start : start + ex.batch_size]
            with autocast(device, dtype):
                decisions = None
                if decision == "item_head":
                    decisions = [head_p_yes[r["id"]] for r in batch]
                elif decision == "interest_prompt":  # the model's task-3 answer about the same pair
                    answers = predictor.predict("interest", [r["decision_row"] for r in batch])
                    decisions = [a["p_yes"] for a in answers]
                outputs = generate.explain_batch(
                    predictor, batch, ex.max_new_tokens, ex.answer_prefix, decisions, threshold
                )
            records = [
                {"id": r["id"], "p_yes": p, "text": text, "p_yes_prompt": q}
                for r, (p, text, q) in zip(batch, outputs, strict=True)
            ]
            store.write(records)
            done.update({r["id"]: r for r in records})
            bar.update(len(batch))
    store.close()
    predictor.model.to("cpu")  # frees the GPU for the judge's model
    return done


def check_judge_failures(judge: Judge, judgments: list[Any], jc: DictConfig) -> None:
    """Raise :class:`JudgeFailed` when more than ``judge.max_failed_share`` of the requests failed; the
    judgments that succeeded stay in the judge's cache and the explanations in ``generated.jsonl``."""
    failed = [j for j in judgments if j.failed]
    if judgments and len(failed) > jc.max_failed_share * len(judgments):
        where = f" at {jc.base_url}" if jc.get("base_url") else ""
        raise JudgeFailed(
            f"{len(failed)} of {len(judgments)} judgments by {judge.name}{where} failed (more than "
            f"judge.max_failed_share={jc.max_failed_share}); first error: {failed[0].error}. The generated "
            "explanations and the judgments that succeeded are kept: fix the judge (judge.base_url, the key in "
            "the variable judge.api_key_env names) and rerun, or run with judge=none"
        )


def build_judge(cfg: DictConfig, predictor: Any) -> Judge | None:
    jc = cfg.judge
    if jc.name == "none":
        return None
    cache_dir = Path(jc.cache_dir or Path(cfg.paths.artifacts) / "judge_cache").expanduser()
    common = dict(
        concurrency=jc.concurrency,
        max_retries=jc.max_retries,
        backoff_s=jc.backoff_s,
        retry_unparsable=jc.retry_unparsable,
    )
    if jc.name == "openai":
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in jc.model)
        return OpenAIJudge(
            jc.base_url,
            jc.model,
            api_key_env=jc.api_key_env,
            timeout_s=jc.timeout_s,
            cache=JudgeCache(cache_dir / f"openai_{slug}.jsonl"),
            **common,
        )
    if predictor is None or predictor.aligned:  # the judge is the base LLM, without the aligner's adapters
        from recexplainer.aligner import setup

        lm, tokenizer = setup.load_base_llm(cfg.llm, cfg.paths.assets)
    else:  # explain.model=unaligned: the explaining model is the base LLM already
        lm, tokenizer = predictor.model, predictor.tokenizer
    return LocalJudge(
        lm.eval().to(inference_device(cfg, "explain")[0]),
        tokenizer,
        cfg.llm.name,
        constrained=jc.constrained,
        cache=JudgeCache(cache_dir / f"local_{cfg.llm.name}.jsonl"),
        **common,
    )


def run(cfg: DictConfig, out_dir: Path, upstream: dict[str, Path]) -> dict[str, float]:
    from recexplainer.evaluate.stage import llm_predictor
    from recexplainer.recommender import load_recommender

    ex = cfg.explain
    data = SequentialData.load(upstream["data"])
    titles = data.titles
    index = TitleIndex(titles)
    recommender = load_recommender(upstream["recommender"])
    pairs = select_pairs(upstream["alignment_data"], ex.split, ex.n_pairs, cfg.seed)
    # the recommender's score of each pair and its leave-one-out attribution to every history item
    scores, attributions = leave_one_out(
        recommender, [p["history"] for p in pairs], [int(p["labels"]["item"]) for p in pairs]
    )
    rows = explain_rows(pairs, cfg, titles, attributions)
    predictor, rule = None, "recommender"  # the template explainers write the recommender's own decision
    threshold, calibration_metrics = calibration.REFERENCE_THRESHOLD, {}
    if ex.model in templated.MODELS:
        done = templated.explain(cfg, rows, attributions, titles, data.item_table)
    else:
        predictor = llm_predictor(cfg, upstream, titles, {}, ex.model, ex.split)
        rule, decider = decision_rule(cfg, predictor), decision_maker(cfg, predictor)
        if ex.calibration_examples:
            threshold, calibration_metrics = decision_threshold(
                cfg, decider, upstream["alignment_data"], recommender, titles, rule
            )
        done = _generate(cfg, out_dir, predictor, rows, threshold, decider, rule)

    records = []
    for row, score, values in zip(rows, scores, attributions, strict=True):
        generated = done[row["id"]]
        cites = faithfulness.citations(generated["text"], index, row["history"], row["item"])
        top = top_attributed(row["history"], values, row["answer"], TOP_ATTRIBUTED)
        record = {
            **{k: row[k] for k in ("id", "history", "item", "answer", "rank")},
            "p_yes": generated["p_yes"],
            "decision": "yes" if generated["p_yes"] > threshold else "no",
            **({"p_yes_prompt": generated["p_yes_prompt"]} if "p_yes_prompt" in generated else {}),
            "text": generated["text"],
            "text_decision": parse_yes_no(generated["text"]),
            "mentioned": cites.mentioned,
            "cited": cites.cited,
            "hallucinated": cites.hallucinated,
            "score": float(score),
            "attributions": [round(float(a), 6) for a in values],  # per history item, oldest first
            "top_attributed": top,
            "attribution_agreement": faithfulness.attribution_agreement(cites.cited, top),
        }
        if cites.cited:
            record["counterfactual"] = faithfulness.counterfactual(
                recommender, row["history"], row["item"], cites.cited, ex.n_random, cfg.seed, row["id"]
            )
        records.append(record)
    predictor_metrics = score_predictor_metrics(cfg, records) | calibration_metrics
    if calibration_metrics:  # the decisions at the reference threshold, for comparison
        predictor_metrics["explain/decision_acc/reference"] = float(
            np.mean(
                [(r["p_yes"] > calibration.REFERENCE_THRESHOLD) == (r["answer"] == "yes") for r in records]
            )
        )

    judge = build_judge(cfg, predictor)
    if judge is not None:
        prompts = [
            rubric_prompt(
                r["answer"] == "yes",
                [titles[i] for i in r["history"]],
                titles[r["item"]],
                r["text"],
                cfg.prompt.title_separator,
            )
            for r in records
        ]
        with tqdm(
            total=len(prompts), desc=f"judge {judge.name}", disable=not cfg.trainer.enable_progress_bar
        ) as bar:
            judgments = judge.judge_all(prompts, progress=bar.update)
        for record, judgment in zip(records, judgments, strict=True):
            record["judge_score"], record["judge_error"] = judgment.score, judgment.error
            if judgment.error:  # what the judge said, to read the failures
                record["judge_reply"] = (judgment.reply or "")[:500]
        check_judge_failures(judge, judgments, cfg.judge)

    metrics = explanation_metrics(records, target_patterns(cfg)) | predictor_metrics
    if judge is not None:
        metrics |= {f"explain/judge_{k}": float(v) for k, v in judge.stats.items()}
    atomic_write_text(out_dir / "explanations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    log_to_loggers(cfg, out_dir, metrics, records, titles)
    write_json(
        out_dir / "protocol.json",
        {
            "model": ex.model,
            "split": ex.split,
            "pairs": len(records),
            "template": ex.template,
            "decision_rule": rule,
            "decision": {
                "interest_prompt": "next-token P(yes) vs P(no) after the task-3 question about the same pair",
                "item_head": "the item head's percentile of the item (its share of the other items ranked below "
                "it) at the task-3 question about the same pair",
                "explain_prompt": "next-token P(yes) vs P(no) after the explain prompt",
                "recommender": "the recommender's own decision (its band of the item), written by the template",
            }[rule]
            + (
                f"; yes above a threshold fit on {ex.calibration_examples} validation pairs decided the same way"
                if calibration_metrics
                else "; yes when P(yes) > 0.5"
            )
            + "; the text is generated greedily after the answer prefix",
            "answer_prefix": ex.answer_prefix,
            "judge": judge.name if judge else None,
            "judge_rubric": "0 wrong decision; 1 right, reasoning missing/irrelevant/hallucinated; 2 right, "
            "small flaws; 3 right, summarises the user's tastes and relates the item to them; length ignored",
            "faithfulness": f"remove cited history items vs {ex.n_random} random draws of as many; "
            "score change of the item under the target recommender",
            "citation_matching": "catalog titles found in the text (word-bounded, case-insensitive)",
        },
    )
    atomic_write_text(
        out_dir / "report.md", report_markdown(records, titles, metrics, ex.examples_in_report, cfg)
    )
    if judge is not None:
        judge_histogram([r.get("judge_score") for r in records], out_dir / "judge_scores.png", judge.name)
    blind, key = blind_csv(records, titles, cfg.seed, cfg.prompt.title_separator)
    atomic_write_text(out_dir / "ratings_blind.csv", blind)
    write_json(
        out_dir / "ratings_key.json", key
    )  # rating_id -> explanation id, kept apart from the raters' file
    return metrics
