"""How far cheap signals get towards the recommender's own attributions: for the explanation examples of an
alignment_data folder, the share of the cited (top leave-one-out attributed) history items that each
heuristic also picks, as the attribution-agreement metric counts it.

    python experiments/attribution_heuristics.py artifacts/alignment_data/<key> [--split test]

Heuristics, each picking ``n_cited`` history items: the most recent ones; random ones (seeded); those whose
item embedding has the largest (yes) / smallest (no) dot product or cosine with the explained item's
embedding (what an LLM that reads per-item embeddings could learn to use).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from recexplainer.recommender.attribution import top_attributed


def agreement(picked: list[int], cited: list[int]) -> float:
    return len(set(picked) & set(cited)) / max(1, len(cited))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="an alignment_data folder with the explanation task")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    emb = load_file(str(args.folder / "vectors.safetensors"))["items"].double().numpy()
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    path = args.folder / "examples" / f"explanation.{args.split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rng = np.random.default_rng(args.seed)
    scores: dict[str, list[float]] = {"recent": [], "random": [], "dot": [], "cosine": []}
    for row in rows:
        history, labels = row["history"], row["labels"]
        cited, answer, k = labels["cited"], labels["answer"], max(1, len(labels["cited"]))
        distinct = list(dict.fromkeys(reversed(history)))
        scores["recent"].append(agreement(distinct[:k], cited))
        scores["random"].append(agreement([distinct[i] for i in rng.permutation(len(distinct))[:k]], cited))
        for name, table in (("dot", emb), ("cosine", unit)):
            values = table[history] @ table[labels["item"]]
            values = values - values.mean()  # "no": the least similar items, relative to the others
            scores[name].append(agreement(top_attributed(history, values, answer, k), cited))
    result = {name: float(np.mean(v)) for name, v in scores.items()} | {"n": len(rows), "split": args.split}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
