"""Why a yes/no task missed: a shifted threshold or no separation? Per evaluate folder and yes/no task.

For task 3 and 3-hard the evaluation records P(yes) per example (``predictions/<predictor>.jsonl``; the
answer is "yes" when P(yes) > 0.5). This prints, per folder and task: accuracy at 0.5, the yes rate, the
AUC of P(yes) between the recommender's "yes" and "no" examples (threshold-free: 0.5 = no separation),
and the best accuracy any threshold would give on these same examples (an upper bound that peeks at the
labels, so a diagnosis, not a metric). A run with high AUC but low accuracy only has its threshold off;
a run with low AUC did not learn to tell the two apart.

    python experiments/yes_no_separation.py artifacts/evaluate/116695a42409 artifacts/evaluate/318010621def
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def separation(p_yes: np.ndarray, is_yes: np.ndarray) -> dict[str, float]:
    """Accuracy at 0.5, yes rate, AUC (ties count half) and the best-threshold accuracy."""
    pos, neg = p_yes[is_yes], p_yes[~is_yes]
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs both 'yes' and 'no' examples")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    best = max(float(((p_yes > t) == is_yes).mean()) for t in np.concatenate([[-np.inf], np.unique(p_yes)]))
    return {
        "examples": int(len(p_yes)),
        "acc": float(((p_yes > 0.5) == is_yes).mean()),
        "yes_rate": float((p_yes > 0.5).mean()),
        "auc": float(greater / (len(pos) * len(neg))),
        "best_threshold_acc": best,
    }


def folder_separation(folder: Path, predictor: str) -> dict[str, dict[str, float]]:
    from compare_predictions import load  # sibling script: the same reader and the same error

    rows = list(load(folder, predictor).values())
    out = {}
    for task in sorted({r["task"] for r in rows if "p_yes" in r}):
        mine = [r for r in rows if r["task"] == task and "p_yes" in r]
        p_yes = np.array([r["p_yes"] for r in mine], dtype=np.float64)
        # ids end in -pos (the recommender's top band: "yes") or -neg (its bottom band: "no")
        is_yes = np.array([r["id"].endswith("-pos") for r in mine])
        out[task] = separation(p_yes, is_yes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", type=Path, nargs="+", help="evaluate folders")
    parser.add_argument("--predictor", default="aligned", help="predictions file (aligned, popularity, ...)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    everything = {}
    for folder in args.folders:
        everything[str(folder)] = result = folder_separation(folder, args.predictor)
        for task, m in result.items():
            print(
                f"{folder.name} {task:14s} acc {m['acc']:.4f}  yes_rate {m['yes_rate']:.3f}  "
                f"AUC {m['auc']:.4f}  best-threshold acc {m['best_threshold_acc']:.4f}  (n={m['examples']})"
            )
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
