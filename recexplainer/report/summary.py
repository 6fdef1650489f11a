"""The ``report`` stage: the last step of the default run. It runs (or reuses) ``evaluate`` and ``explain``,
writes the report of every folder under the artifact root (tables, plots, ``index.html``) and prints a
compact summary of this run: the recommender, the aligned LLM next to the baselines, the explanations.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recexplainer import tasks as kinds
from recexplainer.artifacts import METRICS_FILE, atomic_write_text
from recexplainer.report.tables import prompt_mode

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.txt"
RECOMMENDER = [
    ("HR@10", "test/hr@10"),
    ("NDCG@10", "test/ndcg@10"),
    ("HR@5", "test/hr@5"),
    ("NDCG@5", "test/ndcg@5"),
]
EXPLAIN = [
    ("decision accuracy", "explain/decision_acc"),
    ("  at P(yes) 0.5", "explain/decision_acc/reference"),
    ("  decision threshold", "explain/decision_threshold"),
    ("explain-prompt decision", "explain/prompt_decision_acc"),
    ("cites the history", "explain/citation_rate"),
    ("citation precision", "explain/citation_precision"),
    ("hallucination rate", "explain/hallucination_rate"),
    ("attribution agreement", "explain/attribution_agreement"),
    ("faithfulness ratio", "explain/faithfulness_ratio"),
    ("faithfulness win rate", "explain/faithfulness_win_rate"),
    ("distinct texts", "explain/distinct_ratio"),
    ("words per explanation", "explain/mean_words"),
]


DECIDERS = {
    "item_head": "the item head (task 3 read off it)",
    "interest_prompt": "the LLM's answer to the task-3 question",
    "explain_prompt": "the LLM's answer to the explain prompt",
    "recommender": "the recommender (template)",
}


def _metrics(folder: Path) -> dict[str, float]:
    path = folder / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def decision_rule(explain: Path) -> str | None:
    """What decided the explained pairs (the explain stage's protocol): interest_prompt, item_head, ..."""
    path = explain / "protocol.json"
    return json.loads(path.read_text()).get("decision_rule") if path.is_file() else None


def task3_on_explain_pairs(evaluate: Path, explain: Path) -> dict[str, float] | None:
    """The same model's task-3 answers on the explained pairs (an explained pair is a task-3 example), decided at
    the evaluate stage's calibrated threshold where it fit one: task-3 accuracy there and agreement with the
    explain stage's decision. The answers of what decided there: the item head's (``explain.decision``
    item_head) or the LLM's. None without those predictions."""
    from recexplainer.evaluate.evaluator import PredictionStore

    explained = explain / "explanations.jsonl"
    by_head = decision_rule(explain) == "item_head"
    prefix, store = ("head/", "aligned_item_head") if by_head else ("", "aligned")
    threshold = _metrics(evaluate).get(f"{prefix}task3/threshold", 0.5)  # the calibrated decision, where fit
    predictions = PredictionStore(evaluate / "predictions", store).load() if explained.is_file() else []
    p_yes = {
        r["id"]: r["p_yes"] for r in predictions if r.get("task") == "interest" and r.get("p_yes") is not None
    }
    if not p_yes:
        return None
    pairs = []
    for line in explained.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        p = p_yes.get(r["id"].replace("explain/", "interest/", 1))
        if p is not None:
            pairs.append((r, p > threshold))
    if not pairs:
        return None
    return {
        "n": float(len(pairs)),
        "task3_acc": sum(yes == (r["answer"] == "yes") for r, yes in pairs) / len(pairs),
        "decision_agreement": sum(yes == (r["decision"] == "yes") for r, yes in pairs) / len(pairs),
    }


def summary(cfg: DictConfig | dict[str, Any], folders: dict[str, Path], report: Path | None = None) -> str:
    """The summary text of one run, from the metrics files of its ``recommender``, ``evaluate`` and
    ``explain`` folders (any may be missing); every number is a metrics-file value to 3 decimals."""
    lines = [
        f"RecExplainer: {cfg['dataset']['name']}, {cfg['recommender']['name']} explained by "
        f"{cfg['llm']['name']} ({prompt_mode(cfg)} alignment)",
        "",
    ]
    if "recommender" in folders:
        m = _metrics(folders["recommender"])
        cells = "   ".join(f"{name} {_fmt(m.get(key))}" for name, key in RECOMMENDER if key in m)
        lines += ["Recommender (test, full ranking):", f"  {cells}", ""]
    if "evaluate" in folders:
        m = _metrics(folders["evaluate"])
        baselines = list(cfg["evaluation"]["baselines"])
        keys = [(c.title, c.metric) for c in kinds.headline_columns() if c.metric in m]
        head = any(k.startswith("head/") for k in m)  # an aligner with an item head: task 1 read off it too
        header = ["", "aligned LLM", *(["item head"] if head else []), *baselines]
        scoring = cfg["evaluation"].get("scoring", "recai")
        other = "lenient" if scoring == "recai" else "recai"

        def cells(key: str) -> list[str]:
            own = [_fmt(m.get(key))] + ([_fmt(m.get(f"head/{key}"))] if head else [])
            return [*own, *[_fmt(m.get(f"baseline/{b}/{key}")) for b in baselines]]

        table = [header]
        for name, key in keys:
            table.append([name, *cells(key)])
            if f"{key}/{other}" in m and cells(f"{key}/{other}") != cells(key):  # the other scoring differs
                table.append([f"  ({other} scoring)", *cells(f"{key}/{other}")])
            if f"{key}/calibrated" in m:  # yes / no at the threshold fit on validation examples
                table.append(["  (calibrated)", *cells(f"{key}/calibrated")])
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.append(
            f"Alignment: how well the LLM reproduces the recommender ({cfg['evaluation']['split']}):"
        )
        lines += [
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in table
        ]
        lines.append("")
    if "explain" in folders:
        m = _metrics(folders["explain"])
        n = int(m.get("explain/n", 0))
        lines.append(f"Explanations ({n} pairs, {cfg['explain']['model']}):")
        rule = decision_rule(folders["explain"])
        if rule:
            lines.append(f"  {'decided by':<24}{DECIDERS.get(rule, rule)}")
        lines += [f"  {name:<24}{_fmt(m.get(key))}" for name, key in EXPLAIN if key in m]
        same = (
            task3_on_explain_pairs(folders["evaluate"], folders["explain"]) if "evaluate" in folders else None
        )
        if same:
            lines.append(
                f"  task 3 on these pairs   {_fmt(same['task3_acc'])} (agrees with the explain decision: "
                f"{_fmt(same['decision_agreement'])})"
            )
        lines.append("")
    if report is not None:
        lines.append(f"Report: {report}")
    return "\n".join(lines).rstrip() + "\n"


def run_report(cfg: DictConfig) -> Path:
    """Run or reuse every stage up to ``evaluate`` and ``explain``, write the report of the artifact root,
    print this run's summary. Returns this run's explain folder (a sweep's report follows its lineage)."""
    from recexplainer.pipeline import STAGES, artifacts_root, run_stage
    from recexplainer.report.tables import write_report
    from recexplainer.runtime import process_rank

    done: dict[str, Path] = {}
    done["evaluate"] = run_stage(cfg, "evaluate", _done=done)
    done["explain"] = run_stage(cfg, "explain", _done=done)
    root = artifacts_root(cfg)
    out = root / "report"
    if process_rank() != 0:
        return done["explain"]
    log.info("[%d/%d] stage report: writing %s", len(STAGES) + 1, len(STAGES) + 1, out)
    write_report(root, out)  # also writes index.html
    html = out / "index.html" if (out / "index.html").is_file() else None
    text = summary(cfg, done, html)
    atomic_write_text(out / SUMMARY_FILE, text)
    print("\n" + text, flush=True)
    return done["explain"]
