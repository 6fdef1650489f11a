"""The evaluate stage: per-example scoring, decoding, baselines, resume and metric merging."""

import json

import numpy as np
import pytest
import torch

from recexplainer import artifacts
from recexplainer import tasks as kinds
from recexplainer.cli import run
from recexplainer.evaluate import stage as eval_stage
from recexplainer.evaluate.decoding import Decoder, TitleTrie, answer_token_ids, yes_probability
from recexplainer.evaluate.evaluator import ExampleMeans, PredictionStore, answer_diversity
from recexplainer.evaluate.predictors import BaselinePredictor, LLMPredictor
from recexplainer.llm import loading
from recexplainer.pipeline import stage_folder
from recexplainer.text import TitleIndex, distinct_titles, parse_list, split_strict

from .helpers import ALIGN

EVAL = [*ALIGN, "stage=evaluate", "evaluation.batch_size=4", "evaluation.tasks=null"]  # every task


def score(kind, row, prediction):
    return kinds.get(kind).score(row, prediction)


@pytest.fixture(scope="module")
def tokenizer():
    return loading.tiny_tokenizer()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from .helpers import TINY, TINY_SASREC, compose_config

    root = tmp_path_factory.mktemp("evaluate")
    cfg = compose_config([f"paths.artifacts={root}", *TINY, *TINY_SASREC, *EVAL])
    return cfg, run(cfg)


# -- scoring ----------------------------------------------------------------------------------------
def test_retrieval_score_counts_the_top1_among_five_distinct_candidates():
    row = {"labels": {"item": 7}}
    hit = score("retrieval", row, {"items": [3, None, 3, 7, 9]})  # duplicate 3 collapses: 7 is 3rd
    assert hit["hr@5"] == 1.0 and hit["ndcg@5"] == pytest.approx(1 / np.log2(4))
    assert hit["valid_ratio"] == pytest.approx(4 / 5)
    assert score("retrieval", row, {"items": []})["hr@5"] == 0.0  # nothing parsed: a miss, valid 0
    assert score("retrieval", row, {"items": []})["valid_ratio"] == 0.0
    fuzzy = score("retrieval", row, {"items": [None], "items_fuzzy": [7]})
    assert (fuzzy["hr@5"], fuzzy["hr@5_fuzzy"]) == (0.0, 1.0)


def test_beam_candidates_are_the_first_distinct_titles():
    beams = ["Fargo", "Heat", "fargo ", "", "Star Wars", "", "Heat", "Star  wars", "Contact"]
    assert distinct_titles(beams, 5) == ["Fargo", "Heat", "", "Star Wars", ""]  # misses stay misses
    assert distinct_titles(beams, 3) == ["Fargo", "Heat", ""]
    assert distinct_titles(beams, 10) == [
        "Fargo",
        "Heat",
        "",
        "Star Wars",
        "",
        "Contact",
    ]  # spaces collapse too
    assert distinct_titles(["Heat", "Heat"], 5) == ["Heat"]


def test_ranking_history_and_recovery_scores():
    ranking = {"labels": {"items": [5, 4, 3, 2, 1], "shown": [1, 2, 3, 4, 5]}}
    assert score("ranking", ranking, {"items": [5, 4, 3, 2, 1]})["ndcg@5"] == pytest.approx(1.0)
    swapped = score("ranking", ranking, {"items": [4, 5, 3, 2, 1]})["ndcg@5"]
    ideal = 1000 + 100 / np.log2(3) + 10 / 2 + 1 / np.log2(5)
    assert swapped == pytest.approx((100 + 1000 / np.log2(3) + 10 / 2 + 1 / np.log2(5)) / ideal)
    history = {"labels": {"items": [1, 2, 3, 4]}}
    assert score("history", history, {"items": [2, 2, None, 4, 9]})["hcr"] == 0.5
    recovery = {"labels": {"item": 3}}
    assert score("item_recovery", recovery, {"items": [3, 1]})["acc"] == 1.0
    assert score("item_recovery", recovery, {"items": [None, 3]})["acc"] == 0.0  # first title counts


