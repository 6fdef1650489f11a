"""Alignment and explanation quality against the aligner's training budget (``aligner.budget_minutes``): a
table and a plot per curve, a curve being the evaluate (or explain) folders of aligned models that differ only
in their budget and their aligner seed (``aligner.seed``: replicates at a budget are rows of their own, and the
plot draws each of them and the line through their mean)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from recexplainer.evaluate.predictors import BaselinePredictor
from recexplainer.report.tables import alignment_columns, method_name

Point = tuple[float, dict[str, float], str, Any]  # budget minutes, stage metrics, stage folder, aligner seed

# the explain stage's headline metrics on the curve: how the explanations follow the recommender
EXPLAIN_CURVE_COLUMNS = [
    ("decision acc", "explain/decision_acc"),
    ("cites history", "explain/citation_rate"),
    ("attribution agreement", "explain/attribution_agreement"),
    ("faithful win rate", "explain/faithfulness_win_rate"),
    ("faithfulness ratio", "explain/faithfulness_ratio"),  # 1: as random citations; not on the 0-1 plot
]
_UNBOUNDED = {"explain/faithfulness_ratio"}


def curves(runs: list[dict[str, Any]], stage: str = "evaluate") -> dict[str, list[Point]]:
    """{curve label: [(budget minutes, metrics, folder, aligner seed)] sorted by budget, then seed} for curves
    of at least two budgets; ``runs`` newest first (``collect``) of ``stage`` (evaluate or explain): a repeated
    point (the same budget and seed) keeps its newest folder. The seed is ``aligner.seed``, or the run's seed
    where that is null."""
    points: dict[str, dict[tuple[float, str], Point]] = {}
    for run in runs:
        cfg = run["cfg"]
        section = cfg.get("evaluation" if stage == "evaluate" else "explain") or {}
        aligner = dict(cfg.get("aligner") or {})
        minutes = aligner.pop("budget_minutes", None)
        seed = aligner.pop("seed", None)
        seed = cfg.get("seed") if seed is None else seed
        if section.get("model") != "aligned" or minutes is None:
            continue
        if stage == "evaluate":
            extra = ", constrained" if section.get("constrained") else ""
        else:
            judge = (cfg.get("judge") or {}).get("name", "none")
            extra = ", explanations" + (f", judge {judge}" if judge != "none" else "")
        label = f"{cfg['dataset']['name']} ({section['split']}): {method_name({**cfg, 'aligner': aligner}, 'aligned', extra)}"
        point = (float(minutes), run["metrics"], str(run["folder"]), seed)
        points.setdefault(label, {}).setdefault((point[0], str(seed)), point)
    return {
        label: [p[k] for k in sorted(p, key=lambda k: (k[0], _seed_order(k[1])))]
        for label, p in points.items()
        if len({minutes for minutes, _ in p}) >= 2
    }


def _seed_order(seed: str) -> tuple[int, str]:
    return (0, f"{int(seed):020d}") if seed.lstrip("-").isdigit() else (1, seed)


def row_labels(points: list[Point]) -> list[str]:
    """The budget of each point, with its seed where a curve has several points at one budget."""
    budgets = [p[0] for p in points]
    replicated = len(set(budgets)) < len(budgets)

    def seed_note(seed: Any) -> str:
        return "" if not replicated else " (default seed)" if seed is None else f" (seed {seed})"

    return [f"{m:g}{seed_note(seed)}" for m, _, _, seed in points]


def _mean_line(points: list[Point], key: str) -> list[tuple[float, float]]:
    """(budget, mean of the metric over the points at that budget that have it), by budget."""
    by_budget: dict[float, list[float]] = {}
    for minutes, m, _, _ in points:
        if m.get(key) is not None:
            by_budget.setdefault(minutes, []).append(float(m[key]))
    return [(minutes, sum(v) / len(v)) for minutes, v in sorted(by_budget.items())]


# tasks read off the aligned LLM's item head (aligner.item_head_weight > 0), beside the LLM's own answers: task 1,
# task 2 (the shown candidates in head-score order), and task 3 / 3-hard at the calibrated threshold (the head's
# P(yes) is a percentile: 0.5 is not its cut)
HEAD_CURVE_COLUMNS = [
    ("T1 HR@5, item head", "head/task1/hr@5"),
    ("T2 NDCG@5, item head", "head/task2/ndcg@5"),
    ("T3 Acc, item head (calibrated)", "head/task3/acc/calibrated"),
    ("T3-hard Acc, item head (calibrated)", "head/task3_hard/acc/calibrated"),
]


def columns(stage: str) -> list[tuple[str, str]]:
    """(header, metric) shown for a curve of ``stage`` (a column no point has is left out)."""
    if stage == "evaluate":
        return alignment_columns(headline_only=True) + HEAD_CURVE_COLUMNS
    return EXPLAIN_CURVE_COLUMNS


Curve = tuple[str, str, list[Point]]  # stage (evaluate or explain), label, points


def baselines(points: list[Point], stage: str) -> list[tuple[str, dict[str, float], str]]:
    """(name, {curve column key: value}, folder) of each baseline the curve's evaluate folders hold
    (``baseline/<name>/<key>``), read from the first point that has it: the baselines depend on the data, the
    recommender and the examples, not on the aligner, so every point of a curve holds the same ones. In the
    evaluate stage's order of its baselines (``BaselinePredictor.NAMES``); explanation curves have none."""
    if stage != "evaluate":
        return []
    keys = {k for _, k in columns(stage)}
    found: dict[str, tuple[dict[str, float], str]] = {}
    for _, metrics, folder, _ in points:
        here: dict[str, dict[str, float]] = {}
        for metric, value in metrics.items():
            name, _, key = metric.removeprefix("baseline/").partition("/")
            if metric.startswith("baseline/") and key in keys and value is not None:
                here.setdefault(name, {})[key] = float(value)
        for name, values in here.items():
            found.setdefault(name, (values, folder))
    order = {name: i for i, name in enumerate(BaselinePredictor.NAMES)}
    return [(n, *found[n]) for n in sorted(found, key=lambda n: (order.get(n, len(order)), n))]


