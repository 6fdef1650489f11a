"""The LLM's yes/no decision threshold, fit on validation examples: the fit, the evaluate stage's calibrated
metrics next to the reference ones, the explain stage's decisions, and the config checks."""

import json

import pytest

from recexplainer.cli import run
from recexplainer.config import ConfigError
from recexplainer.config.validate import validate
from recexplainer.evaluate import calibration
from recexplainer.evaluate.predictors import LLMPredictor
from recexplainer.evaluate.stage import calibrated_metrics
from recexplainer.pipeline import STAGES

from .helpers import ALIGN, compose_config


@pytest.mark.parametrize("rule", calibration.RULES)
def test_the_threshold_separates_a_biased_but_well_ranked_model(rule):
    # every yes below 0.5: the reference rule says no to all of them; the fitted threshold separates them
    p = [0.30, 0.35, 0.40, 0.10, 0.15, 0.20]
    yes = [True, True, True, False, False, False]
    t = calibration.fit_threshold(p, yes, rule)
    assert t == pytest.approx(0.25)
    stats = calibration.summary(p, yes, t)
    assert stats["valid_acc"] == 0.5 and stats["valid_acc/calibrated"] == 1.0 and stats["valid_n"] == 6


def test_the_prior_rule_says_yes_as_often_as_the_labels_and_keeps_half_when_it_does():
    # two yes labels of five: the threshold lets exactly the two largest through, whatever their labels
    p = [0.9, 0.2, 0.6, 0.4, 0.1]
    t = calibration.prior_threshold(p, [False, True, False, True, False])
    assert t == pytest.approx(0.5) and sum(x > t for x in p) == 2  # 0.5 already gives two yes answers
    t = calibration.prior_threshold([0.45, 0.44, 0.30, 0.20], [True, True, False, False])
    assert t == pytest.approx(0.37)
    assert calibration.prior_threshold([0.7, 0.6], [False, False]) == 0.7  # no yes label: nobody above
    assert calibration.prior_threshold([0.3, 0.2], [True, True]) < 0.2  # only yes labels: everybody above


