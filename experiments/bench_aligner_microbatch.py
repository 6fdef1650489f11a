"""Aligner training time per example vs micro-batch size, same examples and optimizer-step size, interleaved.

Trains the configured aligner (default: the default recipe with `alignment=intention`, SmolLM2-135M, LoRA on
q/k/v/o and the MLPs) on the first examples of the alignment data, in length-grouped micro-batches of each
size, with an optimizer step every `--step-examples` examples (gradient accumulation), alternating the sizes
in blocks of `--block` examples so that machine noise hits them alike; reports the median per size. Needs
the alignment data of the config (`recexplainer stage=alignment_data ...`) and the SmolLM2 asset. On a
2-vCPU AMD EPYC (AVX2), idle, 2026-11-26:

    python experiments/bench_aligner_microbatch.py --rounds 4 recommender.train.patience=10
    # micro-batch 4 / 8 / 16: 88 / 106 / 132 tokens/s (1.50x; 34-token intention prompts, padding < 1 %):
    # benchmarks/targets-2026-11-26/microbatch_rerun.json

Short prompts are overhead-bound on a 2-core CPU (small matrices, per-operator cost); long ones are compute-bound
and gain little, while activation memory grows with the batch (16 x 203 tokens: 8.7 GB peak vs 3.0 GB for 4).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4,8,16", help="micro-batch sizes, comma-separated")
    parser.add_argument(
        "--examples", type=int, default=800, help="examples encoded (each round uses --block)"
    )
    parser.add_argument("--block", type=int, default=160, help="examples per size and round")
    parser.add_argument("--step-examples", type=int, default=16, help="examples per optimizer step")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the medians as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after alignment=intention)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sizes = [int(s) for s in args.sizes.split(",")]
    if any(args.step_examples % b or args.block % b for b in sizes):
        raise SystemExit("every size must divide --step-examples and --block")
    from _aligner_inputs import aligner_inputs

    from recexplainer.aligner.data import AlignmentDataset, LengthGroupedSampler, collate

    torch.manual_seed(0)
    cfg, folder, model, tokenizer, formatter = aligner_inputs(["alignment=intention", *args.overrides])
    model.train()
    tasks = list(cfg.aligner.train_tasks) if cfg.aligner.train_tasks else None
    ds = AlignmentDataset.for_model(
        folder, "train", model, tokenizer, formatter, 512, tasks=tasks, limit=args.examples, seed=0
    )
    batches = {}
    for b in sizes:
        groups = list(LengthGroupedSampler(ds.lengths(), b, seed=0))
        batches[b] = [collate([ds[i] for i in g], pad_id=tokenizer.pad_token_id) for g in groups]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def run(chunk: list[dict], accumulate: int) -> tuple[float, float, float]:
        start, n, tokens, padded = time.perf_counter(), 0, 0, 0
        for k, batch in enumerate(chunk):
            (model(**batch).loss / accumulate).backward()
            if (k + 1) % accumulate == 0:
                optimizer.step()
                optimizer.zero_grad()
            n += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
        seconds = time.perf_counter() - start
        return seconds / n, tokens / seconds, padded / tokens

    run(batches[sizes[0]][:4], 1)  # warm-up
    results: dict[int, list[tuple[float, float, float]]] = {b: [] for b in sizes}
    for r in range(args.rounds):
        for b in sizes:
            per = args.block // b
            chunk = batches[b][r * per : (r + 1) * per]
            if len(chunk) < per:
                raise SystemExit(
                    f"--examples {args.examples} too few for {args.rounds} rounds of {args.block}"
                )
            results[b].append(run(chunk, args.step_examples // b))
            print(f"round {r} micro-batch {b}: {results[b][-1][1]:.1f} tokens/s", flush=True)
    summary = {
        str(b): {
            "median_s_per_example": statistics.median(x[0] for x in v),
            "median_tokens_per_s": statistics.median(x[1] for x in v),
            "padded_over_real_tokens": statistics.median(x[2] for x in v),
        }
        for b, v in results.items()
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(
                {"overrides": args.overrides, "rounds": args.rounds, "sizes": summary}, handle, indent=1
            )


if __name__ == "__main__":
    main()
