"""What the explain stage writes besides its records: the Markdown report, the judge-score histogram, the
blind rating sheet for human raters, the logger tables."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recexplainer.text import DEFAULT_SEPARATOR, join_titles


def log_to_loggers(
    cfg: DictConfig, out_dir: Path, metrics: dict, records: list[dict[str, Any]], titles: list[str]
) -> None:
    """Metrics to the configured logger (CSV or W&B); with W&B also the explanations as a table."""
    from recexplainer.training import build_logger

    for logger in build_logger(cfg, out_dir, "explain"):
        _log_to(logger, metrics, records, titles, cfg.prompt.title_separator)


def _log_to(
    logger: Any, metrics: dict, records: list[dict[str, Any]], titles: list[str], separator: str
) -> None:
    logger.log_metrics(metrics)
    if hasattr(logger, "log_table"):
        logger.log_table(
            key="explanations",
            columns=["id", "history", "item", "recommender", "llm decision", "p_yes", "explanation", "judge"],
            data=[
                [
                    r["id"],
                    join_titles([titles[i] for i in r["history"]], separator),
                    titles[r["item"]],
                    r["answer"],
                    r["decision"],
                    r["p_yes"],
                    r["text"],
                    r.get("judge_score"),
                ]
                for r in records
            ],
        )
    logger.save()


def report_markdown(
    records: list[dict[str, Any]], titles: list[str], metrics: dict[str, float], k: int, cfg: DictConfig
) -> str:
    lines = [
        f"# Explanations: {cfg.explain.model} {cfg.llm.name}, {cfg.prompt.mode} prompts, {cfg.dataset.name}",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items())],
        "",
    ]
    judged = {}
    for r in records:
        if r.get("judge_score") is not None:
            judged.setdefault(r["judge_score"], r)
    if judged:
        lines += ["## The judge's scores, one example each", ""]
        for score in sorted(judged):
            r = judged[score]
            lines.append(
                f"- **{score}**: {titles[r['item']]} (recommender: {r['answer']}): {r['text']!r} "
                f"(cited: {', '.join(titles[i] for i in r['cited']) or '-'}; attribution agreement "
                f"{r['attribution_agreement'] if r.get('attribution_agreement') is not None else '-'})"
            )
        lines.append("")
    for r in records[:k]:
        history = join_titles([titles[i] for i in r["history"]], cfg.prompt.title_separator)
        judge = f", judge {r['judge_score']}" if r.get("judge_score") is not None else ""
        lines += [
            f"## {r['id']}",
            "",
            f"- history: {history}",
            f"- item: {titles[r['item']]} (recommender: **{r['answer']}**, rank {r['rank']})",
            f"- LLM decision: **{r['decision']}** (P(yes) {r['p_yes']:.3f}{judge})",
            f"- cited: {', '.join(titles[i] for i in r['cited']) or '-'}; "
            f"hallucinated: {', '.join(titles[i] for i in r['hallucinated']) or '-'}",
            "",
            "> " + r["text"].replace("\n", " "),
            "",
        ]
    return "\n".join(lines)


def judge_histogram(scores: list[int | None], path: Path, judge: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = Counter(s for s in scores if s is not None)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.bar(range(4), [counts.get(s, 0) for s in range(4)])
    ax.set_xticks(range(4))
    ax.set_xlabel("judge score")
    ax.set_ylabel("explanations")
    ax.set_title(f"{judge} ({sum(counts.values())} judged, {scores.count(None)} failed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def blind_csv(
    records: list[dict[str, Any]], titles: list[str], seed: int, separator: str = DEFAULT_SEPARATOR
) -> tuple[str, dict[str, str]]:
    """Shuffled, anonymised rows for human raters (history, item, explanation only), and the key that
    maps each rating id back to its explanation."""
    order = list(range(len(records)))
    random.Random(f"{seed}/blind").shuffle(order)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rating_id", "history", "item", "explanation", "score_0_to_3"])
    for i, j in enumerate(order):
        r = records[j]
        history = join_titles([titles[h] for h in r["history"]], separator)
        writer.writerow([i, history, titles[r["item"]], r["text"], ""])
    return buffer.getvalue(), {str(i): records[j]["id"] for i, j in enumerate(order)}
