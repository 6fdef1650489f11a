"""Adding a task kind is one module and one YAML file: a toy kind, imported through ``plugins``, runs
through the alignment-data and evaluate stages, its baselines and the report columns."""

import json
import sys

import pytest

from recexplainer import tasks as kinds
from recexplainer.cli import run
from recexplainer.config import ConfigError
from recexplainer.report.tables import alignment_columns

TOY_YAML = """\
defaults:
  - default
  - _self_

last_item:
  kind: last_item
  task_id: 7
  modes: [behavior, intention, hybrid]
  max_eval: 12
  templates:
    - "Which item did the user {user} consume last? Give its title."
"""

TOY_MODULE = '''
from recexplainer.tasks import Column, TaskKind, register
from recexplainer.tasks.metrics import valid_ratio


@register
class LastItem(TaskKind):
    """Toy kind: the LLM names the last item of the user's history prefix."""

    name = "last_item"
    order = 50
    fields = required = frozenset({"user"})
    prefix, answer = "last_item", "titles"
    metrics = ("acc", "valid_ratio")
    columns = (Column("Last item", "last item acc", "last_item/acc"),)

    def examples(self, builder, p, row, key, user, base):
        last = int(p.histories[row][-1])
        text, slots = user
        return [builder.example(p.split, key, {"user": text}, {"user": slots}, builder.titles[last],
                                labels={"item": last}, **base)]

    def score(self, row, prediction):
        items = prediction["items"] or [None]
        return {"acc": float(items[0] == row["labels"]["item"]), "valid_ratio": valid_ratio(items)}

    def answer_popularity(self, b, row):
        return b.top(b.by_popularity, set(), 1)

    def answer_random(self, b, row):
        return [int(b.rng(row).integers(1, b.n_items + 1))]
'''


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """The toy kind's module and YAML file in tmp_path; the registry is restored afterwards."""
    (tmp_path / "toy_last_item.py").write_text(TOY_MODULE)
    (tmp_path / "conf" / "tasks").mkdir(parents=True)
    (tmp_path / "conf" / "tasks" / "with_last_item.yaml").write_text(TOY_YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    kinds.KINDS.pop("last_item", None)
    sys.modules.pop("toy_last_item", None)


def test_registry_lists_the_built_in_kinds_in_report_order():
    assert list(kinds.evaluable())[:5] == ["retrieval", "ranking", "interest", "interest_hard", "history"]
    assert [c for c, _ in alignment_columns()[:3]] == ["T1 HR@5", "T1 NDCG@5", "T2 NDCG@5"]
    with pytest.raises(ValueError, match="not a task kind; choose one of retrieval, ranking"):
        kinds.get("retrival")


def test_a_plugin_task_kind_runs_through_labels_evaluation_and_report(toy_plugin, make_cfg):
    cfg = make_cfg(
        "plugins=[toy_last_item]",
        f"hydra.searchpath=[file://{toy_plugin / 'conf'}]",
        "tasks=with_last_item",
        "stage=evaluate",
        "evaluation.model=none",
        "evaluation.baselines=[random,popularity]",
        "evaluation.tasks=[last_item]",
    )
    folder = run(cfg)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["count/last_item"] == 12
    for baseline in ("random", "popularity"):
        assert 0.0 <= metrics[f"baseline/{baseline}/last_item/acc"] <= 1.0
    examples = folder.parent.parent / "alignment_data"
    rows = [json.loads(line) for f in examples.glob("*/examples/last_item.test.jsonl") for line in f.open()]
    assert len(rows) == 12 and all(r["labels"]["item"] == r["history"][-1] for r in rows)
    assert ("Last item", "last_item/acc") in alignment_columns(headline_only=True)


def test_an_unimportable_plugin_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="plugins: cannot import 'no_such_module'"):
        run(make_cfg("plugins=[no_such_module]"))
