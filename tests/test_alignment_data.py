import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from recexplainer.alignment_data.labels import Prefixes
from recexplainer.alignment_data.stage import key_fields as alignment_key_fields
from recexplainer.alignment_data.templates import TemplateError, render, template_fields
from recexplainer.cli import run
from recexplainer.config import ConfigError, TaskConfig, validate
from recexplainer.data.dataset import SequentialData
from recexplainer.pipeline import STAGES, stage_folder
from recexplainer.recommender import load_recommender, pad_left
from recexplainer.tasks import validate as validate_task
from recexplainer.tasks.replay import read_replay

from .helpers import TINY, TINY_SASREC, compose_config

SMALL_TASKS = [
    f"tasks.{t}.max_eval=30" for t in ("retrieval", "ranking", "interest", "interest_hard", "history")
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("align")


def build(root: Path, mode: str, *extra: str) -> Path:
    cfg = compose_config(
        [
            f"paths.artifacts={root}",
            *TINY,
            *TINY_SASREC,
            "stage=alignment_data",
            f"prompt={mode}",
            *SMALL_TASKS,
            "tasks.interest_hard.train_per_user=1",
            *extra,
        ]
    )
    return run(cfg)


def examples(folder: Path, task: str, split: str) -> list[dict]:
    with open(folder / "examples" / f"{task}.{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def hybrid(root):
    return build(root, "hybrid")


@pytest.fixture(scope="module")
def context(root, hybrid):
    cfg = compose_config([f"paths.artifacts={root}", *TINY, *TINY_SASREC])
    data = SequentialData.load(stage_folder(cfg, "data"))
    model = load_recommender(stage_folder(cfg, "recommender"))
    return data, model


def scores_for(model, history):
    with torch.no_grad():
        return model.score(
            pad_left([history], model.max_len), torch.tensor([0]), exclude=pad_left([history])
        )[0]


@pytest.mark.slow
def test_retrieval_target_is_the_recommenders_argmax_without_the_prefix(hybrid, context):
    data, model = context
    rows = examples(hybrid, "retrieval", "train") + examples(hybrid, "retrieval", "test")
    assert rows
    for row in rows:
        scores = scores_for(model, row["history"])
        assert row["labels"]["item"] == int(scores.argmax()) and row["labels"]["item"] not in row["history"]
        assert row["target"] == data.titles[row["labels"]["item"]]


@pytest.mark.slow
def test_retrieval_top_k_target_lists_the_recommenders_top_k_in_order(root, context, hybrid):
    data, model = context
    folder = build(root, "hybrid", "tasks.retrieval.target_k=3")
    assert folder != hybrid  # its own alignment data
    rows = examples(folder, "retrieval", "train")
    assert rows
    for row in rows:
        scores = scores_for(model, row["history"]).clone()
        top = row["labels"]["target_items"]
        assert top[0] == row["labels"]["item"] == int(scores.argmax()) and len(set(top)) == 3
        assert [float(scores[i]) for i in top] == sorted(scores.tolist(), reverse=True)[:3]
        assert not set(top) & set(row["history"])
        assert row["target"] == "; ".join(data.titles[i] for i in top)
    # the test examples keep the top-1 label the evaluation scores
    assert all("target_items" in r["labels"] for r in examples(folder, "retrieval", "test"))


def test_retrieval_target_k_one_keeps_the_alignment_data_key():
    default = compose_config(["paths.artifacts=/tmp/unused"])
    one = compose_config(["paths.artifacts=/tmp/unused", "tasks.retrieval.target_k=1"])
    three = compose_config(["paths.artifacts=/tmp/unused", "tasks.retrieval.target_k=3"])
    assert "target_k" not in json.dumps(alignment_key_fields(default))
    assert stage_folder(one, "alignment_data") == stage_folder(default, "alignment_data")
    assert stage_folder(three, "alignment_data") != stage_folder(default, "alignment_data")


def test_ranking_target_is_in_the_recommenders_order_and_the_prompt_shuffles_it(hybrid, context):
    data, model = context
    rows = examples(hybrid, "ranking", "train")
    shuffled = 0
    for row in rows:
        scores = scores_for(model, row["history"])
        ranked = row["labels"]["items"]
        assert [float(scores[i]) for i in ranked] == sorted((float(scores[i]) for i in ranked), reverse=True)
        assert sorted(row["labels"]["shown"]) == sorted(ranked) and len(set(ranked)) == 5
        assert row["target"] == "; ".join(data.titles[i] for i in ranked)
        assert [s for s in row["slots"] if s != "user"] == row["labels"]["shown"]
        shuffled += row["labels"]["shown"] != ranked
    assert shuffled > len(rows) // 2


@pytest.mark.parametrize("task", ["interest", "interest_hard"])
def test_interest_positives_from_top_band_negatives_from_bottom_band(hybrid, context, task):
    data, model = context
    popularity = data.train_item_counts()
    rows = examples(hybrid, task, "train") + examples(hybrid, task, "test")
    assert sum(r["target"] == "yes" for r in rows) == sum(r["target"] == "no" for r in rows) > 0
    by_prefix = {}
    for row in rows:
        scores = scores_for(model, row["history"])
        n_valid = int(torch.isfinite(scores[1:]).sum())
        rank = int((scores > scores[row["labels"]["item"]]).sum())
        assert rank == row["labels"]["rank"]
        if row["target"] == "yes":
            assert rank < max(1, int(0.2 * n_valid))
        else:
            assert rank >= n_valid - max(1, int(0.5 * n_valid))
        by_prefix.setdefault(row["id"].rsplit("-", 1)[0], {})[row["target"]] = (row, scores, n_valid)
    if task == "interest_hard":
        fallbacks = 0
        for pair in by_prefix.values():
            (pos, _, _), (neg, scores, n_valid) = pair["yes"], pair["no"]
            pos_pop, neg_pop = popularity[pos["labels"]["item"]], popularity[neg["labels"]["item"]]
            order = torch.argsort(scores[1:], descending=True, stable=True)[:n_valid] + 1
            bottom = order[n_valid - max(1, int(0.5 * n_valid)) :].numpy()
            if neg["labels"]["hard_fallback"]:
                fallbacks += 1
                assert popularity[bottom].max() < pos_pop and neg_pop == popularity[bottom].max()
            else:
                assert neg_pop >= pos_pop
        assert fallbacks < len(by_prefix)


def test_no_evaluation_prefix_is_trained_on(hybrid, context):
    data, _ = context
    for task in ("retrieval", "ranking", "interest", "history"):
        train = examples(hybrid, task, "train")
        for row in train:
            n = len(data.sequence(row["user"]))
            assert 1 <= row["prefix_end"] <= n - 3
        for split, offset in (("valid", 2), ("test", 1)):
            for row in examples(hybrid, task, split):
                assert row["prefix_end"] == len(data.sequence(row["user"])) - offset
        seen = {(r["user"], tuple(r["history"])) for r in train}
        for split in ("valid", "test"):
            assert not seen & {(r["user"], tuple(r["history"])) for r in examples(hybrid, task, split)}


def test_item_tasks_hold_out_items_for_evaluation(hybrid):
    for task in ("item_recovery", "item_similar", "item_metadata"):
        train = {r["item"] for r in examples(hybrid, task, "train")}
        held = {r["item"] for s in ("valid", "test") for r in examples(hybrid, task, s)}
        assert train and held and not train & held


def test_vectors_reproduce_the_recommender(hybrid, context):
    _, model = context
    vectors = load_file(hybrid / "vectors.safetensors")
    assert torch.equal(vectors["items"], model.item_embeddings().detach())
    for split in ("train", "test"):
        for row in examples(hybrid, "retrieval", split)[:10]:
            with torch.no_grad():
                expected = model.user_vector(
                    pad_left([row["history"]], model.max_len), torch.tensor([row["user"]])
                )
            assert torch.allclose(vectors[f"users_{split}"][row["user_row"]], expected[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["behavior", "intention", "hybrid"])
def test_modes_render_as_specified_and_placeholders_match_vectors(root, context, mode):
    data, _ = context
    folder = build(root, mode)
    files = sorted((folder / "examples").glob("*.jsonl"))
    tasks = {f.name.split(".")[0] for f in files}
    if mode == "behavior":
        assert "item_recovery" not in tasks and "history" not in tasks
    else:
        assert {"item_recovery", "history"} <= tasks
    n = 0
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            n += 1
            prompt, slots = row["prompt"], row["slots"]
            assert prompt.count("<user>") == slots.count("user")
            assert prompt.count("<item>") == len(slots) - slots.count("user")
            assert row["mode"] == mode
            history_titles = [data.titles[i] for i in row.get("history", [])]
            if mode == "behavior":
                assert not slots and all(t in prompt for t in history_titles)
            elif row["kind"] == "history" or mode == "intention":
                assert not any(t in prompt for t in history_titles if len(t) > 3)
                assert ("<user>" in prompt) == (row["user"] >= 0)
            elif row["user"] >= 0:  # hybrid user tasks: placeholder in front of the most recent title
                # (prompt.text_hist_len=1); the explanation task too (its evidence lists what to cite)
                shown = history_titles[-1:]
                assert prompt.count("<user>") == 1 and all(t in prompt for t in shown)
            else:  # hybrid item tasks: placeholder in front of the title
                assert f"<item> {data.titles[row['item']]}" in prompt
            if row["kind"] == "ranking" and mode != "behavior":
                assert prompt.count("<item>") == 5
    assert n > 100


@pytest.mark.slow
def test_labels_do_not_depend_on_the_mode(root):
    a = {r["id"]: r["labels"] for r in examples(build(root, "behavior"), "ranking", "train")}
    b = {r["id"]: r["labels"] for r in examples(build(root, "intention"), "ranking", "train")}
    assert a == b


def test_build_is_deterministic(root, hybrid):
    before = {p.name: p.read_bytes() for p in (hybrid / "examples").glob("*.jsonl")}
    again = build(root, "hybrid", "force=true")
    assert again == hybrid
    assert before == {p.name: p.read_bytes() for p in (hybrid / "examples").glob("*.jsonl")}


def test_metrics_record_counts_and_label_statistics(hybrid):
    metrics = json.loads((hybrid / "metrics.json").read_text())
    assert metrics["count/retrieval/test"] == 30 and metrics["count/interest/test"] == 60
    assert 1 <= metrics["labels/retrieval/train/distinct_top1"] <= 40
    assert 0 < metrics["labels/retrieval/train/top1_share_top5"] <= 1
    assert 0 <= metrics["labels/interest/test/popularity_auc"] <= 1


def test_history_mask_keeps_every_consumed_item_out_of_the_labels(root, hybrid, context):
    """prompt.mask=history: no label is an item the user consumed before the position; the default
    (prefix) masks only the window the recommender is shown, and the statistics say how often that matters."""
    data, _ = context
    masked = build(root, "hybrid", "prompt.mask=history")
    for folder, mask in ((hybrid, "prefix"), (masked, "history")):
        rows = examples(folder, "retrieval", "train") + examples(folder, "retrieval", "test")
        consumed = [
            r["labels"]["item"] in set(data.sequence(r["user"])[: r["prefix_end"]].tolist()) for r in rows
        ]
        metrics = json.loads((folder / "metrics.json").read_text())
        earlier = metrics["labels/retrieval/train/top1_in_earlier_history"]
        if mask == "history":
            assert not any(consumed) and earlier == 0.0
        else:
            assert not any(r["labels"]["item"] in r["history"] for r in rows) and 0.0 <= earlier <= 1.0
    assert json.loads((masked / "protocol.json").read_text())["labels"].endswith("before the position masked")


def test_show_prints_examples(root, hybrid, capsys):
    build(root, "hybrid", "show=2")  # reused from cache: show still prints
    out = capsys.readouterr().out
    assert "=== retrieval" in out and out.count("PROMPT:") >= 2 * 5


def test_replay_from_a_user_file(root, tmp_path):
    path = tmp_path / "replay.jsonl"
    path.write_text(
        json.dumps({"instruction": "Say hi", "response": "Hi!"})
        + "\n\n"
        + json.dumps({"prompt": "2+2?", "input": "Be brief", "output": "4"})
        + "\n"
    )
    folder = build(root, "behavior", f"tasks.replay.path={path}")
    rows = examples(folder, "replay", "train")
    assert [(r["prompt"], r["target"]) for r in rows] == [("Say hi", "Hi!"), ("2+2?\n\nBe brief", "4")]
    path.write_text('{"instruction": "x"}\n')
    with pytest.raises(ValueError, match=r"replay\.jsonl:1: needs"):
        read_replay(str(path), None)


def task(**kw):
    return OmegaConf.structured(
        TaskConfig(**{"kind": "retrieval", "task_id": 1, "templates": ["{user}?"], **kw})
    )


@pytest.mark.parametrize(
    "templates,match",
    [
        (["Which item for {usr}?"], r"unknown field\(s\) \['usr'\]"),
        (["Which item?"], r"must contain \['\{user\}'\]"),
        (["{user.__class__}"], "not allowed"),
        (["{user!r}"], "not allowed"),
        (["{user:>10}"], "not allowed"),
        (["{user} {"], "malformed"),
        ([], "empty"),
    ],
)
def test_bad_templates_fail_with_the_task_name(templates, match):
    with pytest.raises(TemplateError, match=match):
        validate_task("retrieval", task(templates=templates))


def test_retrieval_target_k_below_one_is_refused():
    with pytest.raises(TemplateError, match=r"tasks\.retrieval\.target_k=0 must be a whole number >= 1"):
        validate_task("retrieval", task(target_k=0))


def test_bad_template_fails_at_start_up():
    cfg = compose_config(["tasks.retrieval.templates=['Give {title} for {user}']"])
    with pytest.raises(ConfigError, match=r"tasks\.retrieval\.templates\[0\].*'title'"):
        validate(cfg, tuple(STAGES))


def test_render_inserts_values_verbatim():
    assert template_fields("a {user} b {item} {user}") == {"user", "item"}
    assert render("{user} likes {item}", {"user": "{item}", "item": "x"}) == "{item} likes x"


@pytest.mark.slow
def test_placeholder_in_a_title_is_refused(root, context, monkeypatch):
    import recexplainer.alignment_data.stage as stage

    original = SequentialData.load

    def load_with_bad_title(folder):
        data = original(folder)
        data.item_table[1]["title"] = "The <item> Movie"
        data.__dict__.pop("titles", None)
        return data

    monkeypatch.setattr(stage.SequentialData, "load", staticmethod(load_with_bad_title))
    with pytest.raises(ValueError, match="contain the placeholder '<item>'"):
        build(root, "hybrid", "seed=5")


def test_paper_preset_takes_every_training_prefix():
    cfg = compose_config(["tasks=paper"])
    assert cfg.tasks.retrieval.train_per_user is None and cfg.tasks.retrieval.max_eval is None
    assert cfg.tasks.history.train_per_user == 4
    assert np.isclose(cfg.tasks.interest.top_fraction, 0.2)


def test_item_tasks_repeat_items_with_varied_templates(root):
    folder = build(root, "intention", "tasks.item_recovery.train_per_user=3")
    rows = examples(folder, "item_recovery", "train")
    per_item = {}
    for row in rows:
        per_item.setdefault(row["item"], []).append(row)
    assert all(len(v) == 3 for v in per_item.values())
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["template_id"] for r in rows}) > 1


@pytest.mark.slow
def test_text_hist_len_shortens_the_titles_but_not_the_vectors_or_labels(root, context, hybrid):
    """prompt.text_hist_len=2: a hybrid user shows its last two titles; the user's history, labels and
    vector rows are those of the whole prefix; the key holds the effective value."""
    from recexplainer.alignment_data import stage as alignment_stage

    data, _ = context
    default = compose_config([f"paths.artifacts={root}", *TINY, "prompt=hybrid", "prompt.text_hist_len=null"])
    assert alignment_stage.key_fields(default)["alignment"]["text_hist_len"] is None
    # intention renders no titles: the knob changes neither its examples nor its key
    intention = compose_config([f"paths.artifacts={root}", *TINY, "prompt=intention"])
    cut = compose_config([f"paths.artifacts={root}", *TINY, "prompt=intention", "prompt.text_hist_len=1"])
    assert stage_folder(cut, "alignment_data") == stage_folder(intention, "alignment_data")
    short = build(root, "hybrid", "prompt.text_hist_len=2")
    assert short != hybrid
    protocol = json.loads((short / "protocol.json").read_text())
    assert protocol["prefix_text"].startswith("the last 2 items")
    checked = 0
    every = build(root, "hybrid", "prompt.text_hist_len=null")  # every title (the default shows one)
    for task in ("retrieval", "interest", "ranking"):
        full = {r["id"]: r for r in examples(every, task, "train")}
        for row in examples(short, task, "train"):
            assert row["labels"] == full[row["id"]]["labels"] and row["history"] == full[row["id"]]["history"]
            titles = [data.titles[i] for i in row["history"]]
            assert f"<user> {'; '.join(titles[-2:])}" in row["prompt"]
            if len(titles) > 2:
                assert "; ".join(titles[-3:]) not in row["prompt"]
                assert f"<user> {'; '.join(titles)}" in full[row["id"]]["prompt"]
                checked += 1
    assert checked > 50
    assert torch.equal(
        load_file(short / "vectors.safetensors")["users_train"],
        load_file(hybrid / "vectors.safetensors")["users_train"],
    )


@pytest.mark.slow
def test_text_hist_len_above_the_prefix_is_refused():
    cfg = compose_config(["prompt=hybrid", "prompt.max_hist_len=5", "prompt.text_hist_len=6"])
    with pytest.raises(ConfigError, match="text_hist_len=6 exceeds prompt.max_hist_len=5"):
        validate(cfg, tuple(STAGES))
    cfg = compose_config(["prompt=hybrid", "prompt.text_hist_len=0"])
    with pytest.raises(ConfigError, match="text_hist_len=0 must be positive"):
        validate(cfg, tuple(STAGES))


@pytest.mark.slow
@pytest.mark.parametrize("history", [[1, 2, 3, 4], [3, 4], [4], []])
def test_renderer_shows_the_last_titles_of_short_and_long_histories(history):
    from recexplainer.alignment_data.templates import SlotRenderer

    titles = ["pad", "A", "B", "C", "D"]
    prompt = OmegaConf.create(compose_config(["prompt=hybrid", "prompt.text_hist_len=3"]).prompt)
    expected = "; ".join(titles[i] for i in history[-3:])
    assert SlotRenderer(prompt, titles).user(history) == f"<user> {expected}"
    assert SlotRenderer(prompt, titles).user(np.array(history, dtype=np.int64)) == f"<user> {expected}"


def _scored(scores: np.ndarray, history: list[int]) -> Prefixes:
    """Prefixes from a (P, N + 1) score table as iter_scored_prefixes builds them (column 0: padding)."""
    scores = scores.copy()
    scores[:, 0] = -np.inf
    scores[:, history] = -np.inf
    order = (torch.argsort(torch.from_numpy(scores[:, 1:]), dim=1, descending=True, stable=True) + 1).numpy()
    ranks = np.full(scores.shape, order.shape[1], dtype=np.int64)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :], axis=1)
    p = len(scores)
    return Prefixes(
        "test", 0, np.arange(p), np.full(p, 9), np.zeros(p, dtype=np.int64),
        [np.array(history) for _ in range(p)], order, ranks, np.isfinite(scores[:, 1:]).sum(1), scores,
        torch.zeros(p, 4),
    )  # fmt: skip


