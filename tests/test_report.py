"""The report aggregates evaluate folders into one table, baselines once per dataset."""

import json

import pytest
import yaml

from recexplainer.artifacts import MARKER
from recexplainer.report import budget
from recexplainer.report.tables import collect, write_report


def _stage_folder(root, stage, key, mode, metrics, **sections):
    """A complete stage folder with the config sections the report reads."""
    folder = root / stage / key
    folder.mkdir(parents=True)
    cfg = {
        "dataset": {"name": "ml-100k"},
        "llm": {"name": "smollm2_135m"},
        "alignment": {"mode": mode},
        **sections,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / MARKER).write_text("")
    return folder


def _folder(root, key, mode, model, metrics, baselines=("popularity",)):
    evaluation = {"model": model, "split": "test", "baselines": list(baselines), "few_shot": 0}
    return _stage_folder(root, "evaluate", key, mode, metrics, evaluation=evaluation)


def test_report_lists_models_and_each_baseline_once(tmp_path):
    _folder(tmp_path, "a", "hybrid", "aligned", {"task1/hr@5": 0.5, "baseline/popularity/task1/hr@5": 0.04})
    _folder(
        tmp_path, "b", "intention", "aligned", {"task1/hr@5": 0.25, "baseline/popularity/task1/hr@5": 0.04}
    )
    _folder(tmp_path, "c", "behavior", "unaligned", {"task3/acc": 0.5}, baselines=())
    incomplete = _folder(tmp_path, "d", "behavior", "aligned", {"task1/hr@5": 0.9})
    (incomplete / MARKER).unlink()
    md, csv_path, png = write_report(tmp_path, tmp_path / "report")
    assert png.name == "alignment_ml_100k_test.png" and png.stat().st_size > 1000
    text = md.read_text()
    assert "| RecExplainer-H (smollm2_135m) | 0.5000 |" in text
    assert "| RecExplainer-I (smollm2_135m) | 0.2500 |" in text
    assert "no alignment, zero-shot" in text and "0.9000" not in text  # incomplete folders are skipped
    assert text.count("baseline: popularity") == 1
    assert len(csv_path.read_text().splitlines()) == 1 + 4


def test_report_puts_explanations_of_the_same_pairs_side_by_side(tmp_path):
    for key, mode, model, text in [
        ("x", "hybrid", "aligned", "Yes, Heat fits."),
        ("y", "behavior", "unaligned", "No."),
    ]:
        folder = _stage_folder(
            tmp_path,
            "explain",
            key,
            mode,
            {"explain/decision_acc": 0.75},
            explain={"model": model, "split": "test"},
            judge={"name": "none"},
        )
        record = {
            "id": "explain/test/u1-pos",
            "answer": "yes",
            "rank": 3,
            "decision": "yes",
            "p_yes": 0.8,
            "text": text,
        }
        (folder / "explanations.jsonl").write_text(json.dumps(record) + "\n")
        (folder / MARKER).write_text("")
    paths = write_report(tmp_path, tmp_path / "report")
    assert [p.name for p in paths] == ["explanations.md", "explanations.csv"]  # no evaluate folders
    text = paths[0].read_text()
    assert "| RecExplainer-H (smollm2_135m) | 0.7500 |" in text
    assert "### explain/test/u1-pos" in text and "'Yes, Heat fits.'" in text and "'No.'" in text


@pytest.mark.slow
def test_report_keeps_the_newest_of_repeated_rows_and_names_the_others(tmp_path):
    import os

    old = _folder(tmp_path, "old", "hybrid", "aligned", {"task1/hr@5": 0.1})
    new = _folder(tmp_path, "new", "hybrid", "aligned", {"task1/hr@5": 0.3})
    os.utime(old / MARKER, (1_000_000, 1_000_000))
    os.utime(new / MARKER, (2_000_000, 2_000_000))
    md = write_report(tmp_path, tmp_path / "report")[0]
    text = md.read_text()
    assert "| RecExplainer-H (smollm2_135m) | 0.3000 |" in text and "| 0.1000 |" not in text
    assert "Older folders repeating a row" in text and str(old) in text


