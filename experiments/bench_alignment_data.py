"""Benchmark the alignment_data stage on MovieLens-100K (make bench-alignment-data).

Trains a short SASRec (label build time does not depend on its quality), then builds the alignment data
with the default (CPU-sized) and the `paper` task sets (every training prefix of every user), each in a
fresh process, and records the stage's own time, the example counts and the peak memory.

    python experiments/bench_alignment_data.py --out benchmarks/alignment_data.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = ["recommender.train.max_epochs=3", "num_threads=2", "trainer.enable_progress_bar=false"]


def run(root: Path, *overrides: str) -> dict:
    exe = Path(sys.executable).with_name("recexplainer")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [str(exe), f"paths.artifacts={root}", *COMMON, *overrides], capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"failed: {overrides}\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    folder = Path(proc.stdout.strip().splitlines()[-2].split(": ", 1)[1])
    metrics = json.loads((folder / "metrics.json").read_text())
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"metrics": metrics, "wall_s": wall, "peak_rss_mb_max_so_far": max(before, after) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/alignment_data.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-align-"))
    run(root, "stage=recommender")
    result = {
        "command": "python experiments/bench_alignment_data.py",
        "date": time.strftime("%Y-%m-%d"),
        "runs": {},
    }
    for preset in ("default", "paper"):
        r = run(root, "stage=alignment_data", f"tasks={preset}", "prompt=hybrid")
        m = r["metrics"]
        result["runs"][preset] = {
            "stage_s": m["time/alignment_data_s"],
            "process_wall_s": r["wall_s"],
            "examples": int(sum(v for k, v in m.items() if k.startswith("count/"))),
            "train_examples": int(
                sum(v for k, v in m.items() if k.startswith("count/") and k.endswith("/train"))
            ),
            "peak_rss_mb": r["peak_rss_mb_max_so_far"],
        }
        print(preset, json.dumps(result["runs"][preset]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
