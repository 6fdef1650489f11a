"""The default run is the whole method: every stage, the explanation task, the report and the summary."""

import json
import re

import pytest

from recexplainer import artifacts
from recexplainer.alignment_data.explanations import evidence_text
from recexplainer.cli import run
from recexplainer.data.dataset import SequentialData
from recexplainer.pipeline import stage_folder
from recexplainer.recommender import load_recommender
from recexplainer.recommender.attribution import leave_one_out, top_attributed
from recexplainer.report.summary import SUMMARY_FILE, summary

from .helpers import ALIGN, TINY, TINY_SASREC, compose_config

RUN = [
    *[o for o in ALIGN if not o.startswith("stage=")],
    "tasks.explanation.max_eval=8",
    "evaluation.tasks=[retrieval,interest]",
    "evaluation.max_examples=4",
    "evaluation.max_examples_per_task={}",
    "evaluation.baselines=[popularity,random]",
    "explain.n_pairs=6",
    "explain.max_new_tokens=12",
    "explain.batch_size=4",
    "explain.score_predictor=none",
]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One whole-method run of the default config, shrunk (tiny LLM, synthetic data); its printed output."""
    root = tmp_path_factory.mktemp("default")
    cfg = compose_config([f"paths.artifacts={root}", *TINY, *TINY_SASREC, *RUN])
    return cfg, run(cfg)


def test_the_default_config_is_the_whole_method_with_the_explanation_task():
    cfg = compose_config([])
    assert cfg.stage == "report" and cfg.prompt.mode == "hybrid" and cfg.llm.name == "smollm2_135m"
    assert "explanation" in cfg.aligner.train_tasks
    # the prompt carries the recommender's evidence: the items an explanation cites are in front of the LLM
    assert "{evidence}" in cfg.explain.template and cfg.tasks.explanation.evidence == cfg.explain.evidence
    assert cfg.tasks.explanation.templates == [cfg.explain.template]  # trained on the explain prompt itself
    prefix = cfg.explain.answer_prefix
    assert all(
        t.startswith(prefix)
        for t in [*cfg.tasks.explanation.yes_templates, *cfg.tasks.explanation.no_templates]
    )
    assert len(cfg.tasks.explanation.yes_templates) >= 8 and len(cfg.tasks.explanation.no_templates) >= 8


@pytest.mark.slow
def test_report_stage_runs_every_stage_writes_the_report_and_prints_the_summary(default_run, capsys):
    cfg, explain_folder = default_run
    for stage in ("data", "recommender", "alignment_data", "aligner", "evaluate", "explain"):
        assert artifacts.is_complete(stage_folder(cfg, stage))
    assert explain_folder == stage_folder(cfg, "explain")
    report = stage_folder(cfg, "data").parent.parent / "report"
    html = report / "index.html"
    assert html.is_file() and (report / SUMMARY_FILE).is_file()
    text = (report / SUMMARY_FILE).read_text()
    assert f"Report: {html}" in text
    # every number of the summary is a metrics-file value
    folders = {s: stage_folder(cfg, s) for s in ("recommender", "evaluate", "explain")}
    metrics = {s: json.loads((f / "metrics.json").read_text()) for s, f in folders.items()}
    line = next(x for x in text.splitlines() if x.strip().startswith("NDCG@10") or "NDCG@10" in x)
    assert f"NDCG@10 {metrics['recommender']['test/ndcg@10']:.3f}" in line
    m = metrics["evaluate"]
    header = next(x for x in text.splitlines() if "aligned LLM" in x)
    assert "item head" in header  # the default aligner has one: task 1 is also read off it
    acc = next(x for x in text.splitlines() if x.strip().startswith("task 3 acc")).split()
    # the item head answers task 3 too: its cell is the head's own reading
    assert [a for a in acc[3:] if a != "-"] == [
        f"{m['task3/acc']:.3f}",
        f"{m['head/task3/acc']:.3f}",
        f"{m['baseline/popularity/task3/acc']:.3f}",
        f"{m['baseline/random/task3/acc']:.3f}",
    ]
    # the default explains with the item head deciding, and the summary says so
    assert "decided by              the item head" in text
    hr = next(x for x in text.splitlines() if x.strip().startswith("task 1")).split()
    assert f"{m['task1/hr@5']:.3f}" in hr and f"{m['head/task1/hr@5']:.3f}" in hr
    cites = next(x for x in text.splitlines() if "cites the history" in x)
    assert cites.split()[-1] == f"{metrics['explain']['explain/citation_rate']:.3f}"
    assert summary(cfg, folders, html) == text


@pytest.mark.slow
def test_a_second_default_run_reuses_every_stage(default_run, monkeypatch, capsys):
    cfg, _ = default_run

    def fail(*args, **kwargs):
        raise AssertionError("a cached stage ran again")

    for module in (
        "recommender.stage",
        "alignment_data.stage",
        "aligner.stage",
        "evaluate.stage",
        "explain.stage",
    ):
        monkeypatch.setattr(f"recexplainer.{module}.run", fail)
    run(cfg)
    assert "Report:" in capsys.readouterr().out


@pytest.mark.slow
def test_explanation_examples_cite_the_recommenders_top_attributions(default_run):
    cfg, _ = default_run
    folder = stage_folder(cfg, "alignment_data")
    data = SequentialData.load(stage_folder(cfg, "data"))
    model = load_recommender(stage_folder(cfg, "recommender"))
    rows = [json.loads(x) for x in (folder / "examples" / "explanation.train.jsonl").open()]
    assert rows and {r["labels"]["answer"] for r in rows} == {"yes", "no"}
    _, attributions = leave_one_out(model, [r["history"] for r in rows], [r["labels"]["item"] for r in rows])
    for row, values in zip(rows, attributions, strict=True):
        # the prompt is the explain stage's: the last title (text_hist_len=1) and the recommender's evidence,
        # which lists the items the target cites with their attributions
        answer = row["labels"]["answer"]
        assert row["target"].startswith("Yes, because" if answer == "yes" else "No, because")
        cited = top_attributed(row["history"], values, answer, cfg.tasks.explanation.n_cited)
        assert row["labels"]["cited"] == cited
        assert all(data.titles[c] in row["target"] for c in cited)
        n = cfg.tasks.explanation.n_cited
        evidence = evidence_text(cfg.explain.evidence, row["history"], values, data.titles, n)
        assert row["prompt"].startswith("Would the recommender suggest <item> ") and evidence in row["prompt"]
        assert f"<user> {data.titles[row['history'][-1]]}?" in row["prompt"]
        up, down = evidence.split("raised most by ")[1].split("; it is lowered most by ")
        side = up if answer == "yes" else down
        assert side == "no item." or all(data.titles[c] in side for c in cited)
        band = row["labels"]["rank"] / row["labels"]["n_ranked"]
        assert band < 0.2 if answer == "yes" else band >= 0.5
    interest = [json.loads(x) for x in (folder / "examples" / "interest.train.jsonl").open()]
    assert all(len(re.findall("; ", r["prompt"])) == 0 for r in interest)  # other tasks: one title only


@pytest.mark.slow
@pytest.mark.parametrize("model", ["template", "template_random"])
def test_template_explainers_give_the_ceiling_and_the_floor_without_an_llm(default_run, model):
    cfg, _ = default_run
    root = stage_folder(cfg, "data").parent.parent
    cfg = compose_config(
        [f"paths.artifacts={root}", *TINY, *TINY_SASREC, *RUN, "stage=explain", f"explain.model={model}"]
    )
    folder = run(cfg)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["explain/decision_acc"] == 1.0 and metrics["explain/hallucination_rate"] == 0.0
    assert metrics["explain/template_copy_rate"] == 1.0
    if model == "template":
        assert metrics["explain/citation_rate"] == 1.0 and metrics["explain/attribution_agreement"] == 1.0
        assert not stage_folder(cfg, "aligner").joinpath("unused").exists()


def test_task3_answers_on_the_explained_pairs(tmp_path):
    from recexplainer.report.summary import task3_on_explain_pairs

    (tmp_path / "ev" / "predictions").mkdir(parents=True)
    (tmp_path / "ex").mkdir()
    preds = [("interest/test/u1-pos", 0.9), ("interest/test/u1-neg", 0.6), ("interest/test/u2-pos", 0.2)]
    (tmp_path / "ev" / "predictions" / "aligned.jsonl").write_text(
        "".join(json.dumps({"id": i, "task": "interest", "p_yes": p}) + "\n" for i, p in preds)
    )
    explained = [
        ("explain/test/u1-pos", "yes", "yes"),
        ("explain/test/u1-neg", "no", "no"),
        ("explain/test/u3-pos", "yes", "no"),
    ]
    (tmp_path / "ex" / "explanations.jsonl").write_text(
        "".join(json.dumps({"id": i, "answer": a, "decision": d}) + "\n" for i, a, d in explained)
    )
    same = task3_on_explain_pairs(tmp_path / "ev", tmp_path / "ex")
    assert same == {"n": 2.0, "task3_acc": 0.5, "decision_agreement": 0.5}  # u3 has no task-3 answer


def test_template_explainer_without_the_explanation_task_is_a_config_error():
    from recexplainer.config import ConfigError

    cfg = compose_config(["~tasks.explanation", "stage=explain", "explain.model=template"])
    with pytest.raises(ConfigError, match="no task of kind 'explanation'"):
        stage_folder(cfg, "explain")