@pytest.mark.slow
def test_report_plots_training_curves_across_resumed_logs_and_judge_scores(tmp_path):
    from recexplainer.report.tables import read_curves

    aligner = _stage_folder(tmp_path, "aligner", "al", "intention", {}, aligner={"lr": 5e-4})
    for version, text in [
        ("version_0", "epoch,step,train/loss,valid/loss\n0,9,3.5,\n0,19,2.0,\n"),
        ("version_1", "epoch,step,train/loss,valid/loss\n0,19,1.9,\n0,29,1.2,\n0,29,,1.4\n"),  # resumed
    ]:
        (aligner / "logs" / version).mkdir(parents=True)
        (aligner / "logs" / version / "metrics.csv").write_text(text)
    curves = read_curves(aligner)
    assert curves["train/loss"] == [(9.0, 3.5), (19.0, 1.9), (29.0, 1.2)]  # the resumed run's step 19 wins
    assert curves["valid/loss"] == [(29.0, 1.4)]
    judged = {f"explain/judge_dist_{s}": share for s, share in enumerate([0.1, 0.2, 0.3, 0.4])}
    _stage_folder(
        tmp_path,
        "explain",
        "ex",
        "hybrid",
        {"explain/judge_n": 10.0, "explain/judge_mean": 2.0, **judged},
        explain={"model": "aligned", "split": "test"},
        judge={"name": "local"},
    )
    paths = {p.name: p for p in write_report(tmp_path, tmp_path / "report")}
    assert "training_aligner.png" in paths and paths["training_aligner.png"].stat().st_size > 1000
    assert "judge_scores.png" in paths and "training_recommender.png" not in paths  # no recommender logs


