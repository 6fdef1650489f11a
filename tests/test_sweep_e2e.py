"""End to end: a 2-point alignment sweep (behavior, hybrid) through the evaluate stage on synthetic data with
the tiny random LLM, then its report. Slow (a few minutes on 2 cores): `make test-slow`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import SMALL_EVAL, TINY, TINY_ALIGNER, TINY_SASREC


@pytest.mark.slow
def test_two_point_alignment_sweep_shares_upstream_stages_and_reports_both(tmp_path):
    root = tmp_path / "artifacts"
    exe = Path(sys.executable).with_name("recexplainer")
    args = [str(exe), "-m", f"paths.artifacts={root}", "stage=evaluate", "prompt=behavior,hybrid"]
    args += [
        *TINY,
        *TINY_SASREC,
        *TINY_ALIGNER,
        *SMALL_EVAL,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]

    def complete(stage: str) -> list[Path]:
        return sorted(p.parent for p in (root / stage).glob("*/_COMPLETE"))

    # shared stages ran once; per-point stages once per point (behavior and hybrid prompts differ)
    assert len(complete("data")) == 1 and len(complete("recommender")) == 1
    assert "stage recommender: reusing" in out
    assert len(complete("alignment_data")) == 2
    assert len(complete("aligner")) == 2 and len(complete("evaluate")) == 2
    summary = json.loads(next((root / "multirun").glob("*/sweep_summary.json")).read_text())
    assert summary == {"points": 2, "failed": []}

    report = next((root / "multirun").glob("*/report"))
    table = (report / "alignment.md").read_text()
    assert "RecExplainer-B (tiny_random" in table and "RecExplainer-H (tiny_random" in table
    assert table.count("baseline: popularity") == 1
    for name in ("alignment.csv", "training_aligner.png", "training_recommender.png"):
        assert (report / name).stat().st_size > 0, name
    csv_rows = (report / "alignment.csv").read_text().splitlines()
    # header, B, H, their calibrated yes/no rows, their item heads (task 1 read off the head), two baselines
    assert len(csv_rows) == 1 + 2 + 2 + 2 + 2, csv_rows
    assert sum("item head" in r for r in csv_rows) == 2, csv_rows