# -- the reference (RecAI) scoring: hand-computed values ------------------------------------------------
def recai(kind, row, strict, **prediction):
    values = kinds.get(kind).scores(row, {"items": strict, "items_strict": strict, **prediction}, "recai")
    return {k: v for k, v in values.items() if "_fuzzy" not in k and k != "valid_ratio"}


def test_recai_task1_keeps_repeated_beams_in_their_slots():
    row = {"labels": {"item": 7}}
    # [A, A, T]: T is 3rd of the returned sequences (RecAI: NDCG 1/log2(4) = 0.5); lenient dedups: 2nd (0.631)
    values = kinds.get("retrieval").scores(row, {"items": [3, 3, 7], "items_strict": [3, 3, 7]}, "recai")
    assert values["ndcg@5"] == pytest.approx(0.5) and values["ndcg@5/lenient"] == pytest.approx(
        1 / np.log2(3)
    )
    assert recai("retrieval", row, [1, 2, 3, 4, 5, 7])["hr@5"] == 0.0  # only the first five count
    assert recai("retrieval", row, [])["hr@5"] == 0.0


def test_recai_task1_reads_first_titles_only_when_the_target_listed_several():
    # "A; T" whole is no title: read whole unless the model was trained to list the top k
    retrieval, texts = kinds.get("retrieval"), ["Heat; Fargo", "Fargo"]
    assert retrieval.strict_answers(texts, "; ", {"labels": {"item": 3}}) == texts
    assert retrieval.strict_answers(texts, "; ", None) == texts
    top_k = {"labels": {"item": 3, "target_items": [3, 9]}}
    assert retrieval.strict_answers(texts, "; ", top_k) == ["Heat", "Fargo"]
    assert retrieval.strict_answers(["", "Fargo"], "; ", top_k) == ["", "Fargo"]  # an empty beam stays a miss
    assert kinds.get("ranking").strict_answers(texts, "; ", None) == [
        "Heat",
        "Fargo",
    ]  # lists: the first, split


def test_recai_task2_gives_a_repeat_no_gain_and_no_shift():
    row = {"labels": {"items": [1, 2, 3, 4, 5], "shown": [5, 4, 3, 2, 1]}}
    # [A, A, B, C, D]: RecAI 0.987 (hand-computed), lenient 1.0 (the repeat removed, then cut to 5)
    dcg = 1000 + 0 + 100 / np.log2(4) + 10 / np.log2(5) + 1 / np.log2(6)
    idcg = 1000 + 100 / np.log2(3) + 10 / 2 + 1 / np.log2(5)
    values = kinds.get("ranking").scores(
        row, {"items": [1, 1, 2, 3, 4], "items_strict": [1, 1, 2, 3, 4]}, "recai"
    )
    assert values["ndcg@5"] == pytest.approx(dcg / idcg) and round(values["ndcg@5"], 3) == 0.987
    assert values["ndcg@5/lenient"] == pytest.approx(1.0)


def test_recai_task6_reads_only_the_first_len_history_titles():
    row = {"labels": {"items": [1, 2, 3, 4, 5]}}
    answer = [9, 10, 11, 12, 13, 1, 2, 3, 4, 5]  # five wrong titles, then the whole history
    values = kinds.get("history").scores(row, {"items": answer, "items_strict": answer}, "recai")
    assert values["hcr"] == 0.0 and values["hcr/lenient"] == 1.0


def test_recai_task3_counts_a_tie_as_yes_and_lenient_as_no():
    row = {"labels": {"answer": "yes"}}
    values = kinds.get("interest").scores(row, {"p_yes": 0.5}, "recai")
    assert values == {"acc": 1.0, "yes_rate": 1.0, "acc/lenient": 0.0, "yes_rate/lenient": 0.0}
    values = kinds.get("interest").scores(row, {"p_yes": 0.5}, "lenient")
    assert values == {"acc": 0.0, "yes_rate": 0.0, "acc/recai": 1.0, "yes_rate/recai": 1.0}