def all_curves(evaluate_runs: list[dict[str, Any]], explain_runs: list[dict[str, Any]]) -> list[Curve]:
    """Every curve of the report: the alignment curves (evaluate folders), then the explanation curves."""
    return [
        (stage, label, points)
        for stage, runs in (("evaluate", evaluate_runs), ("explain", explain_runs))
        for label, points in curves(runs, stage).items()
    ]


def markdown(found: list[Curve]) -> str:
    lines: list[str] = []
    for stage, label, points in found:
        heading = f"# {'Alignment' if stage == 'evaluate' else 'Explanation'} quality vs aligner budget"
        if heading not in lines:
            lines += [heading, ""]
        shown = [(h, k) for h, k in columns(stage) if any(m.get(k) is not None for _, m, _, _ in points)]
        lines += [f"## {label}", "", "| budget (min) | " + " | ".join(h for h, _ in shown) + " |"]
        lines.append("| --- " * (len(shown) + 1) + "|")
        rows = [(row, m) for row, (_, m, _, _) in zip(row_labels(points), points, strict=True)]
        rows += [(f"baseline: {name}", values) for name, values, _ in baselines(points, stage)]
        for row, m in rows:
            cells = [f"{m[k]:.4f}" if m.get(k) is not None else "-" for _, k in shown]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(label: str, points: list[Point], path: Path, stage: str = "evaluate") -> None:
    """One line per headline metric (in [0, 1]) against the budget in minutes (log scale), through the mean
    of the seeds at each budget; with several seeds at a budget every point is drawn as well. A dashed line
    of the metric's colour marks the strongest baseline on it (the highest of ``baselines``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    replicated = len({p[0] for p in points}) < len(points)
    found = baselines(points, stage)
    dashed = False
    tab20 = plt.get_cmap(
        "tab20"
    ).colors  # 20 distinct colours (the curve has up to 11 metrics): dark shades first
    palette = tab20[0::2] + tab20[1::2]
    for i, (header, key) in enumerate(columns(stage)):  # a metric no point has gets no line
        line = _mean_line(points, key)
        if not line or key in _UNBOUNDED:
            continue
        (drawn,) = ax.plot(
            *zip(*line, strict=True),
            marker="o",
            color=palette[i % len(palette)],
            label=header + (" (mean)" if replicated else ""),
        )
        if replicated:
            xy = [(minutes, m[key]) for minutes, m, _, _ in points if m.get(key) is not None]
            ax.scatter(*zip(*xy, strict=True), s=12, color=drawn.get_color(), alpha=0.6)
        best = max((values[key] for _, values, _ in found if key in values), default=None)
        if best is not None:
            ax.axhline(best, color=drawn.get_color(), linestyle="--", linewidth=0.9, alpha=0.7)
            dashed = True
    if dashed:  # one legend entry for every dashed line
        ax.plot([], [], color="grey", linestyle="--", linewidth=0.9, label="strongest baseline (dashed)")
    ax.set_xscale("log")
    budgets = sorted({p[0] for p in points})
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())  # the budgets alone, no 2x10^1 labels
    ax.set_xlabel("aligner budget (minutes at aligner.budget_tokens_per_s)")
    ax.set_ylim(0, 1)
    ax.set_title(textwrap.fill(label, 70), fontsize=8)  # a long label stays inside the figure
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
