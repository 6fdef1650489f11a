"""One self-contained HTML page for an artifact root: recommender, alignment and explanation tables, the
plots of ``recexplainer.report`` embedded as data URIs, and example explanations with the user's history.

    write_html(root, out)  # -> out/index.html; opens from disk, no server, no JavaScript, no external URL

Every number in a table cell carries its source: ``<tr data-folder=...>`` names the stage folder and
``<td data-key=... data-value=...>`` the exact key and value in that folder's ``metrics.json``.
"""

from __future__ import annotations

import base64
import json
import tempfile
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from recexplainer.artifacts import atomic_write_text
from recexplainer.report import budget
from recexplainer.report.tables import (
    CURVES,
    EXPLAIN_COLUMNS,
    _cell,
    alignment_columns,
    bar_plot,
    collect,
    curves_plot,
    explain_rows,
    judge_histogram,
    lineage,
    method_name,
    rows,
)

HTML_NAME = "index.html"
RECOMMENDER_COLUMNS = [
    (f"{split} {name}@{k}", f"{split}/{name.lower()}@{k}")
    for split, name, k in [
        ("test", "HR", 10),
        ("test", "NDCG", 10),
        ("test", "HR", 5),
        ("test", "NDCG", 5),
        ("test", "HR", 20),
        ("test", "NDCG", 20),
        ("valid", "NDCG", 10),
    ]
]
# shown only when some explain folder has them
EXPLAIN_EXTRA = [
    ("distinct ratio", "explain/distinct_ratio"),
    ("template copy rate", "explain/template_copy_rate"),
    ("judge rho vs attribution agreement", "explain/judge_rho_attribution_agreement"),
    ("judge rho vs faithfulness", "explain/judge_rho_faithfulness"),
    ("judge mean, faithful", "explain/judge_mean_faithful"),
    ("judge mean, unfaithful", "explain/judge_mean_unfaithful"),
]
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta,.note,.folder{color:#666} .note{font-style:italic}
.scroll{overflow-x:auto;margin:.5em 0 1em}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:3px 7px} td{text-align:right}
thead th{background:#f3f3f3;font-weight:600} tbody th{text-align:left;font-weight:normal}
tbody tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #eee} figure{margin:.5em 0}
.example{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.example h3{margin:.2em 0;font-size:1em}
ol.history{display:flex;flex-wrap:wrap;gap:3px 1.2em;margin:.4em 0;padding:0;list-style:none;counter-reset:h}
ol.history li::before{counter-increment:h;content:counter(h) ". ";color:#999}
mark{background:#ffe066} .attr{color:#555;font-size:.9em}
.bar{display:inline-block;height:.6em;vertical-align:middle;margin-left:.3em}
.pos{background:#4c9be8} .neg{background:#e8834c}
blockquote{margin:.5em 0;padding:.3em .8em;border-left:4px solid #bbb;background:#f7f7f7}
.bad{color:#c00;font-weight:600} .agree{color:#080} .disagree{color:#c00}
"""


def _td(value: Any, key: str) -> str:
    """A table cell with its exact source value (``repr`` of the float) when there is one."""
    if value is None:
        return f'<td data-key="{escape(key)}">-</td>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f'<td data-key="{escape(key)}">{escape(str(value))}</td>'
    number = float(value)
    return (
        f'<td data-key="{escape(key)}" data-value="{escape(repr(number))}">{escape(_cell(number, key))}</td>'
    )


def _table(table: list[dict[str, Any]], columns: list[tuple[str, str]], labels: list[str]) -> str:
    """Rows with ``labels`` (leading header cells), ``values`` by column key, ``folder`` and an optional
    ``prefix`` / ``suffix`` of the keys in that folder's metrics.json (baselines: ``baseline/<name>/``;
    calibrated yes/no decisions: ``/calibrated``)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in labels + [h for h, _ in columns])
    body = []
    for r in table:
        folder = escape(str(r["folder"]))
        lead = "".join(f'<th scope="row" title="{folder}">{escape(str(x))}</th>' for x in r["labels"])
        cells = "".join(
            _td(r["values"].get(k), r.get("prefix", "") + k + r.get("suffix", "")) for _, k in columns
        )
        body.append(f'<tr data-folder="{folder}">{lead}{cells}</tr>')
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _superseded(old: list[dict[str, Any]]) -> str:
    if not old:
        return ""
    items = "".join(
        f"<li>{escape(r['method'])} ({escape(r['dataset'])}): {escape(r['folder'])}</li>" for r in old
    )
    return (
        f'<p class="folder">Older folders repeating a row above (not shown; newest kept):</p><ul>{items}</ul>'
    )


def _recommender(root: Path, only: set[Path] | None) -> str:
    table = []
    for run in collect(root, "recommender", only):
        cfg, metrics = run["cfg"], run["metrics"]
        labels = [cfg.get("dataset", {}).get("name", "?"), cfg.get("recommender", {}).get("name", "?")]
        values = {k: metrics.get(k) for _, k in RECOMMENDER_COLUMNS}
        table.append({"labels": labels, "values": values, "folder": str(run["folder"])})
    if not table:
        return _note("No complete recommender folders.")
    columns = [c for c in RECOMMENDER_COLUMNS if any(r["values"][c[1]] is not None for r in table)]
    return _table(sorted(table, key=lambda r: r["labels"]), columns, ["dataset", "model"])


def _alignment(root: Path, only: set[Path] | None, tmp: Path) -> str:
    old: list[dict[str, Any]] = []
    table = rows(collect(root, "evaluate", only), old)
    if not table:
        return _note("No complete evaluate folders.")
    parts = []
    for i, dataset in enumerate(dict.fromkeys(r["dataset"] for r in table)):
        subset = [r for r in table if r["dataset"] == dataset]
        for r in subset:
            r["labels"] = [r["method"]]
        png = tmp / f"alignment_{i}.png"
        bar_plot(subset, alignment_columns(headline_only=True), png, f"Alignment, {dataset}")
        parts += [
            f"<h3>{escape(dataset)}</h3>",
            _table(subset, alignment_columns(), ["method"]),
            _img(png, dataset),
        ]
    return "".join(parts) + _superseded(old)


def _budget(root: Path, only: set[Path] | None, tmp: Path) -> str:
    parts = []
    found = budget.all_curves(collect(root, "evaluate", only), collect(root, "explain", only))
    for i, (stage, label, points) in enumerate(found):
        budget.plot(label, points, tmp / f"budget_{i}.png", stage)
        table = [
            {"labels": [row], "values": m, "folder": folder}
            for row, (_, m, folder, _) in zip(budget.row_labels(points), points, strict=True)
        ]
        table += [
            {
                "labels": [f"baseline: {name}"],
                "values": values,
                "folder": folder,
                "prefix": f"baseline/{name}/",
            }
            for name, values, folder in budget.baselines(points, stage)
        ]
        parts += [
            f"<h3>{escape(label)}</h3>",
            _table(table, budget.columns(stage), ["budget (min)"]),
            _img(tmp / f"budget_{i}.png", label),
        ]
    return "".join(parts)


def _curves(root: Path, only: set[Path] | None, tmp: Path) -> str:
    parts = []
    for stage in CURVES:
        if curves_plot(root, stage, tmp / f"training_{stage}.png", only):
            parts += [f"<h3>{escape(stage)}</h3>", _img(tmp / f"training_{stage}.png", f"{stage} curves")]
    return "".join(parts) or _note("No aligner or recommender folder has logged training curves.")


def _explanations(runs: list[dict[str, Any]], tmp: Path) -> tuple[str, list[dict[str, Any]]]:
    """The explanation table and the runs it shows (newest first)."""
    old: list[dict[str, Any]] = []
    table = explain_rows(runs, old)
    if not table:
        return _note("No complete explain folders."), []
    metrics = {str(run["folder"]): run["metrics"] for run in runs}
    for r in table:
        r["labels"] = [r["dataset"], r["method"]]
        r["values"] |= {k: metrics[r["folder"]].get(k) for _, k in EXPLAIN_EXTRA}
    extra = [c for c in EXPLAIN_EXTRA if any(r["values"][c[1]] is not None for r in table)]
    shown = [run for run in runs if str(run["folder"]) in {r["folder"] for r in table}]
    html = _table(table, EXPLAIN_COLUMNS + extra, ["dataset", "method"]) + _superseded(old)
    if judge_histogram(shown, tmp / "judge_scores.png"):
        html += _img(tmp / "judge_scores.png", "judge scores")
    return html, shown


def _titles(folder: Path) -> list[str] | None:
    """Item titles of the data folder an explain folder was built from; None when it cannot be loaded."""
    from recexplainer.data.dataset import SequentialData

    try:
        upstream = json.loads((folder / "key.json").read_text()).get("upstream", {})
        data = Path(upstream["data"]) if "data" in upstream else None
        data = data or next(p for p in lineage(folder) if p.parent.name == "data")
        return SequentialData.load(data).titles
    except Exception:  # noqa: BLE001 - a missing / foreign data folder: show item ids instead
        return None


def _example(r: dict[str, Any], title: Any) -> str:
    history, cited = [int(h) for h in r.get("history", [])], {int(c) for c in r.get("cited", [])}
    attributions = r.get("attributions")
    if not isinstance(attributions, list) or len(attributions) != len(history):
        attributions = None
    scale = max((abs(a) for a in attributions or [] if a is not None), default=0.0) or 1.0
    items = []
    for pos, item in enumerate(history):
        name = escape(title(item))
        text = f'<mark data-item="{item}">{name}</mark>' if item in cited else name
        value = attributions[pos] if attributions else None
        if value is not None:
            sign = "pos" if value >= 0 else "neg"
            width = round(60 * abs(value) / scale)
            text += f' <span class="attr">{value:+.4f}</span><span class="bar {sign}" style="width:{width}px"></span>'
        items.append(f"<li>{text}</li>")
    answer, decision = str(r.get("answer", "?")), str(r.get("decision", "?"))
    agree = "agree" if answer == decision else "disagree"
    p_yes = r.get("p_yes")
    p_text = f" (P(yes) {p_yes:.3f})" if isinstance(p_yes, (int, float)) else ""
    parts = [
        f'<div class="example" data-id="{escape(str(r.get("id", "")))}">',
        f"<h3>{escape(str(r.get('id', '')))}: recommend {escape(title(r.get('item', -1)))}?</h3>",
        f'<ol class="history">{"".join(items)}</ol>' if items else "<p>(empty history)</p>",
        f'<p class="{agree}">recommender: <b>{escape(answer)}</b>; explainer: <b>{escape(decision)}</b>'
        f"{escape(p_text)}</p>",
        f"<blockquote>&ldquo;{escape(str(r.get('text', '')))}&rdquo;</blockquote>",
    ]
    if r.get("hallucinated"):
        bad = ", ".join(f'<span class="bad">{escape(title(h))}</span>' for h in r["hallucinated"])
        parts.append(f"<p>names items not in the history: {bad}</p>")
    cf = r.get("counterfactual")
    if isinstance(cf, dict) and "cited_delta" in cf:
        parts.append(
            f"<p>removing the cited items changes the recommender's score by "
            f'<span data-key="cited_delta" data-value="{-float(cf["cited_delta"])!r}">'
            f"{-float(cf['cited_delta']):+.4f}</span> (random items of the same number: "
            f'<span data-key="random_abs" data-value="{float(cf.get("random_abs", 0.0))!r}">'
            f"{float(cf.get('random_abs', 0.0)):.4f}</span> on average, absolute)</p>"
        )
    return "".join(parts) + "</div>"


def _examples(runs: list[dict[str, Any]], n: int) -> str:
    if not runs:
        return _note("No explain folder to take examples from.")
    # the newest aligned LLM's explanations (what the report is about), else the newest shown
    run = next((r for r in runs if r["cfg"].get("explain", {}).get("model") == "aligned"), runs[0])
    path = run["folder"] / "explanations.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if not records:
        return _note(f"No explanations in {path}.")
    titles = _titles(run["folder"])

    def title(item: Any) -> str:
        item = int(item)
        return titles[item] if titles and 0 <= item < len(titles) else f"item {item}"

    cfg = run["cfg"]
    head = (
        f"{method_name(cfg, cfg['explain']['model'])}, {cfg['dataset']['name']}: {len(records)} explanations"
    )
    note = "" if titles else _note("Item titles could not be loaded: items are shown by id.")
    body = "".join(_example(r, title) for r in records[:n])
    return f'<p class="folder">{escape(head)}; first {min(n, len(records))} from {escape(str(path))}</p>{note}{body}'


def write_html(root: Path, out: Path, only: set[Path] | None = None, examples: int = 12) -> Path:
    """Write ``out/index.html`` for the folders under ``root`` (all, or those in ``only``); returns its path."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        explain_table, shown = _explanations(collect(root, "explain", only), tmp)
        sections = [
            ("Recommender", _recommender(root, only)),
            ("Alignment", _alignment(root, only, tmp)),
            ("Alignment vs training budget", _budget(root, only, tmp)),  # only with a budget sweep
            ("Training curves", _curves(root, only, tmp)),
            ("Explanations", explain_table),
            ("Example explanations", _examples(shown, examples)),
        ]
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    body = "".join(
        f'<section id="{escape(t.lower().replace(" ", "-"))}"><h2>{escape(t)}</h2>{html}</section>'
        for t, html in sections
        if html
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>RecExplainer report</title><style>{CSS}</style></head><body>"
        f'<h1>RecExplainer report</h1><p class="meta">artifact root: <code>{escape(str(root.resolve()))}</code>'
        f"<br>generated {escape(now)}</p>{body}</body></html>\n"
    )
    path = out / HTML_NAME
    atomic_write_text(path, page)
    return path
