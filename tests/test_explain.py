"""The explain stage on synthetic data with the tiny model: outputs, faithfulness, judge, resume."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recexplainer import artifacts
from recexplainer.cli import run
from recexplainer.explain import faithfulness, regressor
from recexplainer.pipeline import stage_folder
from recexplainer.text import TitleIndex

from .helpers import ALIGN, FakeServer

EXPLAIN = [
    *ALIGN,
    "stage=explain",
    "explain.n_pairs=6",
    "explain.max_new_tokens=12",
    "explain.batch_size=4",
    "explain.score_predictor=none",
]


class LinearRecommender(torch.nn.Module):
    """Score of an item = number of history items equal to (item - 1): history item i drives item i + 1."""

    max_len = 4

    def score(self, seq, users):
        scores = torch.zeros(seq.shape[0], 10)
        for b in range(seq.shape[0]):
            for h in seq[b].tolist():
                if h and h + 1 < 10:
                    scores[b, h + 1] += 1.0
        return scores


def test_citations_split_history_items_from_hallucinations():
    index = TitleIndex(["", "Heat", "Fargo", "Casino", "Alien"])
    cites = faithfulness.citations("Because they loved Fargo and Alien, Casino fits.", index, [2, 1], 3)
    assert (cites.mentioned, cites.cited, cites.hallucinated) == ([2, 4], [2], [4])
    assert cites.precision == 0.5


def test_counterfactual_removal_of_the_driving_item_beats_random():
    model = LinearRecommender()
    out = faithfulness.counterfactual(model, [1, 5, 7], 2, cited=[1], n_random=20, seed=0, key="k")
    assert out["score"] == 1.0 and out["cited_delta"] == 1.0
    assert out["random_abs"] == pytest.approx(out["random_delta"]) and 0 < out["random_abs"] < 1
    assert out["cited_wins"] == 1.0 and out["n_cited"] == 1
    irrelevant = faithfulness.counterfactual(model, [1, 5, 7], 2, cited=[5], n_random=20, seed=0, key="k")
    assert irrelevant["cited_delta"] == 0.0 and irrelevant["cited_wins"] == 0.0


def _hashing_encoder(folder):
    def encode(texts):
        out = np.zeros((len(texts), 32))
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, hash(w) % 32] += 1
        return out

    return encode


def test_score_predictor_finds_signal_that_is_there():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = x @ rng.normal(size=8) + 0.01 * rng.normal(size=60)
    result = regressor.cross_validated_mse(x, y, alpha=0.01)
    assert result["score_mse"] < 0.05 * result["score_mse_mean_baseline"]
    noise = regressor.cross_validated_mse(rng.normal(size=(60, 8)), y, alpha=1.0)
    assert noise["score_mse"] > 0.8 * noise["score_mse_mean_baseline"]


@pytest.mark.slow
def test_explain_stage_writes_explanations_metrics_and_reports(make_cfg, monkeypatch):
    monkeypatch.setattr(regressor, "minilm_encoder", _hashing_encoder)
    monkeypatch.setattr("recexplainer.assets.asset_dir", lambda name, cache=None: Path("/nonexistent"))
    cfg = make_cfg(*EXPLAIN, "explain.score_predictor=minilm")
    folder = run(cfg)
    assert artifacts.is_complete(folder)
    records = [json.loads(line) for line in (folder / "explanations.jsonl").open()]
    assert len(records) == 6 and {r["answer"] for r in records} == {"yes", "no"}
    assert all(0.0 <= r["p_yes"] <= 1.0 and isinstance(r["text"], str) for r in records)
    # the answer starts with the model's own decision (explain.answer_prefix)
    assert all(r["text"].startswith(("Yes, because", "No, because")) for r in records)
    assert all(r["text_decision"] == r["decision"] for r in records)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["explain/n"] == 6 and 0 <= metrics["explain/decision_acc"] <= 1
    assert "explain/citation_rate" in metrics and "explain/judge_mean" not in metrics  # judge=none
    assert metrics["explain/score_mse"] >= 0 and "explain/score_mse_mean_baseline" in metrics
    assert all(isinstance(r["score"], float) for r in records)
    rows = list(csv.reader((folder / "ratings_blind.csv").open()))
    assert rows[0][-1] == "score_0_to_3" and len(rows) == 7
    assert "decision" not in rows[0] and "aligned" not in (folder / "ratings_blind.csv").read_text()
    key = json.loads((folder / "ratings_key.json").read_text())
    assert sorted(key.values()) == sorted(r["id"] for r in records)
    assert "## explain/" in (folder / "report.md").read_text()


@pytest.mark.slow
def test_explain_with_an_openai_compatible_judge_and_resume(make_cfg, monkeypatch):
    server = FakeServer([500, "garbage", "bad", "bad"], default="2")
    try:
        cfg_overrides = [
            *EXPLAIN,
            "judge=openai",
            f"judge.base_url={server.url}",
            "judge.model=fake",
            "judge.backoff_s=0.01",
            "judge.concurrency=1",
        ]
        cfg = make_cfg(*cfg_overrides)
        from recexplainer.explain import generate

        original, calls = generate.explain_batch, {"n": 0}

        def dying(predictor, rows, *args):
            calls["n"] += len(rows)
            if calls["n"] > 4:
                raise RuntimeError("killed")
            return original(predictor, rows, *args)

        monkeypatch.setattr(generate, "explain_batch", dying)
        with pytest.raises(RuntimeError, match="killed"):
            run(cfg)
        generated = (stage_folder(cfg, "explain") / "generated.jsonl").read_text().splitlines()
        assert len(generated) == 4
        calls["n"] = -100
        folder = run(cfg)
        assert calls["n"] == -100 + 2  # only the two missing pairs were generated
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["explain/judge_n"] == 5 and metrics["explain/judge_mean"] == 2.0  # one unparsable
        assert metrics["explain/judge_unparsable"] == 1 and metrics["explain/judge_dist_2"] == 1.0
        records = [json.loads(line) for line in (folder / "explanations.jsonl").open()]
        failed = [r for r in records if r["judge_error"]]
        assert len(failed) == 1 and failed[0]["judge_reply"] == "bad"  # what the judge said is kept
        assert (folder / "judge_scores.png").stat().st_size > 1000
        cached = len(server.requests)
        artifacts.clear_complete(folder)
        run(cfg)  # judgments come from the cache, the unparsable reply too (a deterministic judge repeats it)
        assert len(server.requests) == cached
        folder = stage_folder(cfg, "explain")
        artifacts.clear_complete(folder)
        run(make_cfg(*[o for o in cfg_overrides], "judge.retry_unparsable=true"))  # same key: asks it again
        assert len(server.requests) == cached + 1
    finally:
        server.close()


@pytest.mark.slow
def test_explanations_and_predictions_log_to_wandb_offline(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    folder = run(make_cfg(*EXPLAIN, "logger=wandb"))
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert runs and all(list(r.glob("*.wandb")) for r in runs)
    assert "explain/n" in json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_local_judge_of_the_unaligned_model_reuses_its_llm(make_cfg, monkeypatch):
    from recexplainer.aligner import setup

    calls = {"n": 0}
    original = setup.load_base_llm

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(setup, "load_base_llm", counting)
    cfg = make_cfg(*EXPLAIN, "explain.model=unaligned", "judge=local")
    folder = run(cfg)
    assert calls["n"] == 1  # the explaining model is the judge: loaded once
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["explain/judge_n"] + metrics["explain/judge_unparsable"] == 6
    assert metrics["explain/judge_unparsable"] == 0  # digit scoring always gives a score


@pytest.mark.slow
def test_explain_runs_the_llm_under_bf16_autocast_with_cpu_bf16(make_cfg, monkeypatch):
    """trainer=cpu_bf16: the explain stage's LLM runs under bf16 autocast on the CPU, as the Trainer-driven
    stages do (bf16-mixed), and writes its explanations."""
    from recexplainer.explain import generate

    seen = []
    explain = generate.explain_batch

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return explain(*args, **kwargs)

    monkeypatch.setattr(generate, "explain_batch", spy)
    folder = run(make_cfg(*EXPLAIN, "trainer=cpu_bf16"))
    assert seen and all(seen)
    assert len((folder / "explanations.jsonl").read_text().splitlines()) == 6


def test_judge_scores_are_compared_with_the_faithfulness_metrics():
    """A judge that rewards faithful explanations shows a positive rank correlation with the attribution
    agreement and the counterfactual change; explanations citing nothing count as unfaithful."""
    from recexplainer.explain.metrics import judge_vs_faithfulness, spearman

    def record(score, agreement, cited_abs, wins):
        r = {"judge_score": score, "attribution_agreement": agreement}
        if agreement is not None:
            r["counterfactual"] = {"cited_abs": cited_abs, "cited_wins": wins}
        return r

    records = [
        record(3, 1.0, 2.0, 1.0),
        record(2, 0.5, 1.0, 1.0),
        record(0, 0.0, 0.1, 0.0),
        record(1, None, 0, 0),
    ]
    m = judge_vs_faithfulness(records)
    assert m["explain/judge_rho_attribution_agreement"] == pytest.approx(1.0)
    assert m["explain/judge_rho_faithfulness"] == pytest.approx(1.0)
    assert m["explain/judge_mean_faithful"] == 2.5 and m["explain/judge_mean_unfaithful"] == 0.5
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([2, 2, 2], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # average ranks of ties
    assert judge_vs_faithfulness([record(2, 1.0, 1.0, 1.0)]) == {"explain/judge_mean_faithful": 2.0}


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["interest_prompt", "explain_prompt", "auto"])
def test_the_decision_comes_from_the_task3_question_or_the_explain_prompt(make_cfg, monkeypatch, decision):
    """interest_prompt: the LLM's answer to the task-3 question about the same pair decides and the
    explanation follows it; explain_prompt: the explain prompt's own P(yes); auto (the default) with an aligner
    that has an item head: the head's reading of the task-3 question. Both accuracies are reported."""
    from recexplainer.evaluate.predictors import ItemHeadPredictor, LLMPredictor

    asked, head_asked = [], []

    def task3(self, kind, rows):
        assert kind == "interest"
        asked.extend(r["prompt"] for r in rows)
        return [{"p_yes": 0.9} for _ in rows]

    def head(self, kind, rows):
        assert kind == "interest"
        head_asked.extend(rows)
        return [{"p_yes": 0.8} for _ in rows]

    monkeypatch.setattr(LLMPredictor, "predict", task3)
    monkeypatch.setattr(ItemHeadPredictor, "predict", head)
    folder = run(make_cfg(*EXPLAIN, f"explain.decision={decision}", "explain.calibration_examples=0"))
    records = [json.loads(line) for line in (folder / "explanations.jsonl").open()]
    metrics = json.loads((folder / "metrics.json").read_text())
    protocol = json.loads((folder / "protocol.json").read_text())
    assert "explain/prompt_decision_acc" in metrics
    own = [r["p_yes_prompt"] > 0.5 for r in records]
    if decision == "interest_prompt":
        assert len(asked) == 6 and not any("raised most by" in p or "explain" in p for p in asked)
        assert all(r["p_yes"] == 0.9 and r["text"].startswith("Yes, because") for r in records)
        assert metrics["explain/yes_rate"] == 1.0 and metrics["explain/decision_acc"] == 0.5  # 3 yes of 6
    elif decision == "auto":  # the tiny aligner has the default's item head: it decides
        assert protocol["decision_rule"] == "item_head" and asked == []
        assert len(head_asked) == 6 and not any("raised most by" in r["prompt"] for r in head_asked)
        # the head reads the pair's task-3 question with what it needs: the prefix to exclude, the asked item
        assert [r["labels"]["item"] for r in sorted(head_asked, key=lambda r: r["id"])] == [
            r["item"] for r in sorted(records, key=lambda r: r["id"])
        ]
        assert all(r["history"] for r in head_asked)
        assert all(r["p_yes"] == 0.8 and r["text"].startswith("Yes, because") for r in records)
    else:
        assert asked == [] and [r["p_yes"] == r["p_yes_prompt"] for r in records] == [True] * 6
        assert [r["decision"] == "yes" for r in records] == own
    assert protocol["decision_rule"] == ("item_head" if decision == "auto" else decision)


