"""The explain stage's text metrics: citations against the recommender's attributions, template copies,
distinctness, the judge against faithfulness, the score predictor's held-out error."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from omegaconf import DictConfig

from recexplainer.config import ConfigError
from recexplainer.explain import faithfulness, templated


def score_predictor_metrics(cfg: DictConfig, records: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out MSE of predicting the recommender's score from the explanation's embedding."""
    if cfg.explain.score_predictor == "none":
        return {}
    from recexplainer.assets import asset_dir
    from recexplainer.explain import regressor

    encode = regressor.minilm_encoder(asset_dir("minilm-l6-v2", cfg.paths.assets))
    features = encode([r["text"] for r in records])
    targets = np.array([r["score"] for r in records])
    result = regressor.cross_validated_mse(
        features, targets, alpha=cfg.explain.score_predictor_alpha, seed=cfg.seed
    )
    return {f"explain/{k}": v for k, v in result.items()}


def target_patterns(cfg: DictConfig) -> list:
    """Regexes of the explanation task's target templates (none when the tasks have no such task)."""
    try:
        task = templated.explanation_config(cfg)
    except ConfigError:
        return []
    return [faithfulness.template_pattern(t) for t in [*task.yes_templates, *task.no_templates]]


def explanation_metrics(records: list[dict[str, Any]], patterns: list | None = None) -> dict[str, float]:
    """Decision, citation, attribution and faithfulness metrics over the explained pairs (``explain/...``).

    ``patterns``: the training target forms; ``template_copy_rate`` is the share of texts that are one of
    them with some titles filled in (a copied form, not necessarily a wrong explanation)."""
    n = len(records)
    m: dict[str, float] = {"explain/n": float(n)}
    if not n:
        return m
    m["explain/decision_acc"] = float(np.mean([r["decision"] == r["answer"] for r in records]))
    m["explain/yes_rate"] = float(np.mean([r["decision"] == "yes" for r in records]))
    if all(
        r.get("p_yes_prompt") is not None for r in records
    ):  # the explain prompt's own P(yes), whatever decided
        m["explain/prompt_decision_acc"] = float(
            np.mean([(r["p_yes_prompt"] > 0.5) == (r["answer"] == "yes") for r in records])
        )
    parsed = [r for r in records if r["text_decision"] is not None]
    m["explain/text_decision_valid"] = len(parsed) / n
    if parsed:
        m["explain/text_decision_acc"] = float(np.mean([r["text_decision"] == r["answer"] for r in parsed]))
        m["explain/text_decision_consistency"] = float(
            np.mean([r["text_decision"] == r["decision"] for r in parsed])
        )
    m["explain/mean_words"] = float(np.mean([len(r["text"].split()) for r in records]))
    m["explain/citation_rate"] = float(np.mean([bool(r["cited"]) for r in records]))
    m["explain/hallucination_rate"] = float(np.mean([bool(r["hallucinated"]) for r in records]))
    with_mentions = [r for r in records if r["mentioned"]]
    if with_mentions:
        m["explain/citation_precision"] = float(
            np.mean([len(r["cited"]) / len(r["mentioned"]) for r in with_mentions])
        )
    cf = [r["counterfactual"] for r in records if "counterfactual" in r]
    m["explain/faithfulness_n"] = float(len(cf))
    if cf:
        for key in ("cited_delta", "random_delta", "cited_abs", "random_abs"):
            m[f"explain/faithfulness_{key}"] = float(np.mean([c[key] for c in cf]))
        m["explain/faithfulness_win_rate"] = float(np.mean([c["cited_wins"] for c in cf]))
        random_abs = m["explain/faithfulness_random_abs"]
        if random_abs > 0:
            m["explain/faithfulness_ratio"] = m["explain/faithfulness_cited_abs"] / random_abs
    agreement = [r["attribution_agreement"] for r in records if r.get("attribution_agreement") is not None]
    if agreement:
        m["explain/attribution_agreement"] = float(np.mean(agreement))
    m["explain/distinct_ratio"] = len({" ".join(r["text"].split()).lower() for r in records}) / n
    if patterns:
        m["explain/template_copy_rate"] = float(
            np.mean([faithfulness.copies_template(r["text"], patterns) for r in records])
        )
    scores = [r["judge_score"] for r in records if r.get("judge_score") is not None]
    if "judge_score" in records[0]:
        m["explain/judge_n"] = float(len(scores))
        if scores:
            m["explain/judge_mean"] = float(np.mean(scores))
            counts = Counter(scores)
            for s in range(4):
                m[f"explain/judge_dist_{s}"] = counts.get(s, 0) / len(scores)
            m |= judge_vs_faithfulness(records)
    return m


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (ties: average ranks); None when either side is constant or n < 3."""
    if len(x) < 3:
        return None

    def ranks(values: list[float]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # average the ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def judge_vs_faithfulness(records: list[dict[str, Any]]) -> dict[str, float]:
    """Does the judge reward what the recommender confirms? Over judged explanations: Spearman's rho
    between the judge score and the attribution agreement, and between the judge score and the cited
    items' counterfactual score change; the mean judge score of explanations whose cited items move the
    recommender's score more than random ones (faithful) and of the others (unfaithful or citing nothing)."""
    judged = [r for r in records if r.get("judge_score") is not None]
    out: dict[str, float] = {}
    pairs = [
        (r["judge_score"], r["attribution_agreement"])
        for r in judged
        if r.get("attribution_agreement") is not None
    ]
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    if rho is not None:
        out["explain/judge_rho_attribution_agreement"] = rho
    pairs = [(r["judge_score"], r["counterfactual"]["cited_abs"]) for r in judged if "counterfactual" in r]
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    if rho is not None:
        out["explain/judge_rho_faithfulness"] = rho
    faithful = [r["judge_score"] for r in judged if r.get("counterfactual", {}).get("cited_wins")]
    other = [r["judge_score"] for r in judged if not r.get("counterfactual", {}).get("cited_wins")]
    if faithful:
        out["explain/judge_mean_faithful"] = float(np.mean(faithful))
    if other:
        out["explain/judge_mean_unfaithful"] = float(np.mean(other))
    return out