def test_drawn_items_do_not_depend_on_near_tie_order_inside_a_band():
    """Task-2/3 items are drawn by item id: two near-tied items swapping places (another CPU's rounding)
    inside the top or bottom band change neither the positives, the negatives nor the task-2 candidates."""
    from recexplainer.alignment_data.build import TaskBuilder
    from recexplainer.alignment_data.templates import SlotRenderer

    cfg = compose_config([*TINY, "prompt=hybrid"])
    n_items, history = 60, [1, 2]
    titles = ["[pad]"] + [f"Item {i}" for i in range(1, n_items + 1)]
    popularity = np.random.default_rng(1).integers(1, 50, n_items + 1)
    scores = np.random.default_rng(0).standard_normal((40, n_items + 1))
    swapped = scores.copy()
    base = _scored(scores, history)
    for row in range(len(scores)):  # swap the scores of two neighbours inside each band
        n = int(base.n_valid[row])
        for a in (1, n - 3):  # inside the top band (top 20 %) and the bottom band (bottom 50 %)
            i, j = base.order[row, a], base.order[row, a + 1]
            swapped[row, [i, j]] = scores[row, [j, i]]
    other = _scored(swapped, history)
    assert (base.order != other.order).any(axis=1).all()  # every row's ranking did change
    keep = np.ones(len(scores), dtype=bool)
    for name in ("interest", "interest_hard", "ranking"):
        made = [
            TaskBuilder(name, cfg.tasks[name], "hybrid", SlotRenderer(cfg.prompt, titles), 42, popularity, titles)
            .from_prefixes(p, keep)
            for p in (base, other)
        ]  # fmt: skip
        assert len(made[0]) == len(made[1]) > 0
        for a, b in zip(*made, strict=True):
            if name == "ranking":  # the same candidates; only the swapped pair's order may differ
                assert sorted(a["labels"]["items"]) == sorted(b["labels"]["items"])
            else:
                assert (a["id"], a["labels"]["item"], a["target"]) == (
                    b["id"],
                    b["labels"]["item"],
                    b["target"],
                )


def test_pick_draws_once_whatever_the_band():
    from recexplainer.alignment_data.labels import pick

    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert pick(a, np.array([], dtype=np.int64)) is None
    assert pick(b, np.array([5, 6, 7])) in (5, 6, 7)
    assert a.random() == b.random()  # the empty band used up the same draw: later rows are unchanged
    for _ in range(200):
        assert pick(a, np.array([4, 9])) in (4, 9)