def test_recai_matches_whole_answers_only():
    index = TitleIndex(["", "Fargo (1996)", "Heat (1995)", "Heat (1995) [2]", "Gone Fishin' (1997)"])
    assert index.strict_match("  FARGO (1996) ") == 1
    for text in ("1. Fargo (1996)", "Fargo (1996).", '"Fargo (1996)"', "- Fargo (1996)", "Fargo  (1996)"):
        assert index.strict_match(text) is None and index.match(parse_list(text)[0]) == 1, text
    assert index.strict_match("Heat (1995) [2]") == 3 and index.strict_match("Heat (1995)") == 2
    assert index.strict_match("gone fishin' (1997)") == 4
    assert split_strict("Fargo (1996); 2. Heat (1995);  ; Heat (1995) [2]") == [
        "Fargo (1996)",
        "2. Heat (1995)",
        "Heat (1995) [2]",
    ]
    item = {"labels": {"item": 1}}
    assert recai("item_recovery", item, [None, 1])["acc"] == 0.0  # the first answer counts


def test_yes_no_score_and_answer_diversity():
    row = {"labels": {"answer": "no"}}
    assert score("interest", row, {"p_yes": 0.3}) == {"acc": 1.0, "yes_rate": 0.0}
    assert score("interest", row, {"p_yes": 0.7}) == {"acc": 0.0, "yes_rate": 1.0}
    records = [{"items": [4, 1]}, {"items": [4]}, {"items": [None], "titles": ["Foo"]}, {"items": [2]}]
    assert answer_diversity(records) == {"distinct_answers": 3.0, "top_answer_share": 0.5}


def test_yes_probability_sums_spellings(tokenizer):
    yes, no = answer_token_ids(tokenizer, "yes"), answer_token_ids(tokenizer, "no")
    assert len(yes) >= 2 and not set(yes) & set(no)
    logits = torch.zeros(2, len(tokenizer))
    logits[0, yes[0]] = 5.0  # one spelling of yes dominates
    logits[1, no[-1]] = 5.0
    p = yes_probability(logits, yes, no)
    assert p[0] > 0.9 and p[1] < 0.1


# -- torchmetrics state ----------------------------------------------------------------------------
def test_example_means_merge_two_shards_exactly():
    rows = [{"acc": float(i % 3 == 0), "yes_rate": float(i % 2)} for i in range(11)]
    whole, a, b = (ExampleMeans(["acc", "yes_rate"]) for _ in range(3))
    whole.update(rows)
    a.update(rows[:4])
    b.update(rows[4:])
    a.merge_state(b)  # what the DDP sum-reduction does across processes
    assert a.compute() == whole.compute()
    assert whole.compute()["acc"] == pytest.approx(4 / 11) and whole.compute()["n"] == 11


def test_example_means_keep_float64_sums_when_the_module_is_cast_to_bf16():
    """Lightning's bf16-true casts the whole evaluator with .to(bfloat16): the metric sums must stay float64
    (in bf16, 256 + 1 == 256: 400 examples would count as 256 and the mean would be wrong)."""
    from torch import nn

    from recexplainer.evaluate.evaluator import EvaluatorModule

    metric = ExampleMeans(["acc"])
    holder = nn.ModuleDict({"m": metric}).to(torch.bfloat16)
    metric = holder["m"]
    metric.update([{"acc": float(i % 4 == 0)} for i in range(401)])
    assert metric.total.dtype == metric.count.dtype == torch.float64
    assert metric.compute() == {"acc": 101 / 401, "n": 401.0}
    metric.reset()  # the defaults stay float64 too
    assert metric.total.dtype == torch.float64 and metric.compute() == {"n": 0.0}
    module = EvaluatorModule(object(), [("interest", "interest", "task3")], store=None).to(torch.bfloat16)
    assert module._metric("interest").total.dtype == torch.float64


