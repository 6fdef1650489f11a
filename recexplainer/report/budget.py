"""Alignment quality against the aligner's training budget (``aligner.budget_minutes``): a table and a plot
per curve, a curve being the evaluate folders of aligned models that differ only in their budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recexplainer.report.tables import alignment_columns, method_name

Point = tuple[float, dict[str, float], str]  # budget minutes, evaluate metrics, evaluate folder


def curves(runs: list[dict[str, Any]]) -> dict[str, list[Point]]:
    """{curve label: [(budget minutes, metrics, folder)] sorted by budget} for curves of at least two
    budgets; ``runs`` newest first (``collect``): a repeated point keeps its newest folder."""
    points: dict[str, dict[float, Point]] = {}
    for run in runs:
        cfg = run["cfg"]
        ev, aligner = cfg.get("evaluation") or {}, dict(cfg.get("aligner") or {})
        minutes = aligner.pop("budget_minutes", None)
        if ev.get("model") != "aligned" or minutes is None:
            continue
        extra = ", constrained" if ev.get("constrained") else ""
        label = f"{cfg['dataset']['name']} ({ev['split']}): {method_name({**cfg, 'aligner': aligner}, 'aligned', extra)}"
        point = (float(minutes), run["metrics"], str(run["folder"]))
        points.setdefault(label, {}).setdefault(point[0], point)
    return {label: [p[m] for m in sorted(p)] for label, p in points.items() if len(p) >= 2}


def markdown(found: dict[str, list[Point]]) -> str:
    columns = alignment_columns(headline_only=True)
    lines = ["# Alignment quality vs aligner budget", ""]
    for label, points in found.items():
        shown = [(h, k) for h, k in columns if any(m.get(k) is not None for _, m, _ in points)]
        lines += [f"## {label}", "", "| budget (min) | " + " | ".join(h for h, _ in shown) + " |"]
        lines.append("| --- " * (len(shown) + 1) + "|")
        for minutes, m, _ in points:
            cells = [f"{m[k]:.4f}" if m.get(k) is not None else "-" for _, k in shown]
            lines.append(f"| {minutes:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(label: str, points: list[Point], path: Path) -> None:
    """One line per headline metric against the budget in minutes (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for header, key in alignment_columns(headline_only=True):
        xy = [(minutes, m[key]) for minutes, m, _ in points if m.get(key) is not None]
        if xy:
            ax.plot(*zip(*xy, strict=True), marker="o", label=header)
    ax.set_xscale("log")
    ax.set_xticks([p[0] for p in points], [f"{p[0]:g}" for p in points])
    ax.set_xlabel("aligner budget (minutes at aligner.budget_tokens_per_s)")
    ax.set_ylim(0, 1)
    ax.set_title(label, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
