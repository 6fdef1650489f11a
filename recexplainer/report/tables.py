"""Aggregate every ``evaluate`` / ``explain`` folder below an artifact root into paper-style tables
(Markdown + CSV) and plots: per-task bars, judge-score histograms, training curves from the CSV logs.

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

from recexplainer import tasks as kinds
from recexplainer.artifacts import MARKER, atomic_write_text


def alignment_columns(headline_only: bool = False) -> list[tuple[str, str]]:
    """(header, metric) of every registered task kind's headline columns (the paper's Table 1), then of
    their checks; asked at report time, so a kind registered by the user's code has its columns."""
    columns = kinds.headline_columns() if headline_only else kinds.report_columns()
    return [(c.label, c.metric) for c in columns]


MODE_LETTER = {"behavior": "B", "intention": "I", "hybrid": "H"}


EXPLAIN_COLUMNS = [
    ("decision acc", "explain/decision_acc"),
    ("decision acc, explain prompt", "explain/prompt_decision_acc"),
    ("text decision acc", "explain/text_decision_acc"),
    ("cites history", "explain/citation_rate"),
    ("citation precision", "explain/citation_precision"),
    ("hallucinates", "explain/hallucination_rate"),
    ("attribution agreement", "explain/attribution_agreement"),
    ("faithfulness ratio", "explain/faithfulness_ratio"),
    ("faithful win rate", "explain/faithfulness_win_rate"),
    ("|d score| cited", "explain/faithfulness_cited_abs"),
    ("|d score| random", "explain/faithfulness_random_abs"),
    ("score MSE", "explain/score_mse"),
    ("MSE of mean", "explain/score_mse_mean_baseline"),
    ("judge mean", "explain/judge_mean"),
    ("words", "explain/mean_words"),
]


def lineage(folder: Path) -> set[Path]:
    """A stage folder and every upstream folder it was built from (followed through key.json)."""
    seen: set[Path] = set()
    todo = [Path(folder)]
    while todo:
        current = todo.pop().resolve()
        if current in seen:
            continue
        seen.add(current)
        key = current / "key.json"
        if key.is_file():
            todo += [Path(p) for p in json.loads(key.read_text()).get("upstream", {}).values()]
    return seen


def collect(root: Path, stage: str = "evaluate", only: set[Path] | None = None) -> list[dict[str, Any]]:
    """One entry per complete folder of ``stage`` (restricted to ``only`` when given, e.g. one sweep's
    folders and their upstream): its config essentials and metrics, newest first."""
    runs = []
    for folder in sorted((root / stage).glob("*/")):
        if not (folder / MARKER).exists() or (only is not None and folder.resolve() not in only):
            continue
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        runs.append(
            {"folder": folder, "cfg": cfg, "metrics": metrics, "time": (folder / MARKER).stat().st_mtime}
        )
    # newest first: where two folders give the same table row (e.g. a rerun with other example caps),
    # the newest one is shown and the others are listed as superseded
    return sorted(runs, key=lambda r: -r["time"])


# what an aligner config without these keys (written before they were added) did
ALIGNER_BEFORE_SETTING = {"loss_weighting": "token", "projector_init": "random"}


def aligner_defaults() -> dict[str, Any]:
    """The default aligner settings (conf/aligner/default.yaml, interpolations left out)."""
    from recexplainer.cli import CONF_DIR

    values = yaml.safe_load((CONF_DIR / "aligner" / "default.yaml").read_text())
    return {k: v for k, v in values.items() if not (isinstance(v, str) and v.startswith("${"))}


def recipe(aligner: dict[str, Any]) -> str:
    """The aligner settings that differ from the defaults, e.g. 'lr=0.0005, loss_weighting=example'."""
    defaults = aligner_defaults()
    # folders written before a setting existed ran with its behaviour at the time
    legacy = ALIGNER_BEFORE_SETTING if aligner else {}  # no aligner section at all: nothing to say
    settings = {k: v for k, v in legacy.items() if k in defaults} | dict(aligner)
    changed = [
        f"{k}={v if not isinstance(v, list) else '[' + ','.join(map(str, v)) + ']'}"
        for k, v in settings.items()
        if k in defaults and k != "injection" and v != defaults[k]
    ]
    return ", ".join(changed)


TEMPLATE_METHODS = {
    "template": "template: the recommender's top attributions (no LLM, ceiling)",
    "template_random": "template: random history items (no LLM, floor)",
}


def prompt_mode(cfg: dict[str, Any]) -> str | None:
    """The prompt mode (behavior / intention / hybrid) of a stage folder's saved config; folders written
    before the group was called ``prompt`` name it ``alignment``."""
    section = cfg.get("prompt") or cfg.get("alignment") or {}
    return section.get("mode")


