"""Title distillation (aligner.title_distill_weight > 0): the task-1 title's tokens trained towards the
recommender's softmax over the items, summed over a trie of the catalog's tokenized titles."""

import math

import pytest
import torch

from recexplainer.aligner.data import collate
from recexplainer.aligner.model import RecExplainerLM

from .helpers import D_REC, ITEM, USER, compose_config, tiny_lm

EOS = 9
# items 1..3 (row 0 padding): "5 6 <eos>", "5 7 <eos>", "8 <eos>"
TITLES = torch.tensor([[-1, -1, -1], [5, 6, EOS], [5, 7, EOS], [8, EOS, -1]])


def distill_model(weight: float = 1.0, temperature: float = 1.0) -> RecExplainerLM:
    model = RecExplainerLM(
        tiny_lm(0), USER, ITEM, D_REC, title_distill_weight=weight, title_distill_temperature=temperature
    )
    model.set_item_table(torch.eye(4, D_REC))  # item k's embedding is the k-th unit vector
    model.set_title_tokens(TITLES)
    return model


def teacher_user(probs: list[float]) -> torch.Tensor:
    """A user vector whose softmax over items 1..3 (unit vectors) is ``probs``."""
    user = torch.zeros(1, D_REC)
    user[0, 1:4] = torch.log(torch.tensor(probs))
    return user


def expected_loss(logits: torch.Tensor, targets: list[dict[int, float]]) -> torch.Tensor:
    log_p = torch.log_softmax(logits.float(), -1)
    return torch.stack(
        [-sum(q * log_p[t, v] for v, q in target.items()) for t, target in enumerate(targets)]
    ).mean()


def call(model, logits, answer, probs):
    """The loss on one task-1 row whose labelled positions hold ``answer`` (logits one row per position)."""
    targets = torch.tensor([answer])
    keep = torch.ones_like(targets, dtype=torch.bool)
    return model._title_distill_loss(
        logits, keep, targets, torch.tensor([0]), teacher_user(probs), torch.zeros(1, 1, dtype=torch.long)
    )


def test_the_target_at_each_answer_token_is_the_recommenders_mass_per_next_token_of_the_matching_titles():
    torch.manual_seed(0)
    model = distill_model()
    logits = torch.randn(3, 16)
    loss = call(model, logits, [5, 6, EOS], [0.5, 0.3, 0.2])
    expected = expected_loss(
        logits,
        [
            {5: 0.8, 8: 0.2},  # every title: "5" starts items 1 and 2, "8" item 3
            {6: 0.5 / 0.8, 7: 0.3 / 0.8},  # after "5": items 1 and 2
            {EOS: 1.0},  # after "5 6": item 1 alone
        ],
    )
    assert torch.allclose(loss, expected, atol=1e-5)
    # the loss is smallest where the LM's distribution is the target: its value there is the target's entropy
    best = torch.full((3, 16), -1e4)
    best[0, 5], best[0, 8] = math.log(0.8), math.log(0.2)
    best[1, 6], best[1, 7] = math.log(0.625), math.log(0.375)
    best[2, EOS] = 0.0
    entropy = (
        -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) - (0.625 * math.log(0.625) + 0.375 * math.log(0.375))
    ) / 3
    assert abs(float(call(model, best, [5, 6, EOS], [0.5, 0.3, 0.2])) - entropy) < 1e-4
    assert float(loss) > entropy


def test_a_temperature_sharpens_the_target_and_positions_off_every_title_are_skipped():
    torch.manual_seed(0)
    logits = torch.randn(3, 16)
    sharp = call(distill_model(temperature=0.5), logits, [8, EOS], [0.5, 0.3, 0.2])
    p = torch.tensor([0.5, 0.3, 0.2]) ** 2
    p = p / p.sum()
    expected = expected_loss(logits[:2], [{5: float(p[0] + p[1]), 8: float(p[2])}, {EOS: 1.0}])
    assert torch.allclose(sharp, expected, atol=1e-5)
    # "5 6 4": a list's separator (4) where a title ends: the third position leaves the trie and is skipped
    listed = call(distill_model(), logits, [5, 6, 4], [0.5, 0.3, 0.2])
    assert torch.allclose(
        listed, expected_loss(logits[:2], [{5: 0.8, 8: 0.2}, {6: 0.625, 7: 0.375}]), atol=1e-5
    )
    assert call(distill_model(), logits, [4, 5, 6], [0.5, 0.3, 0.2]) is None  # no title starts with "4"


