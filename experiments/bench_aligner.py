"""Aligner training throughput vs a plain baseline, side by side in one run (make bench-aligner).

Both train SmolLM2-135M-Instruct with LoRA (r 16, alpha 32, q/k/v/o) on the same tokenized alignment
examples, same batch size and number of optimizer steps, on the CPU at each ``--precision`` (fp32 by default;
``32-true,bf16-mixed`` compares bf16 autocast, for CPUs with AMX / AVX512-BF16, in the same run):

- ``recexplainer``: the aligner's own path (length-grouped batches, LM head on response tokens only,
  vectors injected at the placeholders), driven by the same Lightning Trainer as the stage;
- ``baseline``: Hugging Face ``Trainer`` + peft on the same token ids (placeholders as ordinary tokens),
  random batches padded to the longest, loss through the model's own full LM head.

Tokens/s counts real (non-padding) tokens. Needs the data and recommender stages of the default config
(built first, with a 3-epoch recommender: label quality does not matter here) and the SmolLM2 asset.

    python experiments/bench_aligner.py --examples 128 --steps 8 --out benchmarks/aligner.json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

OVERRIDES = [
    "paths.artifacts=/tmp/bench-aligner-artifacts",
    "recommender.train.max_epochs=3",
    "prompt=hybrid",
]


def child(mode: str, examples: int, steps: int, batch: int, threads: int, precision: str = "32-true") -> dict:
    import torch

    torch.set_num_threads(threads)
    from hydra import compose, initialize_config_dir

    from recexplainer.aligner import setup
    from recexplainer.aligner.data import AlignmentDataset, LengthGroupedSampler, collate
    from recexplainer.alignment_data.io import vector_width
    from recexplainer.artifacts import is_complete
    from recexplainer.cli import CONF_DIR
    from recexplainer.config import register_configs
    from recexplainer.pipeline import stage_folder

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=OVERRIDES)
    folder = stage_folder(cfg, "alignment_data")
    if not is_complete(folder):
        sys.exit(f"no alignment data at {folder}: run `recexplainer stage=alignment_data` first")
    torch.manual_seed(0)
    model, tokenizer, formatter = setup.build(cfg, vector_width(folder))
    ds = AlignmentDataset.for_model(
        folder,
        "train",
        model,
        tokenizer,
        formatter,
        512,
        limit=examples,
        seed=0,
    )
    pad = tokenizer.pad_token_id
    n = steps * batch
    if mode == "recexplainer":
        import lightning as L

        from recexplainer.aligner.module import AlignerModule

        sampler = LengthGroupedSampler(ds.lengths(), batch, seed=0)
        batches = [collate([ds[i] for i in b], pad_id=pad) for b in list(sampler)[:steps]]
        module = AlignerModule(model, total_steps=steps)
        trainer = L.Trainer(
            accelerator="cpu",
            precision=precision,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        start = time.perf_counter()
        from torch.utils.data import DataLoader

        trainer.fit(module, DataLoader(batches, batch_size=None))  # pre-collated batches, in sampler order
        seconds = time.perf_counter() - start
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(b["input_ids"].numel() for b in batches)
    else:
        from transformers import Trainer, TrainingArguments

        rng = random.Random(0)
        order = list(range(len(ds)))
        rng.shuffle(order)
        rows = [{"input_ids": ds.examples[i].input_ids, "labels": ds.examples[i].labels} for i in order[:n]]

        def pad_batch(items):
            width = max(len(r["input_ids"]) for r in items)
            ids = torch.full((len(items), width), pad)
            labels = torch.full((len(items), width), -100)
            mask = torch.zeros((len(items), width), dtype=torch.long)
            for k, r in enumerate(items):
                ids[k, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
                labels[k, : len(r["labels"])] = torch.tensor(r["labels"])
                mask[k, : len(r["input_ids"])] = 1
            return {"input_ids": ids, "labels": labels, "attention_mask": mask}

        args = TrainingArguments(
            output_dir="/tmp/bench-aligner-hf",
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=2e-4,
            report_to=[],
            save_strategy="no",
            logging_steps=1000,
            use_cpu=True,
            bf16=precision.startswith("bf16"),  # torch.autocast on the CPU, as Lightning's bf16-mixed
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = Trainer(model=model.lm, args=args, train_dataset=rows, data_collator=pad_batch)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        tokens = sum(len(r["input_ids"]) for r in rows)
        padded = sum(pad_batch(rows[k : k + batch])["input_ids"].numel() for k in range(0, n, batch))
    return {
        "mode": mode,
        "precision": precision,
        "seconds": seconds,
        "tokens": tokens,
        "padded_tokens": padded,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two modes this many times")
    parser.add_argument(
        "--precision",
        default="32-true",
        help="comma-separated Lightning precisions, each run for both modes (bf16-mixed: CPUs with AMX / "
        "AVX512-BF16, as trainer=cpu_bf16), e.g. 32-true,bf16-mixed",
    )
    parser.add_argument("--out", default="benchmarks/aligner.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(child(args.child, args.examples, args.steps, args.batch, args.threads, args.precision))
        )
        return
    exe = Path(sys.executable).with_name("recexplainer")
    prep = subprocess.run(
        [str(exe), "stage=alignment_data", "trainer.enable_progress_bar=false", *OVERRIDES],
        capture_output=True,
        text=True,
    )
    if prep.returncode != 0:
        sys.exit(f"building the alignment data failed:\n{prep.stderr[-3000:]}")
    runs = []
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    modes = [(m, p) for p in precisions for m in ("baseline", "recexplainer")]
    for _ in range(args.repeats):
        for mode, precision in modes:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--examples",
                str(args.examples),
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--threads",
                str(args.threads),
                "--precision",
                precision,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]))
    import statistics

    from recexplainer.runtime import cpu_description

    def median(mode: str, precision: str) -> float:
        return statistics.median(
            r["tokens_per_s"] for r in runs if r["mode"] == mode and r["precision"] == precision
        )

    # the first precision under the plain names (as before), every precision as mode@precision
    med = {m: median(m, precisions[0]) for m in ("baseline", "recexplainer")}
    med |= {f"{m}@{p}": median(m, p) for m, p in modes}
    result = {
        "command": " ".join(
            [
                "python experiments/bench_aligner.py",
                f"--examples {args.examples}",
                f"--steps {args.steps}",
                f"--batch {args.batch}",
                f"--threads {args.threads}",
                f"--repeats {args.repeats}",
                f"--precision {args.precision}",
            ]
        ),
        "cpu": cpu_description(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
        "median_tokens_per_s": med,
        "speedup": med["recexplainer"] / med["baseline"],
        "speedup_per_precision": {p: median("recexplainer", p) / median("baseline", p) for p in precisions},
        "precision_speedup": {  # recexplainer at each precision vs recexplainer at the first one
            p: median("recexplainer", p) / median("recexplainer", precisions[0]) for p in precisions
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for p in precisions:
        print(
            f"{p}: recexplainer {median('recexplainer', p):.0f} tokens/s vs baseline "
            f"{median('baseline', p):.0f} ({result['speedup_per_precision'][p]:.2f}x)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
