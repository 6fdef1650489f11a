"""Evaluation speed: examples/s per task, batched (the stage's way) vs one example at a time, side by side.

Uses the evaluate stage's own predictor (SmolLM2-135M-Instruct, fp32 CPU): beam search (5) for task 1,
greedy for the title tasks, one forward pass for the yes/no tasks. The model is the trained aligner of
the given config when one exists (``--aligned``), else the unaligned LLM on the same prompts; both
decode with the same bounded length, so the comparison is about batching only. Peak RSS is reported.

    python experiments/bench_evaluation.py --per-task 16 --batch 16 --out benchmarks/evaluation.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

TASKS = ("retrieval", "ranking", "interest", "history", "item_recovery")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-task", type=int, default=16, help="examples per task")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aligned", action="store_true", help="use the trained aligner of the config")
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (e.g. alignment=hybrid)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hydra import compose, initialize_config_dir

    from recexplainer.artifacts import is_complete
    from recexplainer.cli import CONF_DIR
    from recexplainer.config import register_configs
    from recexplainer.data.dataset import SequentialData
    from recexplainer.evaluation import stage
    from recexplainer.pipeline import stage_folder

    register_configs()
    model = "aligned" if args.aligned else "unaligned"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                *args.overrides,
                f"evaluation.model={model}",
                f"evaluation.max_examples={args.per_task}",
                # the per-task caps of the default config, set explicitly (a dict override merges: {} keeps them)
                *(
                    f"evaluation.max_examples_per_task.{t}={args.per_task}"
                    for t in ("interest", "interest_hard", "ranking", "history")
                ),
                f"evaluation.tasks=[{','.join(TASKS)}]",
                "evaluation.baselines=[]",
            ],
        )
    upstream = {name: stage_folder(cfg, name) for name in stage.requires(cfg)}
    for name, folder in upstream.items():
        if not is_complete(folder):
            raise SystemExit(
                f"missing {name} stage at {folder}: run `recexplainer stage={name}` with these overrides"
            )
    data = SequentialData.load(upstream["data"])
    examples = stage.select_examples(upstream["alignment_data"], cfg)
    predictor = stage._predictors(cfg, upstream, data)[0][1]
    results: dict[str, dict[str, float]] = {}
    for task, rows in examples.items():
        kind = rows[0]["kind"]
        rows = sorted(rows, key=predictor.prompt_length)
        predictor.predict(kind, rows[:2])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(rows), args.batch):
            predictor.predict(kind, rows[i : i + args.batch])
        batched = time.perf_counter() - start
        start = time.perf_counter()
        for row in rows:
            predictor.predict(kind, [row])
        single = time.perf_counter() - start
        results[task] = {
            "examples": len(rows),
            "batched_examples_per_s": len(rows) / batched,
            "single_examples_per_s": len(rows) / single,
            "speedup": single / batched,
        }
        print(
            f"{task:14s} n={len(rows):3d}  batched {len(rows) / batched:7.2f} ex/s  "
            f"one-at-a-time {len(rows) / single:7.2f} ex/s  speedup {single / batched:5.2f}x",
            flush=True,
        )
    summary = {
        "model": model,
        "llm": cfg.llm.name,
        "batch_size": args.batch,
        "threads": args.threads,
        "tasks": results,
        "median_speedup": statistics.median(r["speedup"] for r in results.values()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "command": "python experiments/bench_evaluation.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("out", "overrides", "aligned")
        )
        + (" --aligned" if args.aligned else "")
        + (" " + " ".join(args.overrides) if args.overrides else ""),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "tasks"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
