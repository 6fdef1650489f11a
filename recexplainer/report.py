"""Aggregate every ``evaluate`` folder below an artifact root into a paper-style table (Markdown + CSV).

    python -m recexplainer.report [--root artifacts] [--out artifacts/report]

Rows: each evaluated model (RecExplainer-B / -I / -H per LLM, the unaligned LLM zero- or few-shot), then
the baselines (once per dataset and split: they do not depend on the alignment mode); one block per
dataset. Columns follow the paper's Table 1 plus the checks this framework adds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from recexplainer.artifacts import MARKER, atomic_write_text

COLUMNS = [
    ("T1 HR@5", "task1/hr@5"),
    ("T1 NDCG@5", "task1/ndcg@5"),
    ("T2 NDCG@5", "task2/ndcg@5"),
    ("T3 Acc", "task3/acc"),
    ("T3-hard Acc", "task3_hard/acc"),
    ("T6 HCR", "task6/hcr"),
    ("Item rec. Acc", "item_recovery/acc"),
    ("T1 valid", "task1/valid_ratio"),
    ("T1 distinct", "task1/distinct_answers"),
    ("T3 yes-rate", "task3/yes_rate"),
]
MODE_LETTER = {"behavior": "B", "intention": "I", "hybrid": "H"}


def collect(root: Path) -> list[dict[str, Any]]:
    """One entry per complete evaluate folder: its config essentials and metrics."""
    runs = []
    for folder in sorted((root / "evaluate").glob("*/")):
        if not (folder / MARKER).exists():
            continue
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        runs.append({"folder": folder, "cfg": cfg, "metrics": metrics})
    return runs


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: (dataset, method, values by metric key, source folder)."""
    out, seen_baselines = [], set()
    for run in runs:
        cfg, metrics = run["cfg"], run["metrics"]
        ev = cfg["evaluation"]
        dataset = f"{cfg['dataset']['name']} ({ev['split']})"
        llm = cfg["llm"]["name"]
        if ev["model"] == "aligned":
            constrained = ", constrained" if ev.get("constrained") else ""
            method = f"RecExplainer-{MODE_LETTER[cfg['alignment']['mode']]} ({llm}{constrained})"
        elif ev["model"] == "unaligned":
            shots = f", {ev['few_shot']}-shot" if ev.get("few_shot") else ", zero-shot"
            method = f"{llm}, no alignment{shots} ({cfg['alignment']['mode']} prompts)"
        else:
            method = None
        if method:
            values = {key: metrics.get(key) for _, key in COLUMNS}
            out.append({"dataset": dataset, "method": method, "values": values, "folder": str(run["folder"])})
        for name in ev.get("baselines", []):
            if (dataset, name) in seen_baselines:
                continue
            seen_baselines.add((dataset, name))
            values = {key: metrics.get(f"baseline/{name}/{key}") for _, key in COLUMNS}
            out.append(
                {
                    "dataset": dataset,
                    "method": f"baseline: {name}",
                    "values": values,
                    "folder": str(run["folder"]),
                }
            )
    order = lambda r: (r["dataset"], r["method"].startswith("baseline"), r["method"])  # noqa: E731
    return sorted(out, key=order)


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if key.endswith("distinct_answers") else f"{value:.4f}"


def markdown(table: list[dict[str, Any]]) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in table):
        lines += [f"### {dataset}", "", "| method | " + " | ".join(h for h, _ in COLUMNS) + " |"]
        lines.append("| --- " * (len(COLUMNS) + 1) + "|")
        for r in table:
            if r["dataset"] == dataset:
                cells = [_cell(r["values"][k], k) for _, k in COLUMNS]
                lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(table: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "method", *[k for _, k in COLUMNS], "folder"])
    for r in table:
        writer.writerow([r["dataset"], r["method"], *[r["values"][k] for _, k in COLUMNS], r["folder"]])
    return buffer.getvalue()


def write_report(root: Path, out: Path) -> list[Path]:
    table = rows(collect(root))
    if not table:
        raise SystemExit(
            f"no complete evaluate folders under {root / 'evaluate'}: run `recexplainer stage=evaluate`"
        )
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "alignment.md", out / "alignment.csv"]
    atomic_write_text(paths[0], markdown(table))
    atomic_write_text(paths[1], to_csv(table))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=Path("artifacts"), help="artifact root (paths.artifacts)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <root>/report)")
    args = parser.parse_args()
    for path in write_report(args.root, args.out or args.root / "report"):
        print(path)


if __name__ == "__main__":
    main()