def test_auto_decides_by_the_item_head_where_the_aligner_has_one():
    from types import SimpleNamespace

    from recexplainer.config.validate import ConfigError
    from recexplainer.explain.stage import decision_maker, decision_rule

    from .helpers import compose_config

    cfg = compose_config([])
    assert cfg.explain.decision == "auto"
    with_head = SimpleNamespace(model=SimpleNamespace(has_item_head=True))
    without = SimpleNamespace(model=SimpleNamespace(has_item_head=False))
    assert decision_rule(cfg, with_head) == "item_head" and decision_rule(cfg, without) == "interest_prompt"
    assert decision_maker(cfg, without) is without  # the LLM itself decides
    pinned = compose_config(["explain.decision=interest_prompt"])
    assert (
        decision_rule(pinned, with_head) == "interest_prompt"
        and decision_maker(pinned, with_head) is with_head
    )
    with pytest.raises(ConfigError, match="has none"):
        decision_maker(compose_config(["explain.decision=item_head"]), without)


@pytest.mark.slow
def test_an_unreachable_judge_stops_the_stage_and_keeps_the_explanations(make_cfg):
    """Every request fails: the stage stops with a clear error instead of metrics without the judge; the
    explanations are kept, so the rerun once the endpoint answers generates nothing again."""
    from recexplainer import cli
    from recexplainer.explain import generate
    from recexplainer.explain.judge import JudgeFailed

    server = FakeServer([], default=500)
    try:
        cfg = make_cfg(
            *EXPLAIN,
            "judge=openai",
            "judge.model=fake",
            f"judge.base_url={server.url}",
            "judge.backoff_s=0.01",
            "judge.max_retries=1",
        )
        with pytest.raises(JudgeFailed, match=r"6 of 6 judgments by .* failed .*HTTP 500"):
            run(cfg)
        assert len((stage_folder(cfg, "explain") / "generated.jsonl").read_text().splitlines()) == 6
        with pytest.raises(SystemExit) as exit_info:  # the command line: exit code 2, no traceback
            cli._run_and_report(cfg)
        assert exit_info.value.code == 2
        server.default = "2"  # the endpoint answers again
        calls = []
        original = generate.explain_batch
        generate.explain_batch = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            folder = run(cfg)
        finally:
            generate.explain_batch = original
        assert calls == []  # every explanation came from generated.jsonl
        assert json.loads((folder / "metrics.json").read_text())["explain/judge_n"] == 6
    finally:
        server.close()


def test_judge_max_failed_share_is_a_share(make_cfg):
    from recexplainer.config import ConfigError, validate
    from recexplainer.pipeline import STAGES

    with pytest.raises(ConfigError, match=r"judge.max_failed_share=1.5 must be in \[0, 1\]"):
        validate(make_cfg("judge.max_failed_share=1.5"), tuple(STAGES))
