"""The HTML report: one self-contained page whose every number traces back to a metrics.json."""

import base64
import json
from html.parser import HTMLParser

import pytest

from recexplainer.artifacts import MARKER
from recexplainer.report.html import write_html
from recexplainer.report.tables import write_report

from .helpers import report_root

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"}


class Page(HTMLParser):
    """Collects what the tests look at and checks that every tag is closed in order."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems = [], []
        self.cells, self.urls, self.images, self.headings = [], [], [], []
        self.rows, self.marks, self.bad, self.notes, self.examples = [], [], [], [], []
        self._text = None
        self.feed(text)
        self.close()
        if self.stack:
            self.problems.append(f"unclosed {self.stack}")

    def inside(self, tag, cls=None):
        return any(t == tag and (cls is None or cls in (a.get("class") or "").split()) for t, a in self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "img":
            self.images.append(a["src"])
        if tag == "tr" and "data-folder" in a:
            self.rows.append(a["data-folder"])
        if tag == "td":
            self.cells.append({"folder": self.rows[-1], **a})
        if tag == "div" and "example" in (a.get("class") or ""):
            self.examples.append({"id": a.get("data-id"), "marks": [], "bad": []})
        if tag in ("h2", "mark", "td", "p") or (tag == "span" and a.get("class") == "bad"):
            self._text = []
        if tag not in VOID:
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1][0] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        _, attrs = self.stack.pop()
        text = "".join(self._text or [])
        if tag == "h2":
            self.headings.append(text)
        elif tag == "td":
            self.cells[-1]["text"] = text
        elif tag == "p" and attrs.get("class") == "note":
            self.notes.append(text)
        elif tag == "mark" and self.examples:
            self.examples[-1]["marks"].append(text)
        elif tag == "span" and attrs.get("class") == "bad":
            self.examples[-1]["bad"].append(text)

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


@pytest.fixture
def page(tmp_path):
    root = report_root(tmp_path)
    path = write_html(root, tmp_path / "out")
    assert path == tmp_path / "out" / "index.html"
    text = path.read_text(encoding="utf-8")
    return root, text, Page(text)


def test_page_is_one_self_contained_well_formed_file(page):
    _, text, parsed = page
    assert parsed.problems == []
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert all(url.startswith("data:image/png;base64,") for url in parsed.urls)
    assert len(parsed.images) == 3  # alignment bars (one dataset), aligner and recommender curves
    for src in parsed.images:
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert parsed.headings == [
        "Recommender",
        "Alignment",
        "Training curves",
        "Explanations",
        "Example explanations",
    ]
    assert parsed.notes == [] and "RecExplainer report" in text


def test_every_number_is_the_value_in_its_folders_metrics(page):
    root, _, parsed = page
    metrics = {str(p.parent): json.loads(p.read_text()) for p in root.glob("*/*/metrics.json")}
    valued = [c for c in parsed.cells if "data-value" in c]
    for cell in valued:
        assert float(cell["data-value"]) == metrics[cell["folder"]][cell["data-key"]], cell
    for cell in parsed.cells:
        if "data-value" not in cell:
            assert cell["text"] == "-" and cell["data-key"] not in metrics[cell["folder"]], cell
    by_key = {("/".join(c["folder"].split("/")[-2:]), c["data-key"]): c for c in valued}
    new = str(root / "evaluate" / "new")
    # baselines come once, from the newest evaluate folder; the shown text is report._cell's format
    assert {c["folder"] for c in valued if c["data-key"].startswith("baseline/")} == {new}
    assert by_key["evaluate/new", "task1/hr@5"]["text"] == "0.1800"
    assert by_key["evaluate/new", "task1/distinct_answers"]["text"] == "12"
    assert by_key["evaluate/new", "task3/acc"]["data-value"] == repr(1 / 3)
    assert by_key["evaluate/new", "baseline/popularity/task3/acc"]["text"] == "0.7950"
    assert by_key["recommender/r", "test/hr@10"]["text"] == "0.3000"
    assert by_key["explain/new", "explain/attribution_agreement"]["text"] == "0.6000"
    keys = {c["data-key"] for c in parsed.cells}
    assert (
        "explain/distinct_ratio" in keys and "explain/template_copy_rate" not in keys
    )  # extras where present
    assert "explain/faithfulness_ratio" in keys  # a column of every explanation table ("-" where missing)
    assert "test/hr@20" not in keys and "n_params" not in keys  # recommender columns only where present
    assert len(valued) == 4 + 7 + 4  # recommender, evaluate (methods and baselines), explain


def test_examples_highlight_the_cited_titles_of_the_newest_explain_folder(page):
    _, text, parsed = page
    assert len(parsed.examples) == 12  # the default number of examples
    first = parsed.examples[0]
    assert first["id"] == "explain/test/u1-pos"
    assert first["marks"] == ["Heat (1995)", "Tom & Jerry <3"]  # exactly the cited items, by title
    assert first["bad"] == ["Babe (1995)"]  # hallucinated, in red
    assert all(e["marks"] == [] and e["bad"] == [] for e in parsed.examples[1:])
    assert "Tom &amp; Jerry &lt;3" in text and "Tom & Jerry <3" not in text  # escaped
    assert "+0.2500" in text and "-0.1250" in text  # attributions next to their history items
    assert "changes the recommender's score by" in text and "-0.5000" in text and "0.1250" in text
    assert "recommender: <b>yes</b>; explainer: <b>no</b> (P(yes) 0.400)" in text
    assert "From the old folder." not in text


def test_missing_sections_leave_a_note_not_a_crash(tmp_path):
    root = report_root(tmp_path, n_records=3, data=False)
    for stage in ("recommender", "aligner"):
        for marker in (root / stage).glob(f"*/{MARKER}"):
            marker.unlink()  # incomplete: not reported
    parsed = Page(write_html(root, tmp_path / "out").read_text())
    assert parsed.problems == []
    assert parsed.notes == [
        "No complete recommender folders.",
        "No aligner or recommender folder has logged training curves.",
        "Item titles could not be loaded: items are shown by id.",
    ]
    assert parsed.examples[0]["marks"] == ["item 1", "item 2"] and len(parsed.examples) == 3
    empty = Page(write_html(tmp_path / "nothing", tmp_path / "empty").read_text())
    assert len(empty.notes) == 5 and empty.problems == [] and empty.images == []


@pytest.mark.slow
def test_write_report_also_writes_the_page_and_the_cli_prints_it(tmp_path, monkeypatch, capsys):
    from recexplainer.report import tables as report

    root = report_root(tmp_path, n_records=2)
    paths = write_report(root, tmp_path / "report")
    assert (tmp_path / "report" / "index.html").is_file() and all(p.suffix != ".html" for p in paths)
    monkeypatch.setattr("sys.argv", ["report", "--root", str(root), "--out", str(tmp_path / "cli")])
    report.main()
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "cli" / "index.html")


@pytest.mark.slow
def test_only_restricts_the_page_to_those_folders(tmp_path):
    from recexplainer.report.tables import lineage

    root = report_root(tmp_path, n_records=2)
    parsed = Page(write_html(root, tmp_path / "out", only=lineage(root / "evaluate" / "new")).read_text())
    assert {c["folder"] for c in parsed.cells} == {str(root / "evaluate" / "new")}
    assert len(parsed.notes) == 4 and len(parsed.images) == 1  # recommender, curves, explanations, examples