def test_the_forward_adds_the_weighted_loss_on_the_task1_rows_and_trains_the_first_token():
    """Two rows, one a task-1 example: the loss is the plain next-token loss plus weight x the distillation on
    that row; training on it moves the LM's first answer token towards the recommender's mass."""
    torch.manual_seed(0)
    model = distill_model(weight=0.5)
    rows = [
        {
            "input_ids": [3, USER, 4, 5, 6, EOS],
            "labels": [-100, -100, -100, 5, 6, EOS],
            "users": torch.randn(1, D_REC),
            "items": torch.empty(0, D_REC),
            "head_user": teacher_user([0.1, 0.1, 0.8])[0],
            "head_exclude": [],
        },
        {
            "input_ids": [3, 4, 10, 11],
            "labels": [-100, -100, 10, 11],
            "users": torch.empty(0, D_REC),
            "items": torch.empty(0, D_REC),
        },
    ]
    batch = collate(rows, pad_id=0)
    out = model(**batch)
    plain = RecExplainerLM(model.lm, USER, ITEM, D_REC)
    plain.user_projector, plain.placeholder_embeddings = model.user_projector, model.placeholder_embeddings
    lm_loss = plain(**{k: v for k, v in batch.items() if not k.startswith("head_")}).loss
    assert torch.allclose(out.lm_loss, lm_loss, atol=1e-6)
    assert torch.allclose(out.loss, lm_loss + 0.5 * out.title_distill_loss, atol=1e-5)
    assert out.item_head_loss is None  # no item head

    # distillation alone (no next-token loss on the one-hot answer): the first token learns the teacher's mass
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(60):
        out = model(**batch)
        optimizer.zero_grad()
        loss = model._title_distill_loss(
            out.logits,
            (batch["labels"][:, 1:] != -100),
            batch["labels"][:, 1:],
            batch["head_rows"],
            batch["head_users"],
            batch["head_exclude"],
        )
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        first = torch.softmax(model(**batch).logits[0].float(), -1)
    assert abs(float(first[8]) - 0.8) < 0.1 and abs(float(first[5]) - 0.2) < 0.1


def test_without_task1_rows_or_titles_nothing_is_added():
    torch.manual_seed(0)
    model = distill_model()
    batch = collate(
        [
            {
                "input_ids": [3, 4, 10, 11],
                "labels": [-100, -100, 10, 11],
                "users": torch.empty(0, D_REC),
                "items": torch.empty(0, D_REC),
            }
        ],
        pad_id=0,
    )
    out = model(**batch)
    assert out.title_distill_loss is None and torch.allclose(out.loss, out.lm_loss)
    with pytest.raises(ValueError, match="item table has 4 rows"):
        model.set_title_tokens(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="title_distill_weight"):
        RecExplainerLM(tiny_lm(), USER, ITEM, D_REC, title_distill_weight=-1.0)


def test_title_token_table_tokenizes_titles_as_training_targets():
    from recexplainer.aligner.stage import title_token_table

    class Tokenizer:
        eos_token = "</s>"

        def __call__(self, text, add_special_tokens=False):
            vocab = {"a": 1, "b": 2, "c": 3, "</s>": 4}
            return {"input_ids": [vocab[w] for w in text.replace("</s>", " </s>").split()]}

    table = title_token_table(Tokenizer(), ["", "a b", "c"])
    assert table.tolist() == [[-1, -1, -1], [1, 2, 4], [3, 4, -1]]


def test_the_stage_check_counts_exact_titles_and_answers_that_start_like_one():
    """A top-k list's answer (a title's first tokens, then a separator) still has positions to follow; an answer
    that starts like no title has none."""
    from recexplainer.aligner.stage import answers_on_titles

    exact, started = answers_on_titles(TITLES, [[5, 6, EOS], [8, EOS], [5, 6, 4, 8, EOS], [4, 5, EOS], []])
    assert (exact, started) == (2, 3)
    assert answers_on_titles(TITLES, [[4, 5, EOS]]) == (0, 0)


def test_config_checks_and_cache_keys():
    from recexplainer.aligner.stage import key_fields
    from recexplainer.config.validate import ConfigError, validate
    from recexplainer.pipeline import STAGES

    stages = tuple(STAGES)
    default = compose_config([])
    assert default.aligner.title_distill_weight == 0.0
    # off: its knobs stay out of the key (every aligner trained before they existed keeps its key)
    assert "title_distill_weight" not in key_fields(default)["aligner"]
    assert key_fields(compose_config(["aligner.title_distill_temperature=2"])) == key_fields(default)
    on = compose_config(["aligner.title_distill_weight=1"])
    assert key_fields(on)["aligner"]["title_distill_weight"] == 1.0
    assert key_fields(on) != key_fields(
        compose_config(["aligner.title_distill_weight=1", "aligner.title_distill_temperature=2"])
    )
    validate(on, stages)
    with pytest.raises(ConfigError, match="title_distill_temperature"):
        validate(
            compose_config(["aligner.title_distill_weight=1", "aligner.title_distill_temperature=0"]), stages
        )
    with pytest.raises(ConfigError, match="aligner.title_distill_weight=0"):
        validate(
            compose_config(
                ["aligner.title_distill_weight=1", "aligner.item_head_weight=0", "prompt.mask=history"]
            ),
            stages,
        )


@pytest.mark.slow
def test_an_aligner_with_title_distillation_trains_and_logs_it(tmp_path):
    """Tiny pipeline with aligner.title_distill_weight=1 and no item head: the task-1 answers are catalog titles
    tokenized as the table has them, the distillation loss is logged and inside the training loss."""
    import json

    from recexplainer.cli import run

    from .helpers import ALIGN, TINY, TINY_SASREC

    base = [
        f"paths.artifacts={tmp_path}",
        *TINY,
        *TINY_SASREC,
        *ALIGN,
        "aligner.item_head_weight=0",
        "aligner.title_distill_weight=1",
    ]
    folder = run(compose_config(base))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 < metrics["train/title_distill_loss"] < float("inf")
    assert 0 < metrics["valid/title_distill_loss"] < float("inf")
    assert 0 < metrics["valid/lm_loss"] < metrics["valid/loss"]
    assert "train/item_head_loss" not in metrics