# -- decoding ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lm_head_gets_a_contiguous_input_once_per_model():
    """generate() runs the LM head on a strided (B, 1, H) view; with bf16 weights on the CPU that view made
    PyTorch copy the whole weight per batch row. The head must see a contiguous input, outputs unchanged."""
    from recexplainer.evaluate.decoding import contiguous_lm_head
    from recexplainer.llm.loading import tiny_random_llama, tiny_tokenizer

    lm = tiny_random_llama(tiny_tokenizer())
    head = lm.get_output_embeddings()
    hidden = torch.randn(3, 7, head.in_features)[:, -1:, :]  # the strided view generate() passes
    assert not hidden.is_contiguous()
    expected = head(hidden)
    seen = []
    head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    contiguous_lm_head(lm)
    contiguous_lm_head(lm)  # idempotent: one pre-hook
    assert len(head._forward_pre_hooks) == 1
    assert torch.equal(head(hidden), expected) and seen[-1] is True


TITLES = ["Star Wars", "Star Trek", "Heat", "Fargo", "The Star Chamber"]


def _walk(trie, tokenizer, rng, max_steps=60):
    ids = []
    for _ in range(max_steps):
        token = int(rng.choice(trie.allowed(ids)))
        if token == trie.eos:
            break
        ids.append(token)
    return tokenizer.decode(ids)


def test_trie_allows_only_catalog_titles(tokenizer):
    trie = TitleTrie(TITLES, tokenizer, tokenizer.eos_token_id)
    rng = np.random.default_rng(0)
    walks = {_walk(trie, tokenizer, rng) for _ in range(200)}
    assert walks == set(TITLES)
    assert trie.allowed(tokenizer("Fargo", add_special_tokens=False)["input_ids"]) == [trie.eos]
    assert trie.allowed([12345678]) == [trie.eos]  # off the trie: stop


def test_list_trie_chains_titles_with_separators(tokenizer):
    trie = TitleTrie(TITLES, tokenizer, tokenizer.eos_token_id, separator=";", max_titles=3)
    rng = np.random.default_rng(1)
    for _ in range(100):
        parts = [p.strip() for p in _walk(trie, tokenizer, rng).split(";")]
        assert 1 <= len(parts) <= 3 and all(p in TITLES for p in parts)
    # the separated form is how the alignment targets tokenize
    ids = tokenizer("Heat; Star Wars", add_special_tokens=False)["input_ids"]
    for k in range(len(ids)):
        assert ids[k] in trie.allowed(ids[:k])


def test_batched_left_padded_scoring_equals_one_at_a_time(tokenizer):
    torch.manual_seed(0)
    lm = loading.tiny_random_llama(tokenizer, n_layers=2, hidden_size=64).eval()
    decoder = Decoder(lm, tokenizer)
    texts = ["a short one", "a considerably longer prompt than the others, with words", "mid length prompt"]
    empty = torch.empty(0, 4)
    enc = [{"input_ids": tokenizer(t)["input_ids"], "users": empty, "items": empty} for t in texts]
    batched = decoder.next_token_logits(enc)
    single = torch.cat([decoder.next_token_logits([e]) for e in enc])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    assert decoder.generate(enc, 6) == [decoder.generate([e], 6)[0] for e in enc]


@pytest.mark.slow
def test_constrained_beam_search_returns_distinct_titles_of_every_length(tokenizer):
    # five short titles (1-2 tokens) and a long one: after two steps four beams can only end; Hugging Face
    # keeps them alive as filler copies (score ~ -1e9), which must not fill the finished hypotheses and stop
    # the search before the long title finishes (with early_stopping=True: 4 distinct titles, one twice)
    titles = ["Heat", "Fargo", "Alien", "Up", "Casino", "Star Wars Episode Four A New Hope"]
    trie = TitleTrie(titles, tokenizer, tokenizer.eos_token_id)
    empty = torch.empty(0, 4)
    prompts = ("a b", "c d e", "hello there", "x")
    enc = [{"input_ids": tokenizer(t)["input_ids"], "users": empty, "items": empty} for t in prompts]
    for seed in range(3):
        torch.manual_seed(seed)
        lm = loading.tiny_random_llama(tokenizer, n_layers=2, hidden_size=64).eval()
        for beams in Decoder(lm, tokenizer).generate(enc, 12, num_beams=5, num_return_sequences=5, trie=trie):
            assert len({b.strip() for b in beams}) == 5 and {b.strip() for b in beams} <= set(titles)


