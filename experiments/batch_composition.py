"""What the aligner's micro-batches hold: padding overhead and task mix for each `aligner.length_group_mega`.

Encodes the configured training split exactly as the aligner stage does (same tokenizer, chat format, tasks,
example cap and seed) and replays the stage's `LengthGroupedSampler` for the first epoch, without training.
For each mega-batch factor it prints the padded / real token ratio (compute spent on padding), the share of
micro-batches that hold a single task, and the mean share of a batch taken by its most frequent task (a random
batch's value is the reference). Needs the alignment data of the config; loads the LLM once (seconds).

    python experiments/batch_composition.py --megas 1,4,8,50 recommender.train.patience=10
    python experiments/batch_composition.py alignment=hybrid recommender.train.patience=10
    python experiments/batch_composition.py --merge interest+interest_hard recommender.train.patience=10

Overrides are applied after `alignment=intention` (so they win); `alignment=hybrid` measures hybrid prompts.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megas", default="1,4,8,50", help="length_group_mega values, comma-separated")
    parser.add_argument(
        "--merge",
        default=None,
        help="count tasks joined by '+' as one, e.g. interest+interest_hard (same answer kind and template)",
    )
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args()

    from _aligner_inputs import aligner_inputs

    from recexplainer.aligner.data import LengthGroupedSampler
    from recexplainer.aligner.stage import encoded_split, training_seed

    cfg, folder, model, tokenizer, formatter = aligner_inputs(["alignment=intention", *args.overrides])
    ac = cfg.aligner
    ds = encoded_split(cfg, folder, "train", model, tokenizer, formatter)
    lengths = ds.lengths()
    tasks = [ds.examples[i].example_id.split("/")[0] for i in range(len(ds))]
    for group in args.merge.split(",") if args.merge else []:
        members = set(group.split("+"))
        tasks = [group if t in members else t for t in tasks]
    counts = collections.Counter(tasks)
    print(f"{folder.name}: {len(ds)} examples, {sum(lengths)} tokens, tasks {dict(counts)}")
    table = {}
    for mega in (int(m) for m in args.megas.split(",")):
        sampler = LengthGroupedSampler(lengths, ac.batch_size, seed=training_seed(cfg), mega=mega)
        real = padded = single = 0
        majority = []
        batches = list(sampler)
        for batch in batches:
            real += sum(lengths[i] for i in batch)
            padded += max(lengths[i] for i in batch) * len(batch)
            mix = collections.Counter(tasks[i] for i in batch)
            single += len(mix) == 1
            majority.append(max(mix.values()) / len(batch))
        table[mega] = {
            "padded_over_real": round(padded / real, 3),
            "single_task_batches": round(single / len(batches), 3),
            "mean_majority_share": round(statistics.mean(majority), 3),
        }
        print(f"mega {mega:>3}: " + ", ".join(f"{k} {v}" for k, v in table[mega].items()), flush=True)
    if args.out:
        meta = {"alignment_data": folder.name, "batch_size": ac.batch_size, "examples": len(ds)}
        meta.update(merge=args.merge, overrides=args.overrides, seed=training_seed(cfg))
        with open(args.out, "w") as handle:
            json.dump({"config": meta, "tasks": dict(counts), "megas": table}, handle, indent=2)


if __name__ == "__main__":
    main()