def method_name(cfg: dict[str, Any], model: str, extra: str = "") -> str:
    if model in TEMPLATE_METHODS:
        return TEMPLATE_METHODS[model]
    llm = cfg["llm"]["name"]
    if model == "aligned":
        changed = recipe(cfg.get("aligner", {}))
        extra = extra + (f"; {changed}" if changed else "")
        return f"RecExplainer-{MODE_LETTER[prompt_mode(cfg)]} ({llm}{extra})"
    return f"{llm}, no alignment{extra} ({prompt_mode(cfg)} prompts)"


def explain_rows(
    runs: list[dict[str, Any]], superseded: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per (dataset, method); ``runs`` newest first, older repeats go to ``superseded``."""
    out, seen = [], set()
    superseded = superseded if superseded is not None else []
    for run in runs:
        cfg = run["cfg"]
        judge = cfg.get("judge", {}).get("name", "none")
        method = method_name(cfg, cfg["explain"]["model"], f", judge {judge}" if judge != "none" else "")
        dataset = f"{cfg['dataset']['name']} ({cfg['explain']['split']})"
        if (dataset, method) in seen:
            superseded.append({"dataset": dataset, "method": method, "folder": str(run["folder"])})
            continue
        seen.add((dataset, method))
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


def _row(
    dataset: str, method: str, run: dict[str, Any], prefix: str = "", suffix: str = ""
) -> dict[str, Any]:
    """One table row: the values of the alignment columns stored under ``<prefix><metric><suffix>``."""
    values = {key: run["metrics"].get(f"{prefix}{key}{suffix}") for _, key in alignment_columns()}
    return {
        "dataset": dataset,
        "method": method,
        "values": values,
        "folder": str(run["folder"]),
        "prefix": prefix,
        "suffix": suffix,
    }


def rows(runs: list[dict[str, Any]], superseded: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Table rows: (dataset, method, values by metric key, source folder), one per (dataset, method).

    ``runs`` come newest first (``collect``); older folders that repeat a row go to ``superseded``.
    """
    out, seen_baselines, seen_methods = [], set(), set()
    superseded = superseded if superseded is not None else []
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
        if method and (dataset, method) in seen_methods:
            superseded.append({"dataset": dataset, "method": method, "folder": str(run["folder"])})
        elif method:
            seen_methods.add((dataset, method))
            out.append(_row(dataset, method, run))
            if any(k.startswith("head/") for k in metrics):  # task 1 read off the aligner's item head
                out.append(_row(dataset, f"{method}, item head", run, prefix="head/"))
            if any(k.endswith("/calibrated") for k in metrics):  # yes/no decided at the fitted threshold
                out.append(_row(dataset, f"{method}, calibrated yes/no", run, suffix="/calibrated"))
        for name in ev.get("baselines", []):
            if (dataset, name) in seen_baselines:
                continue
            seen_baselines.add((dataset, name))
            out.append(_row(dataset, f"baseline: {name}", run, prefix=f"baseline/{name}/"))
    order = lambda r: (r["dataset"], r["method"].startswith("baseline"), r["method"])  # noqa: E731
    return sorted(out, key=order)


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if key.endswith("distinct_answers") else f"{value:.4f}"


def markdown(table: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None) -> str:
    columns = columns or alignment_columns()
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


def to_csv(table: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None) -> str:
    columns = columns or alignment_columns()
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


def read_curves(folder: Path) -> dict[str, list[tuple[float, float]]]:
    """Every logged series of a stage folder's CSV logs ({metric: [(step, value)]}), resumed runs joined."""
    series: dict[str, dict[float, float]] = {}
    for path in sorted(folder.glob("logs/version_*/metrics.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                try:
                    step = float(row.get("step") or "nan")
                except ValueError:
                    continue
                for key, value in row.items():
                    if key in ("epoch", "step") or value in (None, ""):
                        continue
                    try:
                        series.setdefault(key, {})[step] = float(value)  # a resumed run overwrites its steps
                    except ValueError:
                        continue
    return {k: sorted(v.items()) for k, v in series.items()}


# per stage, the panels to draw; each panel takes the first of its metric names that a folder logged
# (older aligner logs have no smoothed loss)
CURVES = {
    "aligner": [("train/loss_smooth", "train/loss"), ("valid/loss",)],
    "recommender": [("train/loss_epoch",), ("valid/ndcg@10",)],
}


def curves_plot(root: Path, stage: str, path: Path, only: set[Path] | None = None) -> bool:
    """Training curves of every complete ``stage`` folder under ``root``: one panel per metric in CURVES,
    one line per folder (labelled by method for aligners). False when no folder has logged curves."""
    metrics = CURVES[stage]
    lines = []
    for run in collect(root, stage, only):
        curves = read_curves(run["folder"])
        if not any(curves.get(m) for names in metrics for m in names):
            continue
        name = run["folder"].name
        if stage == "aligner" and prompt_mode(run["cfg"]):
            label = method_name(run["cfg"], "aligned")
        else:
            rec = run["cfg"].get("recommender", {})
            label = f"{rec.get('name', stage)} on {run['cfg'].get('dataset', {}).get('name', '?')}"
        lines.append((f"{label} [{name}]", curves))
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legend_h = 0.2 * len(lines) + 0.3  # inches under the panels for the legend (long method names)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2 + legend_h))
    for ax, names in zip(axes, metrics, strict=True):
        for label, curves in lines:
            points = next((curves[m] for m in names if curves.get(m)), None)
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=label)
        ax.set_xlabel("step")
        ax.set_title(" / ".join(names))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=7, frameon=False)
    fig.suptitle(f"{stage} training curves")
    fig.tight_layout(rect=(0, legend_h / (4.2 + legend_h), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def judge_histogram(runs: list[dict[str, Any]], path: Path) -> bool:
    """Judge score (0-3) distribution per explanation source; False when no run was judged."""
    hists = []
    for run in runs:
        scores = [run["metrics"].get(f"explain/judge_dist_{s}") for s in range(4)]
        if all(v is not None for v in scores) and run["metrics"].get("explain/judge_n", 1):
            cfg = run["cfg"]
            hists.append((method_name(cfg, cfg["explain"]["model"]), scores))
    if not hists:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(hists)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, shares) in enumerate(hists):
        ax.bar([s + i * width for s in range(4)], shares, width, label=label)
    ax.set_xticks([s + 0.4 - width / 2 for s in range(4)], ["0", "1", "2", "3"])
    ax.set_xlabel("judge score")
    ax.set_ylabel("share of explanations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _superseded_note(superseded: list[dict[str, Any]]) -> str:
    if not superseded:
        return ""
    lines = ["", "Older folders repeating a row above (not shown; newest kept):", ""]
    lines += [f"- {r['method']} ({r['dataset']}): {r['folder']}" for r in superseded]
    return "\n".join(lines) + "\n"


def write_report(root: Path, out: Path, only: set[Path] | None = None) -> list[Path]:
    """Write the tables and plots for the folders under ``root`` (all, or those in ``only``) into ``out``;
    returns the written paths."""
    from recexplainer.report import budget

    superseded: list[dict[str, Any]] = []
    evaluate_runs = collect(root, "evaluate", only)
    table = rows(evaluate_runs, superseded)
    explain_runs = collect(root, "explain", only)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if table:
        paths += [out / "alignment.md", out / "alignment.csv"]
        atomic_write_text(paths[-2], markdown(table) + _superseded_note(superseded))
        atomic_write_text(paths[-1], to_csv(table))
        for dataset in dict.fromkeys(r["dataset"] for r in table):
            slug = "_".join("".join(c if c.isalnum() else " " for c in dataset).split())
            paths.append(out / f"alignment_{slug}.png")
            subset = [r for r in table if r["dataset"] == dataset]
            bar_plot(subset, alignment_columns(headline_only=True), paths[-1], f"Alignment, {dataset}")
    if explain_runs:
        old_explain: list[dict[str, Any]] = []
        explain_table = explain_rows(explain_runs, old_explain)
        shown = {r["folder"] for r in explain_table}
        shown_runs = [r for r in explain_runs if str(r["folder"]) in shown]
        paths += [out / "explanations.md", out / "explanations.csv"]
        text = markdown(explain_table, EXPLAIN_COLUMNS) + _superseded_note(old_explain)
        text += "\n" + side_by_side(shown_runs)
        atomic_write_text(paths[-2], text)
        atomic_write_text(paths[-1], to_csv(explain_table, EXPLAIN_COLUMNS))
        if judge_histogram(shown_runs, out / "judge_scores.png"):
            paths.append(out / "judge_scores.png")
    budget_curves = budget.all_curves(evaluate_runs, explain_runs)
    if budget_curves:
        paths.append(out / "budget.md")
        atomic_write_text(paths[-1], budget.markdown(budget_curves))
        for i, (stage, label, points) in enumerate(budget_curves):
            paths.append(out / f"budget_{i}.png")
            budget.plot(label, points, paths[-1], stage)
    for stage in CURVES:
        if curves_plot(root, stage, out / f"training_{stage}.png", only):
            paths.append(out / f"training_{stage}.png")
    if not paths:
        raise SystemExit(
            f"nothing to report under {root}: no complete evaluate, explain, aligner or recommender folders "
            "(run `recexplainer stage=evaluate` first)"
        )
    from recexplainer.report.html import write_html

    # the one-page HTML report of the same folders; not in the returned list (the tables and plots above)
    write_html(root, out, only)
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
    out = args.out or args.root / "report"
    for path in write_report(args.root, out):
        print(path)
    from recexplainer.report.html import HTML_NAME

    print(out / HTML_NAME)
