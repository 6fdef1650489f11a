"""Multi-process runs on the CPU (gloo): the whole pipeline with trainer=ddp and 2 processes gives the same
artifacts as one process. Slow (about a minute on 2 cores): `make test-slow`."""

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import SMALL_EVAL, TINY, TINY_ALIGNER, TINY_SASREC

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]


def _records(pattern: str) -> dict[str, dict]:
    out = {}
    for path in glob.glob(pattern):
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            assert record["id"] not in out, f"{record['id']} scored twice"
            out[record["id"]] = record
    return out


@pytest.mark.slow
def test_ddp_pipeline_on_two_cpu_processes_matches_one_process(tmp_path):
    exe = str(Path(sys.executable).with_name("recexplainer"))
    base = ["stage=evaluate", *TINY, *TINY_SASREC, *TINY_ALIGNER, *SMALL_EVAL]
    ddp_root = tmp_path / "ddp"
    proc = subprocess.run(
        [exe, f"paths.artifacts={ddp_root}", *base, *DDP],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "rank 1 joins" in out and "rank 1 waits for rank 0" in out  # both kinds of stage were shared
    for stage in ("data", "recommender", "alignment_data", "aligner", "evaluate"):
        assert len(glob.glob(f"{ddp_root}/{stage}/*/_COMPLETE")) == 1, stage

    # the same trained aligner evaluated by one process: same examples, same per-example scores
    one_root = tmp_path / "one"
    shutil.copytree(ddp_root, one_root, ignore=shutil.ignore_patterns("evaluate"))
    one = [
        f"paths.artifacts={one_root}",
        *base,
        "trainer.precision=32-true",
    ]  # the key of the DDP run's aligner
    proc = subprocess.run([exe, *one], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "stage aligner: reusing" in proc.stdout + proc.stderr  # evaluated, not retrained
    sharded = _records(f"{ddp_root}/evaluate/*/predictions/aligned.rank*.jsonl")
    whole = _records(f"{one_root}/evaluate/*/predictions/aligned.jsonl")
    assert len(glob.glob(f"{ddp_root}/evaluate/*/predictions/aligned.rank*.jsonl")) == 2
    assert sharded.keys() == whole.keys() and len(whole) > 10
    assert {k: r["metrics"] for k, r in sharded.items()} == {k: r["metrics"] for k, r in whole.items()}
    m_ddp = json.loads(next((ddp_root / "evaluate").glob("*/metrics.json")).read_text())
    m_one = json.loads(next((one_root / "evaluate").glob("*/metrics.json")).read_text())
    for key, value in m_one.items():
        if not key.startswith(("speed/", "time/")):
            assert m_ddp[key] == pytest.approx(value, abs=1e-9), key
