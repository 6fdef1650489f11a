"""Per-example agreement between evaluate runs of one model (e.g. fp32 vs bf16 inference).

Reads the predictions files of two or more evaluate folders (the first is the reference) and prints, per
yes/no task, the share of examples with the same decision (P(yes) > 0.5) and the median / largest change of
P(yes); for task 1, the share with the same 5 candidates and with the same first candidate.

    python experiments/compare_predictions.py artifacts/evaluate/116695a42409 artifacts/evaluate/f4d3edda03c1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(folder: Path, predictor: str) -> dict[str, dict]:
    path = folder / "predictions" / f"{predictor}.jsonl"
    if not path.is_file():
        raise SystemExit(f"no predictions at {path} (is {folder} an evaluate folder? --predictor?)")
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def compare(reference: dict[str, dict], other: dict[str, dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    tasks = sorted({r["task"] for r in reference.values()})
    for task in tasks:
        ids = [i for i, r in reference.items() if r["task"] == task and i in other]
        if not ids:
            continue
        a, b = [reference[i] for i in ids], [other[i] for i in ids]
        if all("p_yes" in r for r in a + b):
            changes = [abs(x["p_yes"] - y["p_yes"]) for x, y in zip(a, b, strict=True)]
            out[task] = {
                "examples": len(ids),
                "same_decision": sum(
                    (x["p_yes"] > 0.5) == (y["p_yes"] > 0.5) for x, y in zip(a, b, strict=True)
                )
                / len(ids),
                "p_yes_change_median": statistics.median(changes),
                "p_yes_change_max": max(changes),
            }
        else:
            out[task] = {
                "examples": len(ids),
                "same_titles": sum(x["titles"] == y["titles"] for x, y in zip(a, b, strict=True)) / len(ids),
                "same_first_title": sum(x["titles"][:1] == y["titles"][:1] for x, y in zip(a, b, strict=True))
                / len(ids),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reference", type=Path, help="evaluate folder compared against")
    parser.add_argument("others", type=Path, nargs="+", help="evaluate folders of the same examples")
    parser.add_argument(
        "--predictor", default="aligned", help="predictions file name (aligned, unaligned, ...)"
    )
    args = parser.parse_args()
    reference = load(args.reference, args.predictor)
    for folder in args.others:
        print(folder.name, json.dumps(compare(reference, load(folder, args.predictor)), indent=1))


if __name__ == "__main__":
    main()
