"""The recommender's leave-one-out attributions, explanation targets built from them, and the metrics that
compare an explanation's citations with them."""

import numpy as np
import pytest
import torch

from recexplainer.alignment_data.explanations import (
    ExplanationWriter,
    evidence_text,
    join_titles,
    shared_genre,
)
from recexplainer.explain import faithfulness
from recexplainer.explain.metrics import explanation_metrics
from recexplainer.recommender.attribution import (
    item_scores,
    leave_one_out,
    ranked_attributions,
    top_attributed,
)
from recexplainer.recommender.base import Recommender


class BagRecommender(Recommender):
    """user vector = sum of the history's item embeddings, so score(item | h) = sum_j <E[h_j], E[item]> and
    the leave-one-out attribution of h_j is exactly <E[h_j], E[item]>."""

    max_len = 6

    def __init__(self, emb: torch.Tensor):
        super().__init__()
        self.emb = torch.nn.Parameter(emb, requires_grad=False)

    def item_embeddings(self):
        return self.emb

    def user_vector(self, seq, users):
        return self.emb[seq].sum(1)  # padding row 0 is zero


@pytest.fixture
def bag():
    torch.manual_seed(0)
    emb = torch.randn(8, 4, dtype=torch.float64).float()
    emb[0] = 0.0
    return BagRecommender(emb)


def test_leave_one_out_equals_each_items_contribution(bag):
    histories, items = [[1, 2, 3], [4, 5], [6]], [7, 1, 2]
    full, attributions = leave_one_out(bag, histories, items)
    emb = bag.emb.double()
    for history, item, score, values in zip(histories, items, full, attributions, strict=True):
        expected = np.array([float(emb[h] @ emb[item]) for h in history])
        np.testing.assert_allclose(values, expected, atol=1e-5)
        assert score == pytest.approx(float(emb[history].sum(0) @ emb[item]), abs=1e-5)
    assert item_scores(bag, [[]], [3])[0] == pytest.approx(0.0)  # an empty history is allowed


def test_top_attributed_follows_the_answer_and_never_cites_against_it():
    history = [10, 11, 12, 13]
    values = np.array([0.5, -2.0, 1.5, -0.1])
    assert top_attributed(history, values, "yes", 2) == [12, 10]  # pull the item up
    assert top_attributed(history, values, "no", 2) == [11, 13]  # hold it down
    assert top_attributed(history, values, "yes", 5) == [12, 10]  # never the ones pointing the other way
    assert top_attributed([10, 11], np.array([1.0, 3.0]), "no", 2) == [11, 10]  # none supports: by |value|
    assert top_attributed([7, 7, 8], np.array([1.0, 2.0, 0.5]), "yes", 2) == [7, 8]  # distinct items


def test_evidence_lists_the_items_each_answer_would_cite_with_their_attributions():
    titles = ["", "Heat", "Alien", "Aliens", "Fargo"]
    fmt = "up: {up}; down: {down}."
    history, values = [1, 2, 3, 4], np.array([0.5, -2.0, 1.25, -0.1])
    assert ranked_attributions(history, values, "no", 2) == [(2, -2.0), (4, -0.1)]
    assert ranked_attributions([1, 2], np.array([1.0, 3.0]), "no", 2) == [(2, 3.0), (1, 1.0)]  # by |value|
    assert ranked_attributions([1, 2], np.array([1.0, 3.0]), "no", 2, fallback=False) == []
    text = evidence_text(fmt, history, values, titles, 2)
    assert text == "up: Aliens (+1.25) and Heat (+0.50); down: Alien (-2.00) and Fargo (-0.10)."
    for answer, side in (("yes", text.split(";")[0]), ("no", text.split(";")[1])):
        assert all(titles[i] in side for i in top_attributed(history, values, answer, 2))
    # a side no item supports reads "no item" (never the other side's items); repeats: the picked position
    assert evidence_text(fmt, [1, 2], np.array([1.0, 3.0]), titles, 2) == (
        "up: Alien (+3.00) and Heat (+1.00); down: no item."
    )
    assert evidence_text(fmt, [3, 3, 4], np.array([-1.0, 2.0, 0.5]), titles, 1) == (
        "up: Aliens (+2.00); down: Aliens (-1.00)."
    )


