"""The shared text rules: titles, lists of titles with the configured separator, chat formatting."""

import json

import pytest

from recexplainer.cli import run
from recexplainer.llm import loading
from recexplainer.text import (
    ChatFormatter,
    TitleIndex,
    join_titles,
    parse_list,
    strip_suffix,
    unique_titles,
    with_suffix,
)

TITLES = ["<pad>", "Gone Fishin'", "'Til There Was You", "Enfer, L'", "Airplane!", "Toy Story"]


@pytest.mark.parametrize("item", range(1, len(TITLES)))
def test_every_title_generated_exactly_is_matched_after_parsing(item):
    """The parser drops surrounding quotes and trailing punctuation; the index holds those forms too, so
    titles that begin or end with an apostrophe are found when generated exactly."""
    index = TitleIndex(TITLES)
    parsed = parse_list(f"1. {TITLES[item]}; Toy Story")
    assert [index.match(t) for t in parsed] == [item, 5]
    assert index.mentions(f"Because the user liked {TITLES[item]} a lot.") == [item]


def test_a_title_spelled_like_the_parsed_form_of_another_keeps_its_own_item():
    index = TitleIndex(["<pad>", "Airplane!", "Airplane"])
    assert index.match("Airplane") == 2 and index.match("Airplane!") == 1


def test_unique_titles_suffixes_repeats_and_the_index_strips_the_suffix():
    titles = ["Hamlet", "Crash", "hamlet ", "Hamlet [2]", "Hamlet"]
    assert unique_titles(titles) == 2
    # "Hamlet [2]" is taken by a real title: the repeats get the next free numbers
    assert titles == ["Hamlet", "Crash", "hamlet  [3]", "Hamlet [2]", "Hamlet [4]"]
    assert strip_suffix(with_suffix("Crash", 2)) == "Crash"
    index = TitleIndex(["<pad>", *titles])
    assert index.match("Hamlet [4]") == 5 and index.match("hamlet") == 1


@pytest.mark.parametrize("separator", ["; ", " | ", " / "])
def test_lists_round_trip_with_the_separator(separator):
    titles = ["Emma", "Little Princess, The", "Walking Dead, The"]
    text = join_titles(titles, separator)
    assert parse_list(text, separator) == titles
    mark = separator.strip()
    assert parse_list(f"{mark} ".join(titles), separator) == titles  # spacing around the mark is tolerated
    assert parse_list(f"  {mark}".join(titles), separator) == titles


@pytest.mark.slow
def test_chat_formatter_with_an_explicit_template_and_with_the_tokenizers_own():
    plain = ChatFormatter(object(), "USER: {prompt} ASSISTANT:", system_prompt="Be brief.")
    assert plain("Q2", shots=[("Q1", "A1")]) == "Be brief. USER: Q1 ASSISTANT: A1 USER: Q2 ASSISTANT:"
    # a leading system message replaces the configured system prompt
    messages = [{"role": "system", "content": "Judge."}, {"role": "user", "content": "Score?"}]
    assert plain.messages(messages) == "Judge. USER: Score? ASSISTANT:"
    tokenizer = loading.tiny_tokenizer()
    chat = ChatFormatter(tokenizer)
    assert chat("Hi") == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    with pytest.raises(ValueError, match="prompt_template"):
        ChatFormatter(object())
    with pytest.raises(ValueError, match="must contain"):
        ChatFormatter(object(), "no slot")


@pytest.mark.slow
def test_a_non_default_separator_round_trips_through_targets_evaluation_and_explanations(make_cfg):
    """prompt.title_separator=' | ': the training targets join titles with it, the evaluation parses the
    LLM's lists with it, and explanations citing titles listed with it are matched."""
    from recexplainer.evaluate import stage as eval_stage
    from recexplainer.pipeline import stage_folder

    cfg = make_cfg("stage=alignment_data", "llm=tiny_random", "prompt=hybrid", "prompt.title_separator=' | '")
    folder = run(cfg)
    titles = [row["title"] for row in map(json.loads, (stage_folder(cfg, "data") / "items.jsonl").open())]
    rows = [json.loads(line) for line in (folder / "examples" / "ranking.train.jsonl").open()][:5]
    assert rows and all(" | " in r["target"] and ";" not in r["target"] for r in rows)
    upstream = {name: stage_folder(cfg, name) for name in ("data", "recommender", "alignment_data")}
    predictor = eval_stage.llm_predictor(cfg, upstream, titles, {}, "unaligned", "test")
    for r in rows:
        parsed = predictor.parse("ranking", [r["target"]])
        assert parsed["items"] == r["labels"]["items"]
    beams = [join_titles([titles[i], titles[j]], " | ") for i, j in ((3, 4), (5, 6))]
    assert predictor.parse("retrieval", beams)["items"] == [3, 5]  # one title per beam: the first
    assert predictor.parse("retrieval", beams)["items_strict"] == [
        None,
        None,
    ]  # the reference: each beam whole
    top_k = {"labels": {"item": 3, "target_items": [3, 4]}}  # trained to list the top k: each beam's first
    assert predictor.parse("retrieval", beams, top_k)["items_strict"] == [3, 5]
    index = TitleIndex(titles)
    assert index.mentions(f"Yes, because of {join_titles([titles[7], titles[8]], ' | ')}.") == [7, 8]