def test_the_accuracy_rule_keeps_half_for_a_calibrated_model_and_breaks_ties_towards_half():
    assert calibration.accuracy_threshold([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 0.5
    # one constant answer: every threshold is as accurate as saying always yes or always no; 0.5 stays
    assert calibration.accuracy_threshold([0.7, 0.7], [True, False]) == 0.5
    t = calibration.accuracy_threshold([0.6, 0.8], [True, True])
    assert t == 0.5 or t < 0.6


def test_the_fit_refuses_empty_or_mismatched_input_and_unknown_rules():
    with pytest.raises(ValueError, match="no examples"):
        calibration.fit_threshold([], [])
    with pytest.raises(ValueError, match="labels"):
        calibration.fit_threshold([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="prior, accuracy"):
        calibration.fit_threshold([0.1, 0.2], [True, False], "median")


def test_calibrated_metrics_read_the_stored_probabilities():
    rows = [{"id": f"x{i}", "labels": {"answer": a}} for i, a in enumerate(["yes", "yes", "no", "no"])]
    records = [{"id": f"x{i}", "p_yes": p} for i, p in enumerate([0.4, 0.3, 0.2, 0.1])]
    assert calibrated_metrics(rows, records, 0.25) == {"acc/calibrated": 1.0, "yes_rate/calibrated": 0.5}
    assert calibrated_metrics(rows, records, 0.35) == {"acc/calibrated": 0.75, "yes_rate/calibrated": 0.25}
    assert calibrated_metrics(rows, [], 0.25) == {}


def test_config_checks_name_the_knob():
    with pytest.raises(ConfigError, match="evaluation.calibration_examples=-1"):
        validate(compose_config(["evaluation.calibration_examples=-1"]), tuple(STAGES))
    with pytest.raises(ConfigError, match="explain.calibration_examples=0"):
        validate(compose_config(["explain.split=valid"]), tuple(STAGES))
    validate(compose_config(["explain.split=valid", "explain.calibration_examples=0"]), tuple(STAGES))
    with pytest.raises(ConfigError, match="evaluation.calibration_examples=0"):
        validate(compose_config(["evaluation.split=valid"]), tuple(STAGES))
    with pytest.raises(ConfigError, match="explain.calibration='median'"):
        validate(compose_config(["explain.calibration=median"]), tuple(STAGES))


def _biased(original):
    """An LLM whose P(yes) ranks perfectly but sits below 0.5: 0.3 for the recommender's yes, 0.1 for its no."""

    def predict(self, kind, rows):
        if kind not in ("interest", "interest_hard"):
            return original(self, kind, rows)
        return [
            {"outputs": [], "titles": [], "items": [], "p_yes": 0.3 if r["id"].endswith("-pos") else 0.1}
            for r in rows
        ]

    return predict


@pytest.mark.slow
def test_the_evaluate_stage_reports_calibrated_decisions_next_to_the_reference_ones(make_cfg, monkeypatch):
    monkeypatch.setattr(LLMPredictor, "predict", _biased(LLMPredictor.predict))
    cfg = make_cfg(
        *ALIGN,
        "stage=evaluate",
        "evaluation.tasks=[interest,interest_hard]",
        "evaluation.baselines=[]",
        "evaluation.batch_size=4",
    )
    folder = run(cfg)
    metrics = json.loads((folder / "metrics.json").read_text())
    for task in ("task3", "task3_hard"):
        assert metrics[f"{task}/acc"] == 0.5 and metrics[f"{task}/yes_rate"] == 0.0  # the reference rule
        assert metrics[f"{task}/threshold"] == pytest.approx(0.2)
        assert metrics[f"{task}/valid_acc"] == 0.5 and metrics[f"{task}/valid_acc/calibrated"] == 1.0
        assert metrics[f"{task}/acc/calibrated"] == 1.0 and metrics[f"{task}/yes_rate/calibrated"] == 0.5
        assert metrics[f"{task}/valid_n"] > 0
    assert "calibrated" in json.loads((folder / "protocol.json").read_text())["calibration"]
    off = run(
        make_cfg(
            *ALIGN,
            "stage=evaluate",
            "evaluation.tasks=[interest]",
            "evaluation.baselines=[]",
            "evaluation.calibration_examples=0",
        )
    )
    assert not any(
        "calibrated" in k or "threshold" in k for k in json.loads((off / "metrics.json").read_text())
    )


@pytest.mark.slow
def test_the_explain_stage_decides_at_the_fitted_threshold(make_cfg, monkeypatch):
    from .test_explain import EXPLAIN

    monkeypatch.setattr(LLMPredictor, "predict", _biased(LLMPredictor.predict))
    folder = run(make_cfg(*EXPLAIN, "explain.decision=interest_prompt"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["explain/decision_threshold"] == pytest.approx(0.2)
    assert metrics["explain/decision_valid_acc/calibrated"] == 1.0
    assert metrics["explain/decision_acc"] == 1.0 and metrics["explain/decision_acc/reference"] == 0.5
    records = [json.loads(line) for line in (folder / "explanations.jsonl").open()]
    assert all(r["decision"] == r["answer"] for r in records)
    # the explanation starts from the calibrated decision
    assert all(
        r["text"].startswith("Yes, because" if r["answer"] == "yes" else "No, because") for r in records
    )


@pytest.mark.slow
def test_explain_and_evaluate_decide_task3_at_the_same_threshold(make_cfg):
    """explain.decision=interest_prompt: the explain stage fits its threshold on the evaluate stage's task-3
    calibration examples, so both stages decide the same question at the same threshold."""
    from .test_explain import EXPLAIN

    explained = run(make_cfg(*EXPLAIN, "explain.decision=interest_prompt"))
    evaluated = run(
        make_cfg(*ALIGN, "stage=evaluate", "evaluation.tasks=[interest]", "evaluation.baselines=[]")
    )
    explain_metrics = json.loads((explained / "metrics.json").read_text())
    task3 = json.loads((evaluated / "metrics.json").read_text())
    assert explain_metrics["explain/decision_threshold"] == task3["task3/threshold"]
    assert explain_metrics["explain/decision_valid_n"] == task3["task3/valid_n"]
    assert explain_metrics["explain/decision_valid_acc/calibrated"] == task3["task3/valid_acc/calibrated"]
