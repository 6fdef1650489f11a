"""What each CPU speed setting of the aligner buys: training tokens/s on the default run's own batches.

Variants, each in its own process, alternated over ``--rounds`` (medians reported, so a noisy neighbour
spoils one round, not a variant):

- ``dropout``: LoRA dropout 0.05 (the setting before the default became 0.0), attention mask kept;
- ``no_dropout``: ``aligner.lora_dropout=0`` (the default), attention mask kept;
- ``no_mask``: + the training forward drops the mask of right-padded batches (the default);
- ``bf16_weights``: + frozen linear weights stored in bf16 (the default under ``bf16-mixed``);
- ``fp32_attention``: + the attention in fp32 while training (``aligner.cpu_attention_fp32=true``, not the
  default: torch's bf16 flash-attention backward is slow on a CPU);
- ``batch_32``: the defaults with micro-batches of 32 examples instead of 16 (not in the default list:
  ``--variants bf16_weights,batch_32``).
- ``fp32``: the defaults in fp32 (no autocast) on a CPU where ``trainer=cpu`` resolves to bf16 autocast:
  whether bf16 pays on this CPU (not in the default list: ``--variants fp32,bf16_weights``; skipped on a
  CPU without native bf16, where the defaults are fp32 already).
- ``no_item_head``: the defaults without the item head (``aligner.item_head_weight=0``): what the head costs
  (not in the default list: ``--variants bf16_weights,no_item_head``).
- ``compile``: the defaults with the model under ``torch.compile(dynamic=True)`` (inductor; not in the default
  list; the two warm-up steps, which compile, are timed apart as ``warmup_seconds``).

Every variant trains the same length-grouped micro-batches (``--steps`` of them, after one warm-up step) of
the default configuration's alignment data, with AdamW, under the precision ``trainer=cpu`` resolves to on this
CPU (bf16 autocast with native bf16, fp32 elsewhere; ``bf16_weights`` and ``fp32_attention`` are skipped under fp32). Needs the
default run's alignment data (``recexplainer stage=alignment_data``).

    python experiments/bench_aligner_step.py --steps 8 --rounds 3 --out benchmarks/aligner_step.json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("dropout", "no_dropout", "no_mask", "bf16_weights", "fp32_attention")
EXTRA = ("batch_32", "compile", "fp32", "no_item_head")


def child(variant: str, steps: int, threads: int, artifacts: str | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    from hydra import compose, initialize_config_dir

    from recexplainer.aligner import model as model_module
    from recexplainer.aligner import setup
    from recexplainer.aligner.data import LengthGroupedSampler, collate
    from recexplainer.aligner.stage import encoded_split
    from recexplainer.alignment_data.io import vector_width
    from recexplainer.artifacts import is_complete
    from recexplainer.cli import CONF_DIR
    from recexplainer.config import cpu_precision, register_configs
    from recexplainer.pipeline import stage_folder

    register_configs()
    overrides = [f"paths.artifacts={artifacts}"] if artifacts else []
    overrides.append(f"aligner.lora_dropout={0.05 if variant == 'dropout' else 0.0}")
    if variant == "no_item_head":
        overrides.append("aligner.item_head_weight=0")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    folder = stage_folder(cfg, "alignment_data")
    if not is_complete(folder):
        sys.exit(f"no alignment data at {folder}: run `recexplainer stage=alignment_data` first")
    if variant in ("dropout", "no_dropout"):
        model_module.is_right_padded = lambda mask: False  # keep the mask, as before
    precision = "32-true" if variant == "fp32" else cpu_precision()
    bf16 = precision.startswith("bf16")
    torch.manual_seed(0)
    model, tokenizer, formatter = setup.build(cfg, vector_width(folder))
    ac = cfg.aligner
    train = encoded_split(cfg, folder, "train", model, tokenizer, formatter)  # as the stage trains on it
    if model.has_item_head:
        model.set_item_table(train.items)
    batch_size = 32 if variant == "batch_32" else ac.batch_size
    sampler = LengthGroupedSampler(train.lengths(), batch_size, seed=0, mega=ac.length_group_mega)
    batches = list(sampler)
    random.Random(1).shuffle(batches)  # a fixed sample of the run's batches, every length
    pad = tokenizer.pad_token_id
    # timed: batches 1..steps for every variant; untimed warm-up: batch 0 (compile: also the extra last batch,
    # a second shape, which triggers the dynamic-shape compile)
    batches = [collate([train[i] for i in b], pad_id=pad) for b in batches[: steps + 2]]
    warm, timed = ([batches[0], batches[-1]] if variant == "compile" else [batches[0]]), batches[1:-1]
    if variant in ("bf16_weights", "fp32_attention", "batch_32", "compile", "no_item_head") and bf16:
        model_module.store_frozen_linears(model, torch.bfloat16)
    if variant == "fp32_attention" and bf16:
        model_module.use_fp32_training_attention(model.lm)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    forward = torch.compile(model, dynamic=True) if variant == "compile" else model

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    start = time.perf_counter()
    for batch in warm:  # warm-up (and compilation)
        step(batch)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    seconds = time.perf_counter() - start
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    return {
        "variant": variant,
        "precision": precision,
        "batch_size": batch_size,
        "seconds": seconds,
        "warmup_seconds": warmup_seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--artifacts", default=None, help="paths.artifacts (default: the configured one)")
    parser.add_argument("--out", default="benchmarks/aligner_step.json")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS + EXTRA)}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads, args.artifacts)))
        return
    from recexplainer.config import cpu_precision
    from recexplainer.runtime import cpu_description

    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS + EXTRA))
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS + EXTRA)}")
    if not cpu_precision().startswith("bf16"):  # fp32 everywhere: these two equal the plain defaults
        variants = [v for v in variants if v not in ("bf16_weights", "fp32_attention", "fp32")]
    runs = []
    for _ in range(args.rounds):
        for variant in variants:
            cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)]
            cmd += ["--artifacts", args.artifacts] if args.artifacts else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    first = statistics.median(r["tokens_per_s"] for r in runs if r["variant"] == variants[0])
    summary = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        tps = statistics.median(r["tokens_per_s"] for r in mine)
        summary[variant] = {
            "tokens_per_s_median": round(tps, 1),
            f"speedup_vs_{variants[0]}": round(tps / first, 2),
            "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in mine)),
        }
    result = {
        "command": " ".join(["python", "experiments/bench_aligner_step.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_description(),
        "precision": runs[0]["precision"],
        "steps": args.steps,
        "rounds": args.rounds,
        "summary": summary,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for variant, row in summary.items():
        print(
            f"{variant:>13}: {row['tokens_per_s_median']:7.1f} tokens/s  x{row[f'speedup_vs_{variants[0]}']:.2f}"
        )


if __name__ == "__main__":
    main()