def test_summary_shows_the_other_scoring_where_it_differs(tmp_path):
    from recexplainer.report.summary import summary

    folder = tmp_path / "evaluate"
    folder.mkdir()
    metrics = {
        "task1/hr@5": 0.12,
        "task1/hr@5/lenient": 0.125,
        "baseline/popularity/task1/hr@5": 0.04,
        "baseline/popularity/task1/hr@5/lenient": 0.04,
        "task3/acc": 0.8,
        "task3/acc/lenient": 0.8,
        "baseline/popularity/task3/acc": 0.8075,
        "baseline/popularity/task3/acc/lenient": 0.8075,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    cfg = {
        "dataset": {"name": "ml-100k"},
        "recommender": {"name": "sasrec"},
        "llm": {"name": "smollm2"},
        "alignment": {"mode": "hybrid"},
        "evaluation": {"split": "test", "baselines": ["popularity"], "scoring": "recai"},
    }
    lines = summary(cfg, {"evaluate": folder}).splitlines()
    row = lines.index(next(x for x in lines if x.strip().startswith("task 1 HR@5")))
    assert lines[row].split()[-2:] == ["0.120", "0.040"]
    assert "(lenient scoring)" in lines[row + 1] and lines[row + 1].split()[-2:] == ["0.125", "0.040"]
    assert not any("lenient" in x for x in lines[row + 2 :])  # task 3: the same under both scorings


def test_a_budget_sweep_gives_a_curve_table_plot_and_html_section(tmp_path):
    """Aligned evaluate folders that differ only in aligner.budget_minutes form one curve, points sorted by
    budget; a folder without a budget is not on it, and a report without a sweep has no such section."""
    evaluation = {"model": "aligned", "split": "test", "baselines": [], "few_shot": 0}
    for key, minutes, acc in (("b", 25, 0.75), ("a", 10, 0.625), ("c", None, 0.875)):
        _stage_folder(
            tmp_path / "sweep", "evaluate", key, "hybrid",
            {"task3/acc": acc, "task1/hr@5": acc / 5, "head/task1/hr@5": acc / 2,
             "head/task3/acc/calibrated": acc + 0.0625, "head/task2/ndcg@5": 0.9375},
            evaluation=evaluation, aligner={"budget_minutes": minutes},
        )  # fmt: skip
    paths = write_report(tmp_path / "sweep", tmp_path / "sweep" / "report")
    names = [p.name for p in paths]
    assert "budget.md" in names and "budget_0.png" in names and "budget_1.png" not in names
    table = (tmp_path / "sweep" / "report" / "budget.md").read_text()
    assert table.index("| 10 | 0.1250") < table.index("| 25 | 0.1500") and "0.8750" not in table
    assert "T1 HR@5, item head" in table and "| 0.3125 |" in table  # task 1 read off the item head too
    assert "T3 Acc, item head (calibrated)" in table and "| 0.6875 |" in table  # and task 3, calibrated
    assert "T2 NDCG@5, item head" in table and "| 0.9375 |" in table  # and task 2
    assert "T3-hard Acc, item head" not in table  # a column no point has is left out
    page = (tmp_path / "sweep" / "report" / "index.html").read_text()
    assert 'id="alignment-vs-training-budget"' in page
    assert f'data-folder="{tmp_path / "sweep" / "evaluate" / "a"}"' in page and 'data-value="0.625"' in page
    assert "Explanation quality" not in table  # no explain folders yet

    _folder(tmp_path / "plain", "a", "hybrid", "aligned", {"task3/acc": 0.5})
    write_report(tmp_path / "plain", tmp_path / "plain" / "report")
    assert "training-budget" not in (tmp_path / "plain" / "report" / "index.html").read_text()


def test_a_budget_curve_lists_its_baselines_and_plots_the_strongest(tmp_path, monkeypatch):
    """The baselines the curve's evaluate folders hold are rows under the budget rows (in the curve's columns, the
    first point's values, random first, the student last), in budget.md and the HTML table (keyed to the
    metrics file's baseline/<name>/ entry); the plot draws the strongest baseline of each metric dashed in the
    metric's colour. Explanation curves have no baselines."""
    evaluation = {"model": "aligned", "split": "test", "baselines": ["student", "random"], "few_shot": 0}
    for key, minutes, acc in (("b", 25, 0.75), ("a", 10, 0.625)):
        _stage_folder(
            tmp_path, "evaluate", key, "hybrid",
            {"task3/acc": acc, "task1/hr@5": acc / 5, "baseline/student/task1/hr@5": 0.78125,
             "baseline/student/task3/acc": 0.8125, "baseline/student/fit_s": 3.0,
             "baseline/random/task3/acc": 0.5 if key == "a" else 0.4375},
            evaluation=evaluation, aligner={"budget_minutes": minutes},
        )  # fmt: skip
    points = budget.curves(collect(tmp_path, "evaluate"), "evaluate")
    (only,) = points.values()
    found = budget.baselines(only, "evaluate")
    assert [(n, v) for n, v, _ in found] == [
        ("random", {"task3/acc": 0.5}),  # the first point's (budget 10) value
        ("student", {"task1/hr@5": 0.78125, "task3/acc": 0.8125}),  # fit_s is not a curve column
    ]
    assert found[0][2] == str(tmp_path / "evaluate" / "a") and budget.baselines(only, "explain") == []

    import matplotlib.axes

    lines_drawn = []
    real_axhline = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        lines_drawn.append((y, kwargs.get("linestyle"), kwargs.get("color")))
        return real_axhline(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    write_report(tmp_path, tmp_path / "report")
    drawn = set(lines_drawn)  # one plot for budget_0.png, one for the HTML page: the same lines
    assert sorted(y for y, _, _ in drawn) == [0.78125, 0.8125]  # the strongest per metric
    assert {style for _, style, _ in drawn} == {"--"} and len({c for _, _, c in drawn}) == 2  # metric colours
    table = (tmp_path / "report" / "budget.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]  # past header, rule
    assert [r.split(" |")[0] for r in rows] == ["| 10", "| 25", "| baseline: random", "| baseline: student"]
    assert (
        rows[2] == "| baseline: random | - | 0.5000 |"
        and rows[3] == "| baseline: student | 0.7812 | 0.8125 |"
    )
    page = (tmp_path / "report" / "index.html").read_text()
    section = page[page.index('id="alignment-vs-training-budget"') :]
    assert 'data-key="baseline/student/task1/hr@5" data-value="0.78125"' in section


def test_aligner_seeds_at_a_budget_are_rows_of_one_curve(tmp_path):
    """Replicates (aligner.seed) at one budget join the curve of the other budgets as rows of their own,
    labelled with their seed, in budget then seed order; the plot still comes out."""
    evaluation = {"model": "aligned", "split": "test", "baselines": [], "few_shot": 0}
    for key, minutes, seed, acc in (
        ("a", 10, None, 0.5),
        ("b", 25, None, 0.75),
        ("c", 25, 2, 0.625),
        ("d", 25, 1, 0.875),
    ):
        _stage_folder(
            tmp_path, "evaluate", key, "hybrid", {"task3/acc": acc}, evaluation=evaluation,
            aligner={"budget_minutes": minutes, "seed": seed},
        )  # fmt: skip
    paths = write_report(tmp_path, tmp_path / "report")
    names = [p.name for p in paths]
    assert "budget_0.png" in names and "budget_1.png" not in names  # one curve, not one per seed
    table = (tmp_path / "report" / "budget.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 10") or line.startswith("| 25")]
    assert [r.split(" |")[0] for r in rows] == [
        "| 10 (default seed)",
        "| 25 (seed 1)",
        "| 25 (seed 2)",
        "| 25 (default seed)",
    ]
    assert rows[1].endswith("| 0.8750 |") and rows[2].endswith("| 0.6250 |")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "25 (seed 2)" in page and f'data-folder="{tmp_path / "evaluate" / "c"}"' in page
    points = budget.curves(collect(tmp_path, "evaluate"), "evaluate")
    (only,) = points.values()
    assert budget._mean_line(only, "task3/acc") == [
        (10.0, 0.5),
        (25.0, 0.75),
    ]  # the mean of 0.75, 0.625, 0.875


def test_explanations_of_a_budget_sweep_form_their_own_curve(tmp_path):
    """Explain folders of aligned models that differ only in aligner.budget_minutes form an explanation
    curve (table in budget.md, plot, HTML table with the metrics files' values) next to the alignment curve."""
    evaluation = {"model": "aligned", "split": "test", "baselines": [], "few_shot": 0}
    explain = {"model": "aligned", "split": "test"}
    for key, minutes, acc, ratio in (("b", 60, 0.75, 2.5), ("a", 10, 0.625, 1.25), ("c", None, 0.875, 3.0)):
        _stage_folder(
            tmp_path, "evaluate", key, "hybrid", {"task3/acc": acc}, evaluation=evaluation,
            aligner={"budget_minutes": minutes},
        )  # fmt: skip
        _stage_folder(
            tmp_path, "explain", key, "hybrid",
            {"explain/decision_acc": acc, "explain/faithfulness_ratio": ratio},
            explain=explain, judge={"name": "none"}, aligner={"budget_minutes": minutes},
        )  # fmt: skip
    paths = write_report(tmp_path, tmp_path / "report")
    names = [p.name for p in paths]
    assert {"budget.md", "budget_0.png", "budget_1.png"} <= set(names) and "budget_2.png" not in names
    table = (tmp_path / "report" / "budget.md").read_text()
    assert table.index("# Alignment quality vs aligner budget") < table.index("# Explanation quality")
    explained = table[table.index("# Explanation quality vs aligner budget") :]
    assert "explanations" in explained and "| budget (min) | decision acc | faithfulness ratio |" in explained
    assert explained.index("| 10 | 0.6250 | 1.2500 |") < explained.index("| 60 | 0.7500 | 2.5000 |")
    assert "3.0000" not in explained and "0.8750" not in table  # the folder without a budget is not on it
    page = (tmp_path / "report" / "index.html").read_text()
    section = page[page.index('id="alignment-vs-training-budget"') :]
    assert f'data-folder="{tmp_path / "explain" / "b"}"' in section and 'data-value="2.5"' in section
