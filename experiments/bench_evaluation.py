"""Evaluation speed: examples/s per task, batched (the stage's way) vs one example at a time, side by side.

Uses the evaluate stage's own predictor (SmolLM2-135M-Instruct, fp32 CPU unless ``--precision``): beam search (5) for task 1,
greedy for the title tasks, one forward pass for the yes/no tasks. The model is the trained aligner of
the given config when one exists (``--aligned``), else the unaligned LLM on the same prompts; both
decode with the same bounded length, so the comparison is about batching only. Peak RSS is reported
(and the peak GPU memory on ``--device cuda``).

On a GPU machine without network the real weights may not be at hand: ``--random-weights smollm2_135m`` decodes with a
randomly initialised Llama of SmolLM2-135M's shape (the test tokenizer, SmolLM2's vocabulary) and the
tiny_random LLM config for the upstream stages. A random model never emits the end token, so every
example decodes to the length bound in both modes: the same work on each side, a fair batching
comparison (not a quality one).

    python experiments/bench_evaluation.py --per-task 16 --batch 16 --out benchmarks/evaluation.json
    python experiments/bench_evaluation.py --precision bf16 ...    # CPUs with AMX / AVX512-BF16
    python experiments/bench_evaluation.py --device cuda --precision bf16 --random-weights smollm2_135m \
        --per-task 32 --batch 32 paths.artifacts=/tmp/gc-eval
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

TASKS = ("retrieval", "ranking", "interest", "history", "item_recovery")
# random-weight model shapes (--random-weights): Llama configs for tiny_random_llama (smollm2_135m: the
# same sizes as experiments/bench_gpu_aligner.py ARCHS, SmolLM2-135M-Instruct's config.json)
SHAPES = {
    "tiny": dict(n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=128),
    "smollm2_135m": dict(n_layers=30, hidden_size=576, n_heads=9, n_kv_heads=3, intermediate_size=1536),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-task", type=int, default=16, help="examples per task")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aligned", action="store_true", help="use the trained aligner of the config")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "bf16-true"),
        default="fp32",
        help="bf16: autocast (trainer.precision=bf16-mixed: trainer=gpu, trainer=cpu_bf16); "
        "bf16-true: weights cast to bf16 (trainer.precision=bf16-true)",
    )
    parser.add_argument(
        "--random-weights",
        choices=sorted(SHAPES),
        help="decode with a randomly initialised model of this shape (composes llm=tiny_random first)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (e.g. prompt=hybrid)")
    args = parser.parse_args()
    if args.random_weights and args.aligned:
        raise SystemExit("--random-weights replaces the model: it cannot be combined with --aligned")

    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    from hydra import compose, initialize_config_dir

    from recexplainer.artifacts import is_complete, write_json
    from recexplainer.cli import CONF_DIR
    from recexplainer.config import register_configs
    from recexplainer.data.dataset import SequentialData
    from recexplainer.evaluate import stage
    from recexplainer.evaluate.decoding import Decoder
    from recexplainer.pipeline import stage_folder
    from recexplainer.runtime import autocast, cpu_description

    register_configs()
    model = "aligned" if args.aligned else "unaligned"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                # a random model needs no real weights upstream: the tiny_random LLM config (overridable)
                *(["llm=tiny_random"] if args.random_weights else []),
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
    if args.random_weights:
        from recexplainer.llm.loading import tiny_random_llama

        predictor.model = tiny_random_llama(predictor.tokenizer, **SHAPES[args.random_weights])
    predictor.model.to(device)
    predictor.decoder = Decoder(predictor.model, predictor.tokenizer)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    if args.precision == "bf16-true":
        predictor.model.to(torch.bfloat16)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    results: dict[str, dict[str, float]] = {}

    def summarize() -> dict:
        return {
            "model": model,
            "llm": f"random:{args.random_weights}" if args.random_weights else cfg.llm.name,
            "device": str(device)
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "precision": args.precision,
            "cpu": cpu_description(),
            "batch_size": args.batch,
            "threads": args.threads,
            "tasks": results,
            "complete": len(results) == len(examples),
            "median_speedup": statistics.median(r["speedup"] for r in results.values()),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **(
                {"peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20}
                if device.type == "cuda"
                else {}
            ),
            "command": "python experiments/bench_evaluation.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if k not in ("out", "overrides", "aligned") and v is not None
            )
            + (" --aligned" if args.aligned else "")
            + (" " + " ".join(args.overrides) if args.overrides else ""),
        }

    def write(summary: dict) -> None:
        if args.out:
            write_json(args.out, summary)  # atomic: a killed run never leaves half a file

    for task, rows in examples.items():
        kind = rows[0]["kind"]
        rows = sorted(rows, key=predictor.prompt_length)
        with autocast(device, dtype):
            predictor.predict(kind, rows[:2])  # warm-up
            start = clock()
            for i in range(0, len(rows), args.batch):
                predictor.predict(kind, rows[i : i + args.batch])
            batched = clock() - start
            start = clock()
            for row in rows:
                predictor.predict(kind, [row])
            single = clock() - start
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
        write(summarize())  # after every task: a run stopped by a time limit keeps what it measured
    summary = summarize()
    print(json.dumps({k: v for k, v in summary.items() if k != "tasks"}, indent=1))
    write(summary)


if __name__ == "__main__":
    main()
