"""Benchmark the target recommender on MovieLens-100K with the common protocol (make bench-recommender).

Runs `recexplainer experiment=bench_sasrec_ml100k` once per seed, each in a fresh process and a fresh
artifact folder, and writes the test metrics, seconds per epoch, time to the best epoch and peak memory
(medians over seeds) to a JSON file. Reference: RecBole 1.2.1's SASRec with the same protocol took 201.7 s
per training epoch on a 2-vCPU AMD EPYC (AVX2), 2026-11-26.

    python experiments/bench_recommender.py --out benchmarks/recommender.json --seeds 42 43 44
    python experiments/bench_recommender.py recommender.train.lr=0.001 --seeds 42   # overrides before --seeds
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECBOLE_SEC_PER_EPOCH = 201.7  # ANCHORS.md: RecBole 1.2.1 SASRec, epoch 0 on an idle machine of this kind
KEYS = [
    "test/hr@10",
    "test/ndcg@10",
    "test/hr@5",
    "test/ndcg@5",
    "valid/ndcg@10",
    "train/sec_per_epoch_median",
    "train/sec_to_best_epoch",
    "train/best_epoch",
    "train/epochs_run",
    "train/peak_rss_mb",
]


def run_once(seed: int, overrides: list[str], workdir: Path) -> dict[str, float]:
    exe = Path(sys.executable).with_name("recexplainer")
    cmd = [
        str(exe),
        "experiment=bench_sasrec_ml100k",
        f"seed={seed}",
        f"paths.artifacts={workdir}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    metrics = json.loads(next(workdir.glob("recommender/*/metrics.json")).read_text())
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/recommender.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        workdir = Path(tempfile.mkdtemp(prefix="bench-rec-"))
        try:
            m = run_once(seed, args.overrides, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        runs.append({"seed": seed, **{k: m[k] for k in KEYS}, "wall_s": m["wall_s"]})
        print(json.dumps(runs[-1]))
    median = {k: statistics.median(r[k] for r in runs) for k in KEYS + ["wall_s"]}
    result = {
        "command": f"python experiments/bench_recommender.py --seeds {' '.join(map(str, args.seeds))} "
        + " ".join(args.overrides),
        "protocol": "ml-100k, leave-one-out (time-ordered), full ranking over 1,682 items with history excluded, "
        "CE loss over all items, SASRec hidden 64, 2 layers, 2 heads, max_len 50, 2 torch threads; "
        "other settings: conf/recommender/sasrec.yaml plus the overrides in `command`",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads 2",
        "date": time.strftime("%Y-%m-%d"),
        "median": median,
        "runs": runs,
        "reference_recbole_sec_per_epoch": RECBOLE_SEC_PER_EPOCH,
        "speedup_vs_recbole_per_epoch": RECBOLE_SEC_PER_EPOCH / median["train/sec_per_epoch_median"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"wrote {args.out}: test NDCG@10 {median['test/ndcg@10']:.4f}, HR@10 {median['test/hr@10']:.4f}, "
        f"{median['train/sec_per_epoch_median']:.1f} s/epoch ({result['speedup_vs_recbole_per_epoch']:.0f}x less "
        f"than RecBole), best epoch after {median['train/sec_to_best_epoch']:.0f} s, "
        f"peak {median['train/peak_rss_mb']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
