"""Title matching, answer parsing and the alignment metrics on hand-computed cases."""

import math

import pytest

from recexplainer.tasks.metrics import (
    history_coverage,
    ranking_ndcg,
    retrieval_rank,
    retrieval_scores,
    valid_ratio,
)
from recexplainer.text import TitleIndex, normalize, parse_list, parse_yes_no

TITLES = [
    "<pad>",
    "Toy Story",
    "Heat",
    "Star Wars",
    "Star Wars: Return of the Jedi",
    "Chasing Amy",
    "Chasing Amy [2]",
    "American President, The",
]


def test_normalize():
    assert normalize("  Toy   STORY \n") == "toy story"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Heat; Toy Story; Star Wars", ["Heat", "Toy Story", "Star Wars"]),
        ("1. Heat\n2) Toy Story\n3: Star Wars.", ["Heat", "Toy Story", "Star Wars"]),
        ('- "Heat"\n* \u201cToy Story\u201d\n', ["Heat", "Toy Story"]),
        ("", []),
        (";;\n\n", []),
        ("American President, The", ["American President, The"]),
    ],
)
def test_parse_list_tolerates_odd_output(text, expected):
    assert parse_list(text) == expected


def test_parse_list_limit_and_yes_no():
    assert parse_list("a; b; c", limit=2) == ["a", "b"]
    assert parse_yes_no("Yes, the user will like it") == "yes"
    assert parse_yes_no("No.") == "no"
    assert parse_yes_no("I think so... yes") == "yes"
    assert parse_yes_no("maybe") is None


def test_title_index_exact_fuzzy_and_repeated_titles():
    index = TitleIndex(TITLES)
    assert index.match(" toy story ") == 1 and index.match("Toy Stories") is None
    assert index.fuzzy("Toy Stori") == 1 and index.fuzzy("Completely different") is None
    assert index.match("Chasing Amy") == 5 and index.match("Chasing Amy [2]") == 6


def test_mentions_prefer_the_longest_title_and_keep_order():
    index = TitleIndex(TITLES)
    text = "The user loved Star Wars: Return of the Jedi and Heat, and also toy story."
    assert index.mentions(text) == [4, 2, 1]  # not 'Star Wars' inside the longer title
    assert index.mentions("Heather likes heatwaves") == []  # word boundaries


def test_retrieval_scores():
    assert retrieval_rank([3, None, 7], 7) == 2
    assert retrieval_scores([7, 1, 2], 7) == (1.0, 1.0)
    hr, ndcg = retrieval_scores([1, 7], 7)
    assert hr == 1.0 and ndcg == pytest.approx(1 / math.log2(3))
    assert retrieval_scores([1, 2, 3, 4, 5, 7], 7) == (0.0, 0.0)  # only the first 5 count
    assert retrieval_scores([1, 1, 1, 1, 1, 7], 7)[0] == 1.0  # repeats do not use up the 5 slots


def test_ranking_ndcg_graded_relevance():
    ranked = [10, 20, 30, 40, 50]
    assert ranking_ndcg(ranked, ranked) == pytest.approx(1.0)
    idcg = 1000 + 100 / math.log2(3) + 10 / 2 + 1 / math.log2(5)
    swapped = (100 + 1000 / math.log2(3) + 10 / 2 + 1 / math.log2(5)) / idcg
    assert ranking_ndcg([20, 10, 30, 40, 50], ranked) == pytest.approx(swapped)
    assert ranking_ndcg([None, None], ranked) == 0.0
    assert ranking_ndcg([10, 10, 10], ranked) == pytest.approx(1000 / idcg)


def test_history_coverage_and_valid_ratio():
    assert history_coverage([1, 2, None, 9], [1, 2, 3, 4]) == 0.5
    assert history_coverage([], []) == 0.0
    assert valid_ratio([1, None, 3, None]) == 0.5 and valid_ratio([]) == 0.0


def test_titles_ending_in_punctuation_match_after_parsing():
    """parse_list strips trailing punctuation; the index must still find "Airplane!" and "Escape from L.A.",
    and a title spelled exactly like the stripped form keeps its own id."""
    index = TitleIndex(["<pad>", "Airplane!", "Escape from L.A.", "Crash!", "Crash"])
    parsed = parse_list("1. Airplane!; Escape from L.A.; Crash!; Crash")
    assert parsed == ["Airplane", "Escape from L.A", "Crash", "Crash"]
    assert [index.match(t) for t in parsed] == [1, 2, 4, 4]
    assert index.match("Airplane!") == 1 and index.match("Crash!") == 3