# -- baselines --------------------------------------------------------------------------------------
def _rows(kind, n, **labels):
    return [
        {"id": f"{kind}/{i}", "task": kind, "kind": kind, "history": [1], "labels": dict(labels)}
        for i in range(n)
    ]


def test_popularity_rule_and_top1_frequency_baselines():
    titles = ["", "A", "B", "C", "D", "E", "F", "G"]
    popularity = np.array([0, 50, 40, 30, 20, 10, 5, 1])
    train = {
        "retrieval": [{"labels": {"item": 6}, "history": []}] * 3 + [{"labels": {"item": 5}, "history": []}],
        "interest": [
            {"labels": {"item": i, "answer": "yes" if popularity[i] >= 30 else "no"}, "history": [1]}
            for i in range(1, 8)
        ],
    }
    pop = BaselinePredictor("popularity", titles, popularity, [np.array([1, 2])], train, 0)
    assert pop.threshold == 30
    rows = [{"id": "x", "history": [1], "labels": {"item": 3, "answer": "yes"}}]
    assert pop.predict("interest", rows)[0]["p_yes"] == 1.0
    assert pop.predict("retrieval", [{"id": "r", "history": [1, 3], "labels": {"item": 2}}])[0]["items"] == [
        2,
        4,
        5,
        6,
        7,
    ]
    top1 = BaselinePredictor("top1_frequency", titles, popularity, [np.array([1, 2])], train, 0)
    got = top1.predict("retrieval", [{"id": "r", "history": [5], "labels": {"item": 2}}])[0]["items"]
    assert got == [6, 1, 2, 3, 4]  # most chosen first, the history item skipped, popularity fills in


def test_item_knn_ranks_co_consumed_items_first():
    titles = ["", "A", "B", "C", "D"]
    sequences = [np.array([1, 2]), np.array([1, 2]), np.array([3, 4]), np.array([1, 3])]
    knn = BaselinePredictor("item_knn", titles, np.array([0, 3, 2, 2, 1]), sequences, {}, 0)
    ranking = knn.predict("ranking", [{"id": "k", "history": [1], "labels": {"shown": [4, 3, 2]}}])
    assert ranking[0]["items"] == [2, 3, 4]
    assert knn.predict("item_similar", [{"id": "s", "item": 4, "labels": {"item": 3}}])[0]["items"] == [3]


# -- the stage ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_stage_writes_metrics_protocol_and_predictions(evaluated):
    cfg, folder = evaluated
    assert artifacts.is_complete(folder) and folder.parent.name == "evaluate"
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("task1/hr@5", "task1/ndcg@5", "task2/ndcg@5", "task3/acc", "task3_hard/acc", "task6/hcr"):
        assert 0.0 <= metrics[key] <= 1.0
        assert f"baseline/random/{key}" in metrics and f"baseline/popularity/{key}" in metrics
    assert "baseline/top1_frequency/task1/hr@5" in metrics and "task1/distinct_answers" in metrics
    assert metrics["task1/valid_ratio"] >= 0 and metrics["speed/task1/examples_per_s"] > 0
    protocol = json.loads((folder / "protocol.json").read_text())
    assert protocol["examples_per_task"]["retrieval"] == metrics["count/retrieval"]
    records = [json.loads(line) for line in (folder / "predictions" / "aligned.jsonl").open()]
    assert {r["task"] for r in records} >= {"retrieval", "ranking", "interest", "history"}
    first = next(r for r in records if r["task"] == "retrieval")
    assert len(first["outputs"]) == cfg.evaluation.num_beams  # every beam's raw text is kept
    assert len(first["items"]) == len(first["titles"]) <= cfg.evaluation.num_beams
    # the mean of the per-example values is the reported metric
    hr = [r["metrics"]["hr@5"] for r in records if r["task"] == "retrieval"]
    assert metrics["task1/hr@5"] == pytest.approx(sum(hr) / len(hr))
    # the reference scoring under the plain names, the lenient one next to it
    assert cfg.evaluation.scoring == "recai" and protocol["matching"]["scoring"] == "recai"
    for key in ("task1/hr@5", "task2/ndcg@5", "task3/acc", "task6/hcr", "item_recovery/acc"):
        assert f"{key}/lenient" in metrics and f"baseline/popularity/{key}/lenient" in metrics
    assert len(first["items_strict"]) == len(first["outputs"])  # every returned sequence, whole