def test_explanation_writer_renders_titles_and_genres_only_where_shared():
    titles = ["", "Heat", "Alien", "Aliens", "Fargo"]
    table = [
        {},
        {"genres": ["Action"]},
        {"genres": ["Sci-Fi", "Horror"]},
        {"genres": ["Sci-Fi"]},
        {"genres": ["Crime"]},
    ]

    class Task:
        yes_templates = ["{decision}, because {cited}.", "{decision}, because {cited} ({genre})."]
        no_templates = ["{decision}, because {cited}."]

    writer = ExplanationWriter(Task, titles, table, np.random.default_rng(0))
    assert join_titles(["A"]) == "A" and join_titles(["A", "B", "C"]) == "A, B and C"
    assert shared_genre("yes", ["Sci-Fi"], [["Sci-Fi", "Horror"], ["Sci-Fi"]]) == "Sci-Fi"
    assert shared_genre("no", ["Crime"], [["Sci-Fi", "Horror"], ["Sci-Fi"]]) == "Sci-Fi"
    assert shared_genre("no", ["Sci-Fi"], [["Sci-Fi"], ["Sci-Fi"]]) is None  # the item has it
    texts = {writer.write("yes", 3, [2, 1])[0] for _ in range(40)}
    assert texts == {"Yes, because Alien and Heat.", "Yes, because Alien and Heat (Sci-Fi)."}
    texts = {writer.write("yes", 4, [2, 1])[0] for _ in range(20)}  # no shared genre: never the genre form
    assert texts == {"Yes, because Alien and Heat."}


def test_explanation_metrics_compare_citations_with_attributions():
    records = [
        {
            "decision": "yes",
            "answer": "yes",
            "text": "Yes, because Heat and Alien.",
            "text_decision": "yes",
            "mentioned": [1, 2],
            "cited": [1, 2],
            "hallucinated": [],
            "attribution_agreement": 1.0,
            "counterfactual": {
                "cited_delta": 2.0,
                "random_delta": 1.0,
                "cited_abs": 3.0,
                "random_abs": 1.0,
                "cited_wins": 1.0,
            },
        },
        {
            "decision": "no",
            "answer": "no",
            "text": "No, because Fargo.",
            "text_decision": "no",
            "mentioned": [4],
            "cited": [4],
            "hallucinated": [],
            "attribution_agreement": 0.0,
            "counterfactual": {
                "cited_delta": 0.5,
                "random_delta": 1.0,
                "cited_abs": 1.0,
                "random_abs": 1.0,
                "cited_wins": 0.0,
            },
        },
        {
            "decision": "no",
            "answer": "yes",
            "text": "No, because Fargo.",
            "text_decision": "no",
            "mentioned": [],
            "cited": [],
            "hallucinated": [],
            "attribution_agreement": None,
        },
    ]
    patterns = [faithfulness.template_pattern("{decision}, because {cited}.")]
    m = explanation_metrics(records, patterns)
    assert m["explain/attribution_agreement"] == pytest.approx(0.5)  # pairs without citations left out
    assert m["explain/faithfulness_ratio"] == pytest.approx(2.0)  # mean 2.0 over mean 1.0
    assert m["explain/distinct_ratio"] == pytest.approx(2 / 3)
    assert m["explain/template_copy_rate"] == pytest.approx(1.0)
    assert m["explain/citation_rate"] == pytest.approx(2 / 3)
    assert not faithfulness.copies_template(
        "Yes, because the user likes crime films a lot",
        [faithfulness.template_pattern("{decision}, because the user watched {cited}.")],
    )
    assert faithfulness.attribution_agreement([1, 2, 2], [2, 5]) == pytest.approx(0.5)
    assert faithfulness.attribution_agreement([], [2, 5]) is None
