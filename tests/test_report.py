"""The report aggregates evaluate folders into one table, baselines once per dataset."""

import json

import yaml

from recexplainer.artifacts import MARKER
from recexplainer.report import write_report


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