@pytest.mark.slow
def test_constrained_decoding_only_outputs_catalog_titles(evaluated, tmp_path):
    cfg, _ = evaluated
    from .helpers import TINY, TINY_SASREC, compose_config

    root = cfg.paths.artifacts
    cfg2 = compose_config(
        [
            f"paths.artifacts={root}",
            *TINY,
            *TINY_SASREC,
            *EVAL,
            "evaluation.constrained=true",
            "evaluation.beam_width=8",
            "evaluation.baselines=[]",
        ]
    )
    folder = run(cfg2)
    metrics = json.loads((folder / "metrics.json").read_text())
    for prefix in ("task1", "task2", "task6", "item_recovery"):
        assert metrics[f"{prefix}/valid_ratio"] == 1.0
    # a wider search (8 beams): the candidates are its first num_beams distinct titles
    records = [json.loads(line) for line in (folder / "predictions" / "aligned.jsonl").open()]
    for r in (r for r in records if r["task"] == "retrieval"):
        assert len(r["outputs"]) == 8
        assert len(r["titles"]) == len({t.lower() for t in r["titles"]}) <= cfg2.evaluation.num_beams


@pytest.mark.slow
def test_killed_evaluation_resumes_without_recomputing(evaluated, monkeypatch):
    cfg, folder = evaluated
    from .helpers import TINY, TINY_SASREC, compose_config

    overrides = [
        f"paths.artifacts={cfg.paths.artifacts}",
        *TINY,
        *TINY_SASREC,
        *EVAL,
        "evaluation.baselines=[]",
        "evaluation.calibration_examples=0",  # counts the test examples' calls only
    ]
    cfg2 = compose_config(overrides)
    calls = {"n": 0}
    original = LLMPredictor.predict

    def dying(self, kind, rows):
        calls["n"] += len(rows)
        if calls["n"] > 12:
            raise RuntimeError("killed")
        return original(self, kind, rows)

    monkeypatch.setattr(LLMPredictor, "predict", dying)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg2)
    partial = stage_folder(cfg2, "evaluate")
    assert not artifacts.is_complete(partial)
    written = (partial / "predictions" / "aligned.jsonl").read_text().splitlines()
    assert 0 < len(written) <= 12
    with open(partial / "predictions" / "aligned.jsonl", "a") as handle:
        handle.write('{"id": "torn')  # a kill mid-write leaves a partial line
    calls["n"] = -10_000
    monkeypatch.setattr(LLMPredictor, "predict", dying)
    metrics = json.loads((run(cfg2) / "metrics.json").read_text())
    total = sum(int(v) for k, v in metrics.items() if k.startswith("count/"))
    assert calls["n"] + 10_000 == total - len(written)  # only the missing examples ran
    full = json.loads((folder / "metrics.json").read_text())
    for key in ("task1/hr@5", "task2/ndcg@5", "task3/acc", "task6/hcr"):
        assert metrics[key] == pytest.approx(full[key], abs=1e-6)  # same as an uninterrupted run


