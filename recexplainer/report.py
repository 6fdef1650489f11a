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


EXPLAIN_COLUMNS = [
    ("decision acc", "explain/decision_acc"),
    ("text decision acc", "explain/text_decision_acc"),
    ("cites history", "explain/citation_rate"),
    ("citation precision", "explain/citation_precision"),
    ("hallucinates", "explain/hallucination_rate"),
    ("faithful win rate", "explain/faithfulness_win_rate"),
    ("|d score| cited", "explain/faithfulness_cited_abs"),
    ("|d score| random", "explain/faithfulness_random_abs"),
    ("score MSE", "explain/score_mse"),
    ("MSE of mean", "explain/score_mse_mean_baseline"),
    ("judge mean", "explain/judge_mean"),
    ("words", "explain/mean_words"),
]


def collect(root: Path, stage: str = "evaluate") -> list[dict[str, Any]]:
    """One entry per complete folder of ``stage``: its config essentials and metrics."""
    runs = []
    for folder in sorted((root / stage).glob("*/")):
        if not (folder / MARKER).exists():
            continue
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        runs.append({"folder": folder, "cfg": cfg, "metrics": metrics})
    return runs


def recipe(aligner: dict[str, Any]) -> str:
    """The aligner settings that differ from the defaults, e.g. 'lr=0.0005, loss_weighting=example'."""
    from dataclasses import asdict

    from recexplainer.config import AlignerConfig

    defaults = asdict(AlignerConfig())
    changed = [
        f"{k}={v if not isinstance(v, list) else '[' + ','.join(map(str, v)) + ']'}"
        for k, v in aligner.items()
        if k in defaults and k != "injection" and v != defaults[k]
    ]
    return ", ".join(changed)


def method_name(cfg: dict[str, Any], model: str, extra: str = "") -> str:
    llm = cfg["llm"]["name"]
    if model == "aligned":
        changed = recipe(cfg.get("aligner", {}))
        extra = extra + (f"; {changed}" if changed else "")
        return f"RecExplainer-{MODE_LETTER[cfg['alignment']['mode']]} ({llm}{extra})"
    return f"{llm}, no alignment{extra} ({cfg['alignment']['mode']} prompts)"


def explain_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        cfg = run["cfg"]
        judge = cfg.get("judge", {}).get("name", "none")
        method = method_name(cfg, cfg["explain"]["model"], f", judge {judge}" if judge != "none" else "")
        dataset = f"{cfg['dataset']['name']} ({cfg['explain']['split']})"
        values = {key: run["metrics"].get(key) for _, key in EXPLAIN_COLUMNS}
        out.append({"dataset": dataset, "method": method, "values": values, "folder": str(run["folder"])})
    return sorted(out, key=lambda r: (r["dataset"], r["method"]))


def side_by_side(runs: list[dict[str, Any]], k: int = 8) -> str:
    """The same (user, item) pairs explained by each run, one section per pair."""
    by_run = []
    for run in runs:
        path = run["folder"] / "explanations.jsonl"
        if path.is_file():
            records = {json.loads(line)["id"]: json.loads(line) for line in path.read_text().splitlines()}
            by_run.append((method_name(run["cfg"], run["cfg"]["explain"]["model"]), records))
    if not by_run:
        return ""
    common = sorted(set.intersection(*(set(r) for _, r in by_run)))[:k]
    lines = ["## Side by side", ""]
    for pair in common:
        first = by_run[0][1][pair]
        lines += [f"### {pair}: recommender says **{first['answer']}** (rank {first.get('rank')})", ""]
        for method, records in by_run:
            r = records[pair]
            judge = f", judge {r['judge_score']}" if r.get("judge_score") is not None else ""
            lines.append(f"- **{method}**: {r['decision']} (P(yes) {r['p_yes']:.2f}{judge}): {r['text']!r}")
        lines.append("")
    return "\n".join(lines)


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: (dataset, method, values by metric key, source folder)."""
    out, seen_baselines = [], set()
    for run in runs:
        cfg, metrics = run["cfg"], run["metrics"]
        ev = cfg["evaluation"]
        dataset = f"{cfg['dataset']['name']} ({ev['split']})"
        if ev["model"] == "aligned":
            method = method_name(cfg, "aligned", ", constrained" if ev.get("constrained") else "")
        elif ev["model"] == "unaligned":
            method = method_name(
                cfg, "unaligned", f", {ev['few_shot']}-shot" if ev.get("few_shot") else ", zero-shot"
            )
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


def markdown(table: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in table):
        lines += [f"### {dataset}", "", "| method | " + " | ".join(h for h, _ in columns) + " |"]
        lines.append("| --- " * (len(columns) + 1) + "|")
        for r in table:
            if r["dataset"] == dataset:
                cells = [_cell(r["values"][k], k) for _, k in columns]
                lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(table: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "method", *[k for _, k in columns], "folder"])
    for r in table:
        writer.writerow([r["dataset"], r["method"], *[r["values"][k] for _, k in columns], r["folder"]])
    return buffer.getvalue()


def bar_plot(table: list[dict[str, Any]], columns: list[tuple[str, str]], path: Path, title: str) -> None:
    """Grouped bars: one group per metric, one bar per method (missing values left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r["method"] for r in table]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns)), 4.5))
    for m, r in enumerate(table):
        xs = [i + m * width for i, (_, k) in enumerate(columns) if r["values"].get(k) is not None]
        ys = [r["values"][k] for _, k in columns if r["values"].get(k) is not None]
        ax.bar(xs, ys, width, label=r["method"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))], [h for h, _ in columns], rotation=20)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(root: Path, out: Path) -> list[Path]:
    table = rows(collect(root))
    explain_runs = collect(root, "explain")
    if not table and not explain_runs:
        raise SystemExit(
            f"no complete evaluate or explain folders under {root}: run `recexplainer stage=evaluate` first"
        )
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if table:
        paths += [out / "alignment.md", out / "alignment.csv"]
        atomic_write_text(paths[-2], markdown(table))
        atomic_write_text(paths[-1], to_csv(table))
        for dataset in dict.fromkeys(r["dataset"] for r in table):
            slug = "_".join("".join(c if c.isalnum() else " " for c in dataset).split())
            paths.append(out / f"alignment_{slug}.png")
            subset = [r for r in table if r["dataset"] == dataset]
            bar_plot(subset, COLUMNS[:7], paths[-1], f"Alignment, {dataset}")
    if explain_runs:
        explain_table = explain_rows(explain_runs)
        paths += [out / "explanations.md", out / "explanations.csv"]
        text = markdown(explain_table, EXPLAIN_COLUMNS) + "\n" + side_by_side(explain_runs)
        atomic_write_text(paths[-2], text)
        atomic_write_text(paths[-1], to_csv(explain_table, EXPLAIN_COLUMNS))
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
