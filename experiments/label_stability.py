"""How stable are the sampled labels under tiny score changes (another CPU, another BLAS)?

The same recommender weights give scores that differ in the last bits on another CPU (AVX2 vs AVX-512
rounding). Interest tasks (task 3, 3-hard) draw one item from the recommender's top band and one from its
bottom band. If the draw picks a *position* in the score-ordered band, two near-tied items swapping inside
the band change the drawn item, although band membership (the label) did not change. Drawing from the band
sorted by item id only changes when an item crosses the band's edge.

This script scores the prefixes of one split with a trained recommender, perturbs every finite score by
``eps * |score| * N(0, 1)``, and counts per scheme how many drawn items change (the draw indices come from one
fixed generator, as in the alignment-data stage), and how many task-2 candidate sets (10 items) change, next
to how many top-1 labels (task 1) and top-band members change.

    python experiments/label_stability.py artifacts/data/0e30de1726c1 artifacts/recommender/ec81ae4a31c0 \
        --split test --eps 1e-7 1e-6 1e-5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from recexplainer.alignment.labels import iter_scored_prefixes, pick, sample_prefixes
from recexplainer.data.dataset import SequentialData
from recexplainer.recommender import load_recommender


def draws(order, n_valid, popularity, top_fraction, bottom_fraction, rng, by_id):
    """(positives, negatives, hard negatives, task-2 candidate sets) for every row, drawn as the stage draws
    them: ``by_id`` (as the alignment-data stage draws: recexplainer.alignment.labels.band / pick) or by score
    position (the scheme it is compared with)."""
    pos, neg, hard, cands = [], [], [], []
    for row in range(order.shape[0]):
        n = int(n_valid[row])
        ranked = np.sort(order[row, :n]) if by_id else order[row, :n]
        cands.append(frozenset(ranked[rng.choice(n, size=min(10, n), replace=False)].tolist()))
        top = order[row, : max(1, int(np.floor(top_fraction * n)))]
        bottom = order[row, n - max(1, int(np.floor(bottom_fraction * n))) : n]
        if by_id:
            top, bottom = np.sort(top), np.sort(bottom)
            p = pick(rng, top)
            h = pick(rng, bottom[popularity[bottom] >= popularity[p]])
            hard.append(h if h is not None else int(bottom[np.argmax(popularity[bottom])]))
            neg.append(pick(rng, bottom))
        else:
            p = int(top[rng.integers(len(top))])
            pool = bottom[popularity[bottom] >= popularity[p]]
            hard.append(
                int(pool[rng.integers(len(pool))])
                if len(pool)
                else int(bottom[np.argmax(popularity[bottom])])
            )
            neg.append(int(bottom[rng.integers(len(bottom))]))
        pos.append(p)
    return np.array(pos), np.array(neg), np.array(hard), np.array(cands, dtype=object)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="data stage folder")
    parser.add_argument("recommender", type=Path, help="recommender stage folder")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-7, 1e-6, 1e-5])
    parser.add_argument("--max-hist-len", type=int, default=9)
    parser.add_argument("--top-fraction", type=float, default=0.2)
    parser.add_argument("--bottom-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    data = SequentialData.load(args.data)
    model = load_recommender(args.recommender)
    popularity = data.train_item_counts()
    users, ends, rank = sample_prefixes(data, args.split, 1, args.seed)
    batches = list(iter_scored_prefixes(model, data, args.split, users, ends, rank, args.max_hist_len))
    scores = np.concatenate([b.scores for b in batches])  # (P, N + 1)
    n_valid = np.concatenate([b.n_valid for b in batches])
    finite = np.isfinite(scores)

    def order_of(s: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(s[:, 1:])
        return (torch.argsort(t, dim=1, descending=True, stable=True) + 1).numpy()

    def all_draws(order: np.ndarray, by_id: bool):
        rng = np.random.default_rng(args.seed)
        return draws(order, n_valid, popularity, args.top_fraction, args.bottom_fraction, rng, by_id)

    base_order = order_of(scores)
    reference = {by_id: all_draws(base_order, by_id) for by_id in (False, True)}
    noise_rng = np.random.default_rng(0)
    results = []
    for eps in args.eps:
        noisy = scores.copy()
        noisy[finite] += eps * np.abs(scores[finite]) * noise_rng.standard_normal(int(finite.sum()))
        order = order_of(noisy)
        row = {
            "eps": eps,
            "prefixes": int(len(scores)),
            "top1_changed": int((order[:, 0] != base_order[:, 0]).sum()),
            "top_band_members_changed": int(
                sum(
                    len(set(base_order[r, : int(0.2 * n_valid[r])]) ^ set(order[r, : int(0.2 * n_valid[r])]))
                    // 2
                    for r in range(len(order))
                )
            ),
        }
        for by_id, name in ((False, "by_position"), (True, "by_item_id")):
            new = all_draws(order, by_id)
            for kind, a, b in zip(
                ("pos", "neg", "hard_neg", "ranking_candidates"), reference[by_id], new, strict=True
            ):
                row[f"{name}/{kind}_changed"] = int((a != b).sum())
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())