@pytest.mark.slow
def test_unaligned_and_baseline_only_runs_need_no_aligner(make_cfg):
    cfg = make_cfg(*EVAL, "evaluation.model=none", "evaluation.student.epochs=2")
    assert eval_stage.requires(cfg) == ("data", "recommender", "alignment_data")
    metrics = json.loads((run(cfg) / "metrics.json").read_text())
    assert "task1/hr@5" not in metrics and "baseline/popularity/task3/acc" in metrics
    assert "baseline/student/task1/hr@5" in metrics and metrics["baseline/student/train_prefixes"] > 0
    assert not (stage_folder(cfg, "alignment_data").parent.parent / "aligner").exists()
    cfg = make_cfg(*EVAL, "evaluation.model=unaligned", "evaluation.few_shot=1", "evaluation.baselines=[]")
    folder = run(cfg)
    records = [json.loads(line) for line in (folder / "predictions" / "unaligned_1shot.jsonl").open()]
    assert records and "task3/acc" in json.loads((folder / "metrics.json").read_text())
    assert json.loads((folder / "protocol.json").read_text())["decoding"]["item_head"] is None  # no head read


def test_prediction_store_drops_a_torn_line(tmp_path):
    store = PredictionStore(tmp_path, "m")
    store.write([{"id": "a", "task": "t"}])
    store.close()
    with open(store.path, "a") as handle:
        handle.write('{"id": "b", "ta')
    assert [r["id"] for r in store.load()] == ["a"]
    store.write([{"id": "c", "task": "t"}])
    store.close()
    assert [r["id"] for r in store.load()] == ["a", "c"]


@pytest.mark.slow
def test_distilled_student_learns_the_teachers_top1(make_cfg):
    from recexplainer.data.dataset import SequentialData
    from recexplainer.evaluate.student import distill, scorer
    from recexplainer.recommender import load_recommender

    cfg = make_cfg("stage=recommender")
    folder = run(cfg)
    data = SequentialData.load(stage_folder(cfg, "data"))
    teacher = load_recommender(folder)
    student, stats = distill(teacher, data, max_hist_len=5, seed=0, hidden_size=16, epochs=15, lr=5e-3)
    chance = 1 / data.n_items
    assert stats["train_top1_agreement"] > 10 * chance
    scores = scorer(student, 5)([1, 2, 3])
    assert scores.shape == (data.n_items + 1,) and torch.isinf(scores[0])


@pytest.mark.slow
def test_bench_evaluation_runs_a_random_weight_model(evaluated, tmp_path, monkeypatch):
    """experiments/bench_evaluation.py --random-weights (the GPU check's path: no real weights needed)
    times batched and one-at-a-time decoding on the cached upstream stages and writes its summary."""
    import runpy
    import sys
    from pathlib import Path

    from .helpers import TINY, TINY_SASREC

    cfg, _ = evaluated
    out = tmp_path / "bench.json"
    overrides = [f"paths.artifacts={cfg.paths.artifacts}", *TINY, *TINY_SASREC, *EVAL]
    script = Path(__file__).resolve().parents[1] / "experiments" / "bench_evaluation.py"
    argv = ["bench_evaluation.py", "--per-task", "2", "--batch", "2", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--random-weights", "tiny", "--out", str(out), *overrides])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    summary = json.loads(out.read_text())
    assert (summary["llm"], summary["device"], summary["precision"]) == ("random:tiny", "cpu", "fp32")
    assert summary["complete"] and {"interest", "retrieval"} <= set(summary["tasks"])
    for task in summary["tasks"].values():
        assert task["examples"] >= 1 and task["batched_examples_per_s"] > 0 and task["speedup"] > 0
    assert "--random-weights tiny" in summary["command"]
    # a real model cannot be swapped for a random one and still be called aligned
    monkeypatch.setattr(sys, "argv", [*argv, "--random-weights", "tiny", "--aligned", *overrides])
    with pytest.raises(SystemExit, match="cannot be combined"):
        runpy.run_path(str(script), run_name="__main__")
