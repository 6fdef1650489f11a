"""How much of the aligner's processed tokens are padding: the most sequence packing could save.

Encodes the training sample of a configuration exactly as the aligner stage does (its tasks, cap, seed and
length bound) and cuts it into the same length-grouped micro-batches (``LengthGroupedSampler``, epoch 0) for
each ``--mega`` value (``aligner.length_group_mega``; 1 gives random batches). The padding share is the padded
positions over all positions the batches hold (each batch is as long as its longest example); packing the
examples into full rows with per-example attention masks would remove that share of the positions and no
more. Needs the configuration's alignment data (``recexplainer stage=alignment_data`` with the same overrides).

    python experiments/padding_share.py                                  # the default recipe
    python experiments/padding_share.py --mega 1,8,50 aligner.max_train_examples=null
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def padding_share(lengths: list[int], batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, positions) of the batches, each padded to its longest example."""
    real = sum(lengths[i] for b in batches for i in b)
    positions = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return real, positions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mega", default="1,8,50", help="length_group_mega values, comma-separated")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the configuration")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from recexplainer.aligner import setup
    from recexplainer.aligner.data import LengthGroupedSampler
    from recexplainer.aligner.stage import encoded_split, training_seed
    from recexplainer.alignment_data.io import vector_width
    from recexplainer.artifacts import is_complete
    from recexplainer.cli import CONF_DIR
    from recexplainer.config import register_configs
    from recexplainer.pipeline import stage_folder

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=args.overrides)
    folder = stage_folder(cfg, "alignment_data")
    if not is_complete(folder):
        raise SystemExit(f"no alignment data at {folder}: run `recexplainer stage=alignment_data` first")
    model, tokenizer, formatter = setup.build(cfg, vector_width(folder))
    train = encoded_split(cfg, folder, "train", model, tokenizer, formatter)
    lengths = train.lengths()
    ac = cfg.aligner
    rows = []
    for mega in (int(m) for m in args.mega.split(",")):
        sampler = LengthGroupedSampler(lengths, ac.batch_size, seed=training_seed(cfg), mega=mega)
        real, positions = padding_share(lengths, list(sampler))
        rows.append(
            {"mega": mega, "real_tokens": real, "positions": positions, "padding_share": 1 - real / positions}
        )
        print(
            f"length_group_mega={mega:<4d} real tokens {real:>9,d}  positions {positions:>9,d}  "
            f"padding {100 * (1 - real / positions):5.1f} % of the positions"
        )
    print(f"{len(lengths)} examples, batch_size {ac.batch_size}, alignment data {folder.name}")
    if args.out:
        args.out.write_text(
            json.dumps({"folder": folder.name, "examples": len(lengths), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
