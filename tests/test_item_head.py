"""The aligner's optional item head (aligner.item_head_weight > 0): scores, target, loss, gradients, batches,
configuration and cache keys."""

import pytest
import torch

from recexplainer.aligner.data import collate
from recexplainer.aligner.model import RecExplainerLM, base_model

from .helpers import D_REC, ITEM, USER, compose_config, tiny_lm

N_ITEMS = 12  # items 1..12, row 0 padding


def head_model(
    weight: float = 1.0, temperature: float = 1.0, seed: int = 0, space: str = "projected"
) -> RecExplainerLM:
    model = RecExplainerLM(
        tiny_lm(seed),
        USER,
        ITEM,
        D_REC,
        item_head_weight=weight,
        item_head_temperature=temperature,
        item_head_space=space,
    )
    torch.manual_seed(seed + 1)
    model.set_item_table(torch.randn(N_ITEMS + 1, D_REC))
    return model


def head_batch(with_head=(True, False)) -> dict:
    rows = []
    for k, head in enumerate(with_head):
        row = {
            "input_ids": [5, USER, 6 + k, 7, 8, 9][: 5 + k],
            "labels": [-100, -100, -100, 7, 8, 9][: 5 + k],
            "users": torch.randn(1, D_REC),
            "items": torch.empty(0, D_REC),
        }
        if head:
            row["head_user"] = torch.randn(D_REC)
            row["head_exclude"] = [2, 5][: k + 1]
        rows.append(row)
    return collate(rows, pad_id=0)


def test_collate_carries_the_head_targets_of_the_head_rows_only():
    torch.manual_seed(0)
    batch = head_batch((False, True))
    assert batch["head_rows"].tolist() == [1]
    assert batch["head_users"].shape == (1, D_REC)
    assert batch["head_exclude"].tolist() == [[2, 5]]
    assert "head_rows" not in head_batch((False, False))


def test_collate_says_which_head_rows_train_the_head_and_which_answer_with_a_title():
    torch.manual_seed(0)
    rows = [
        {
            "input_ids": [5, USER, 6],
            "labels": [-100, -100, 6],
            "users": torch.randn(1, D_REC),
            "items": torch.empty(0, D_REC),
            "head_user": torch.randn(D_REC),
            "head_exclude": [],
            **flags,
        }
        for flags in ({}, {"head_item": True, "head_title": False}, {"head_item": False, "head_title": True})
    ]
    batch = collate(rows, pad_id=0)
    assert batch["head_item"].tolist() == [True, True, False]  # without flags: both (a task-1 example)
    assert batch["head_title"].tolist() == [True, False, True]


def test_the_head_mask_keeps_the_loss_to_the_rows_that_train_the_head():
    """Rows outside ``head_item`` add nothing to the item head's loss: it equals the loss of a batch whose head
    rows are the masked-in ones alone; a mask that keeps none gives the zero (in-graph) loss."""
    torch.manual_seed(0)
    batch = head_batch((True, True))
    model = head_model()
    first_only = {
        **batch,
        "head_rows": batch["head_rows"][:1],
        "head_users": batch["head_users"][:1],
        "head_exclude": batch["head_exclude"][:1],
    }
    masked = model(**{**batch, "head_item": torch.tensor([True, False])})
    assert torch.allclose(masked.item_head_loss, model(**first_only).item_head_loss, atol=1e-6)
    assert not torch.allclose(masked.item_head_loss, model(**batch).item_head_loss)
    none = model(**{**batch, "head_item": torch.tensor([False, False])})
    assert none.item_head_kl is None and torch.allclose(none.loss, none.lm_loss)


def test_scores_mask_the_padding_and_excluded_items():
    model = head_model()
    scores = model.item_scores(torch.randn(2, model.item_query.in_features), torch.tensor([[3, 0], [4, 7]]))
    assert scores.shape == (2, N_ITEMS + 1)
    assert torch.isinf(scores[:, 0]).all()
    assert torch.isinf(scores[0, 3]) and torch.isinf(scores[1, 4]) and torch.isinf(scores[1, 7])
    assert torch.isfinite(scores[0, [1, 2, 4, 7]]).all()


def test_the_heads_yes_probability_is_the_items_percentile_in_its_ranking():
    """Task 3 read off the head: the share of the other rankable items scored below the asked one (ties half),
    1 at the top, 0 at the bottom and for an excluded item; the padding item and exclusions do not count."""
    from recexplainer.evaluate.predictors import ItemHeadPredictor

    inf = float("-inf")
    scores = torch.tensor(
        [
            [inf, 5.0, 1.0, 3.0, 2.0, 4.0],  # item 1 is the top of 5: outscores the 4 others
            [inf, 5.0, 1.0, 3.0, 2.0, 4.0],  # item 2 the bottom
            [inf, 5.0, 1.0, 3.0, 2.0, 4.0],  # item 3 the middle: 2 of 4 below it
            [inf, 5.0, inf, 3.0, 3.0, 4.0],  # item 2 excluded; item 3 tied with item 4: 0 + 1/2 of 3 others
            [inf, 5.0, inf, 3.0, 3.0, 4.0],  # the excluded item itself
        ]
    )
    got = ItemHeadPredictor.percentile(scores, [1, 2, 3, 3, 2])
    assert got == pytest.approx([1.0, 0.0, 0.5, 0.5 / 3, 0.0])


def test_the_head_answers_tasks_1_2_and_3_from_one_score_matrix(monkeypatch):
    """Task 1: the head's five best items; task 2: the shown candidates by head score (ties by item id); task 3:
    the asked item's percentile. One scoring of the rows serves each."""
    from recexplainer.evaluate.predictors import ItemHeadPredictor

    head = ItemHeadPredictor.__new__(ItemHeadPredictor)  # no model: the scores are given
    head.batch_size, head.titles = 4, ["", "a", "b", "c", "d", "e", "f"]
    head.kinds = ("retrieval", "ranking", "interest", "interest_hard")
    inf = float("-inf")
    scores = torch.tensor([[inf, 1.0, 5.0, 3.0, 2.0, 0.0, 4.0], [inf, 4.0, 1.0, 1.0, 9.0, 0.0, inf]])
    monkeypatch.setattr(head, "scores", lambda rows: scores[: len(rows)])
    rows = [{"labels": {"shown": [1, 3, 2], "item": 3}}, {"labels": {"shown": [2, 3, 5, 4], "item": 5}}]
    ranked = head.predict("ranking", rows)
    assert [r["items"] for r in ranked] == [[2, 3, 1], [4, 2, 3, 5]]
    assert [r["titles"] for r in ranked] == [["b", "c", "a"], ["d", "b", "c", "e"]]
    top = [r["items"] for r in head.predict("retrieval", rows)]
    assert top[0] == [2, 6, 3, 4, 1] and top[1][:2] == [4, 1] and set(top[1][2:]) == {2, 3, 5}  # 2, 3 tied
    assert [r["p_yes"] for r in head.predict("interest", rows)] == pytest.approx([3 / 5, 0.0])
    with pytest.raises(ValueError, match="not history"):
        head.predict("history", rows)


def test_the_loss_adds_the_weighted_cross_entropy_from_the_recommender_softmax():
    torch.manual_seed(0)
    batch = head_batch((True, False))
    model = head_model(weight=0.5, temperature=2.0)
    out = model(**batch)
    plain = RecExplainerLM(model.lm, USER, ITEM, D_REC)  # the same LM and projectors, no head
    plain.user_projector, plain.item_projector = model.user_projector, model.item_projector
    plain.placeholder_embeddings = model.placeholder_embeddings
    lm_loss = plain(**{k: v for k, v in batch.items() if not k.startswith("head_")}).loss
    # by hand: the hidden state at the last prompt token of row 0 (position 2 predicts the first answer token)
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["user_vectors"], batch["item_vectors"])
        h = base_model(model.lm).get_decoder()(inputs_embeds=embeds).last_hidden_state[0, 2]
        keys = model.item_projector(model.item_table)
        logits = (model.item_query(h) @ keys.T) * model.item_logit_scale.exp()
        teacher = batch["head_users"][0] @ model.item_table.T / 2.0
        for t in (logits, teacher):
            t[[0, 2]] = float("-inf")  # padding and the excluded item 2
        p = torch.softmax(teacher, -1)
        expected = -(p[p > 0] * torch.log_softmax(logits, -1)[p > 0]).sum()
    assert torch.allclose(out.item_head_loss, expected, atol=1e-5)
    assert torch.allclose(out.loss, lm_loss + 0.5 * expected, atol=1e-5)
    # logged apart: the next-token loss alone and the KL divergence (the cross-entropy minus the target's entropy)
    entropy = -(p[p > 0] * torch.log(p[p > 0])).sum()
    assert torch.allclose(out.lm_loss, lm_loss, atol=1e-5)
    assert torch.allclose(out.item_head_kl, expected - entropy, atol=1e-5)
    assert out.item_head_kl >= 0


def test_the_recommender_space_head_scores_as_the_recommender_does():
    torch.manual_seed(0)
    model = head_model(space="recommender")
    hidden = model.item_query.in_features
    assert model.item_query.weight.shape == (D_REC, hidden)
    # zero at the start: uniform scores, so the head's first gradients leave the LLM's hidden states alone
    h = torch.randn(3, hidden)
    assert torch.equal(model.item_scores(h)[:, 1:], torch.zeros(3, N_ITEMS))
    # a query equal to the user vector gives the recommender's own scores, hence its exact distribution
    users = torch.randn(3, D_REC)
    with torch.no_grad():
        weight = torch.linalg.lstsq(h, users).solution.T  # (D_REC, hidden): h @ weight.T == users
        model.item_query.weight.copy_(weight)
    exclude = torch.tensor([[3, 0], [4, 7], [0, 0]])
    scores = model.item_scores(h, exclude)
    expected = users @ model.item_table.T
    keep = torch.isfinite(scores)
    assert torch.isinf(scores[:, 0]).all() and torch.isinf(scores[0, 3]) and torch.isinf(scores[1, 7])
    assert torch.allclose(scores[keep], expected[keep], atol=1e-4)
    target = model.recommender_distribution(users, exclude)
    assert torch.allclose(torch.softmax(scores, -1), target, atol=1e-5)
    # trained end to end: the loss reaches the map into the recommender's space and the LLM
    model = head_model(space="recommender")
    model(**head_batch((True, True))).loss.backward()
    assert model.item_query.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="item_head_space"):
        head_model(space="llm")


def test_both_spaces_train_two_heads_and_read_the_recommender_one():
    from recexplainer.aligner.setup import HEAD_KEYS

    torch.manual_seed(0)
    batch = head_batch((True, True))
    both = head_model(space="both")
    hidden = both.item_query.in_features
    assert both.item_query.weight.shape == (D_REC, hidden)  # the head that is read: the recommender's space
    assert both.projected_query.weight.shape == (hidden, hidden)
    with torch.no_grad():
        both.item_query.weight.normal_()
    # the same LM, projectors and head weights as two one-space models: the loss is the sum of their head losses
    parts = []
    for space, query, scale in (
        ("recommender", both.item_query, both.item_logit_scale),
        ("projected", both.projected_query, both.projected_logit_scale),
    ):
        single = head_model(space=space)
        single.lm, single.user_projector, single.item_projector = (
            both.lm,
            both.user_projector,
            both.item_projector,
        )
        single.placeholder_embeddings, single.item_table = both.placeholder_embeddings, both.item_table
        single.item_query, single.item_logit_scale = query, scale
        parts.append(single(**batch))
    out = both(**batch)
    assert torch.allclose(out.item_head_loss, parts[0].item_head_loss + parts[1].item_head_loss, atol=1e-5)
    assert torch.allclose(out.item_head_kl, parts[0].item_head_kl + parts[1].item_head_kl, atol=1e-5)
    assert torch.allclose(out.lm_loss, parts[0].lm_loss, atol=1e-6)
    h = torch.randn(2, hidden)
    single = head_model(space="recommender")
    single.item_table, single.item_query, single.item_logit_scale = (
        both.item_table,
        both.item_query,
        both.item_logit_scale,
    )
    assert torch.allclose(both.item_scores(h), single.item_scores(h))
    both.zero_grad()
    out.loss.backward()
    for p in (both.item_query.weight, both.projected_query.weight, both.projected_logit_scale):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # both heads are saved with the aligner
    saved = [k for k in both.state_dict() if k.startswith(HEAD_KEYS)]
    assert {"item_query.weight", "projected_query.weight", "projected_logit_scale"} <= set(saved)
    # a batch without head rows: every head parameter in the graph with a zero gradient (DDP)
    both.zero_grad()
    both(**head_batch((False, False))).loss.backward()
    assert both.projected_query.weight.grad is not None and both.projected_query.weight.grad.abs().sum() == 0


def test_gradients_reach_the_head_and_a_batch_without_head_rows_gives_zero_ones():
    torch.manual_seed(0)
    model = head_model()
    model(**head_batch((True, True))).loss.backward()
    for p in (model.item_query.weight, model.item_logit_scale, model.item_projector[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.zero_grad()
    out = model(**head_batch((False, False)))
    out.loss.backward()
    assert out.item_head_loss == 0
    # in the graph with a zero gradient: DDP's all-reduce needs every parameter every step
    assert model.item_query.weight.grad is not None and model.item_query.weight.grad.abs().sum() == 0


def test_every_parameter_is_at_least_one_dimensional_for_deepspeed():
    # DeepSpeed's engine broadcasts each parameter as p.data.view(torch.uint8), which fails on a 0-dim tensor
    # of 2-byte elements; ZeRO-2 under bf16 then stops before the first step
    model = head_model().to(torch.bfloat16)
    for name, p in model.named_parameters():
        assert p.dim() >= 1, name
        p.data.view(torch.uint8)
    with pytest.raises(RuntimeError):
        torch.zeros((), dtype=torch.bfloat16).view(torch.uint8)  # what the check guards against


def test_a_saved_zero_dim_scale_and_its_optimizer_moments_load_with_shape_one():
    from recexplainer.aligner.module import AlignerModule

    model = head_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["item_logit_scale"] = torch.tensor(0.25)  # as aligners saved it before the scale had shape (1,)
    fresh = head_model(seed=3)
    fresh.load_state_dict(state)
    assert fresh.item_logit_scale.shape == (1,) and fresh.item_logit_scale.item() == 0.25
    module = AlignerModule.__new__(AlignerModule)
    module.train_sampler, module._loss_ema = None, None
    checkpoint = {
        "optimizer_states": [
            {
                "state": {
                    7: {"step": torch.tensor(3.0), "exp_avg": torch.tensor(0.5), "exp_avg_sq": torch.ones(4)}
                }
            }
        ]
    }
    module.on_load_checkpoint(checkpoint)
    moments = checkpoint["optimizer_states"][0]["state"][7]
    assert moments["exp_avg"].shape == (1,) and moments["exp_avg_sq"].shape == (4,)
    assert moments["step"].dim() == 0  # the optimizer's step count stays a scalar


def test_the_head_learns_the_recommenders_top_item():
    """A few hundred steps on four fixed prompts: the head's top item becomes the recommender's."""
    torch.manual_seed(0)
    model = head_model()
    rows = []
    for k in range(4):
        rows.append(
            {
                "input_ids": [5 + k, USER, 9, 10],
                "labels": [-100, -100, -100, 10],
                "users": torch.randn(1, D_REC),
                "items": torch.empty(0, D_REC),
                "head_user": torch.randn(D_REC) * 3,
                "head_exclude": [],
            }
        )
    batch = collate(rows, pad_id=0)
    teacher = model.recommender_distribution(batch["head_users"], batch["head_exclude"]).argmax(-1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(150):
        out = model(**batch)
        first = float(out.item_head_loss.detach()) if first is None else first
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert float(out.item_head_loss.detach()) < 0.5 * first
    with torch.no_grad():
        hidden = model.head_hidden(
            batch["input_ids"][:, :3], torch.ones(4, 3, dtype=torch.long), batch["user_vectors"]
        )
        assert torch.equal(model.item_scores(hidden).argmax(-1), teacher)


def test_a_model_without_head_refuses_head_scores_and_needs_a_table():
    with pytest.raises(RuntimeError, match="no item head"):
        RecExplainerLM(tiny_lm(), USER, ITEM, D_REC).item_scores(torch.randn(1, 4))
    model = RecExplainerLM(tiny_lm(), USER, ITEM, D_REC, item_head_weight=1.0)
    with pytest.raises(RuntimeError, match="set_item_table"):
        model.item_scores(torch.randn(1, model.item_query.in_features))
    with pytest.raises(ValueError, match="item table of shape"):
        model.set_item_table(torch.randn(5, D_REC + 1))
    with pytest.raises(ValueError, match="item_head_weight"):
        RecExplainerLM(tiny_lm(), USER, ITEM, D_REC, item_head_weight=-1.0)


def test_config_checks_and_cache_keys():
    from recexplainer.aligner.stage import key_fields
    from recexplainer.config.validate import ConfigError, validate
    from recexplainer.pipeline import STAGES

    stages = tuple(STAGES)
    base = compose_config(["aligner.item_head_weight=0"])
    with_head = compose_config(["aligner.item_head_weight=1"])
    other_temperature = compose_config(["aligner.item_head_weight=0", "aligner.item_head_temperature=2"])
    assert compose_config([]).aligner.item_head_weight == 1.0  # the default recipe trains the head
    # no head: the head's knobs stay out of the key (aligners trained before they existed keep theirs)
    assert "item_head_weight" not in key_fields(base)["aligner"]
    assert key_fields(other_temperature) == key_fields(base)
    assert key_fields(with_head)["aligner"]["item_head_weight"] == 1.0
    validate(with_head, stages)
    with pytest.raises(ConfigError, match="item_head_weight"):
        validate(compose_config(["aligner.item_head_weight=-1"]), stages)
    history_mask = compose_config(["aligner.item_head_weight=1", "prompt.mask=history"])
    with pytest.raises(ConfigError, match="aligner.item_head_weight=0"):  # the error names the way out
        validate(history_mask, stages)
    history_mask.stage = "alignment_data"  # stages before the aligner do not train the head
    validate(history_mask, stages)
    validate(compose_config(["aligner.item_head_weight=0", "prompt.mask=history"]), stages)
    # explain.decision=item_head reads the head: an aligner without one, or the unaligned LLM, is a config error
    validate(compose_config(["explain.decision=item_head"]), stages)
    for headless in (["aligner.item_head_weight=0"], ["explain.model=unaligned"]):
        with pytest.raises(ConfigError, match="explain.decision=interest_prompt"):
            validate(compose_config(["explain.decision=item_head", *headless]), stages)
    no_explain = compose_config(
        ["explain.decision=item_head", "aligner.item_head_weight=0", "stage=evaluate"]
    )
    validate(no_explain, stages)  # a run that stops before the explain stage does not read it
    validate(
        compose_config(["explain.decision=item_head", "explain.model=template"]), stages
    )  # no LLM decides
    # the tasks that train the head: the default's task-1 and task-3 examples; [retrieval] (the head before the
    # knob existed) stays out of the key, so that those aligners keep theirs
    assert compose_config([]).aligner.item_head_tasks == ["retrieval", "interest", "interest_hard"]
    assert key_fields(with_head)["aligner"]["item_head_tasks"] == ["retrieval", "interest", "interest_hard"]
    # the head's space: the default trains both heads; projected (the head before the knob existed) stays out of
    # the key, so that those aligners keep theirs
    assert compose_config([]).aligner.item_head_space == "both"
    assert key_fields(with_head)["aligner"]["item_head_space"] == "both"
    projected = compose_config(["aligner.item_head_weight=1", "aligner.item_head_space=projected"])
    assert "item_head_space" not in key_fields(projected)["aligner"]
    own = compose_config(["aligner.item_head_weight=1", "aligner.item_head_space=recommender"])
    assert key_fields(own)["aligner"]["item_head_space"] == "recommender"
    validate(own, stages)
    with pytest.raises(
        ConfigError, match="item_head_space='llm' is not valid; choose one of projected, recommender, both"
    ):
        validate(compose_config(["aligner.item_head_space=llm"]), stages)
    task1_only = compose_config(["aligner.item_head_weight=1", "aligner.item_head_tasks=[retrieval]"])
    assert "item_head_tasks" not in key_fields(task1_only)["aligner"]
    wider = compose_config(["aligner.item_head_weight=1", "aligner.item_head_tasks=[retrieval,interest]"])
    assert key_fields(wider)["aligner"]["item_head_tasks"] == ["retrieval", "interest"]
    assert key_fields(
        compose_config(["aligner.item_head_weight=0", "aligner.item_head_tasks=[interest]"])
    ) == (key_fields(base))
    validate(wider, stages)
    for tasks, message in (
        ("[]", "item_head_tasks is empty"),
        ("[item_recovery]", "do not ask about a user"),
        ("[intrest]", "did you mean 'interest'"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate(
                compose_config(["aligner.item_head_weight=1", f"aligner.item_head_tasks={tasks}"]), stages
            )


@pytest.mark.slow
def test_an_aligner_with_an_item_head_trains_saves_and_is_evaluated_through_it(tmp_path):
    """Tiny pipeline with aligner.item_head_weight=1: the head's target is the recommender's own ranking (its
    argmax is every task-1 label), the head trains, is saved and reloaded, and the evaluate stage reports
    task 1 read off it (head/task1/...) next to the generated answers; the report shows that row."""
    import json

    from recexplainer.aligner import setup
    from recexplainer.aligner.stage import encoded_split
    from recexplainer.cli import run
    from recexplainer.pipeline import stage_folder
    from recexplainer.report.summary import summary

    from .helpers import ALIGN, SMALL_EVAL, TINY, TINY_SASREC

    base = [f"paths.artifacts={tmp_path}", *TINY, *TINY_SASREC, *ALIGN, "aligner.item_head_weight=1"]
    folder = run(compose_config(base))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 < metrics["train/item_head_loss"] < float("inf")
    assert 0 <= metrics["train/item_head_kl"] < metrics["train/item_head_loss"]
    assert 0 <= metrics["valid/item_head_kl"] < metrics["valid/item_head_loss"]
    assert 0 < metrics["valid/lm_loss"] < metrics["valid/loss"]  # the head's loss is inside valid/loss
    model, tokenizer, formatter = setup.load(folder)
    assert model.has_item_head and model.item_head_weight == 1.0
    # the default's two heads, both trained and reloaded: the read one in the recommender's space
    assert model.item_head_space == "both" and model.item_query.out_features == model.d_rec
    assert model.item_query.weight.abs().sum() > 0  # it started at zero
    assert model.projected_query.out_features == model.projected_query.in_features
    cfg = compose_config(base)
    train = encoded_split(cfg, stage_folder(cfg, "alignment_data"), "train", model, tokenizer, formatter)
    # the default: the task-1 and task-3 examples train the head
    trained = {e.example_id.split("/")[0] for e in train.examples if e.head_user_row is not None}
    assert "retrieval" in trained and trained <= {"retrieval", "interest", "interest_hard"}
    heads = [
        e for e in train.examples if e.head_user_row is not None and e.example_id.startswith("retrieval/")
    ]
    model.set_item_table(train.items)
    from recexplainer.alignment_data.io import read_examples

    labels = {
        r["id"]: r["labels"]["item"]
        for r in read_examples(stage_folder(cfg, "alignment_data"), "train", ["retrieval"])
    }
    users = train.users[[e.head_user_row for e in heads]]
    width = max(len(e.head_exclude) for e in heads)
    exclude = torch.tensor([list(e.head_exclude) + [0] * (width - len(e.head_exclude)) for e in heads])
    top = model.recommender_distribution(users, exclude).argmax(-1).tolist()
    assert top == [labels[e.example_id] for e in heads]  # the target ranks as the recommender's labels do

    # more tasks train the head: their examples carry the same prefix's distribution (user vector, exclusions);
    # title distillation keeps to the task-1 answers
    wider = compose_config([*base, "aligner.item_head_tasks=[retrieval,interest]"])
    only_task1 = encoded_split(
        compose_config([*base, "aligner.item_head_tasks=[retrieval]"]),
        stage_folder(cfg, "alignment_data"),
        "train",
        model,
        tokenizer,
        formatter,
    )
    assert {e.example_id.split("/")[0] for e in only_task1.examples if e.head_user_row is not None} == {
        "retrieval"
    }
    model.title_distill_weight = 0.5
    mixed = encoded_split(wider, stage_folder(cfg, "alignment_data"), "train", model, tokenizer, formatter)
    heads = [e for e in mixed.examples if e.head_user_row is not None]
    task = {e.example_id: e.example_id.split("/")[0] for e in mixed.examples}
    assert {task[e.example_id] for e in heads} == {"retrieval", "interest"}
    assert len(heads) == sum(task[e.example_id] in ("retrieval", "interest") for e in mixed.examples)
    assert all(e.head_item for e in heads)
    assert all(e.head_title == (task[e.example_id] == "retrieval") for e in heads)
    # an interest example's target is its own prefix's: the recommender's ranking there puts the asked item at
    # the rank its labels record
    rows = {r["id"]: r for r in read_examples(stage_folder(cfg, "alignment_data"), "train", ["interest"])}
    asked = [e for e in heads if task[e.example_id] == "interest"]
    users = mixed.users[[e.head_user_row for e in asked]]
    width = max(len(e.head_exclude) for e in asked)
    exclude = torch.tensor([list(e.head_exclude) + [0] * (width - len(e.head_exclude)) for e in asked])
    order = model.recommender_distribution(users, exclude).argsort(-1, descending=True)
    for e, ranking in zip(asked, order.tolist(), strict=True):
        labels = rows[e.example_id]["labels"]
        assert ranking.index(labels["item"]) == labels["rank"]
    model.title_distill_weight = 0.0

    # an aligner saved before item_head_space existed (no such key in its aligner.json) reloads as a projected head
    legacy = run(compose_config([*base, "aligner.item_head_space=projected"]))
    spec = json.loads((legacy / "aligner.json").read_text())
    assert spec["aligner"].pop("item_head_space") == "projected"
    (legacy / "aligner.json").write_text(json.dumps(spec))
    old_model = setup.load(legacy)[0]
    assert old_model.item_head_space == "projected"
    assert old_model.item_query.out_features == old_model.item_query.in_features  # the square, projected map
    assert not hasattr(old_model, "projected_query")

    evaluate = [
        *base,
        "stage=evaluate",
        *SMALL_EVAL,
        "evaluation.tasks=[retrieval,ranking,interest,interest_hard]",
    ]
    evaluated = run(compose_config(evaluate))
    results = json.loads((evaluated / "metrics.json").read_text())
    assert 0.0 <= results["head/task1/hr@5"] <= 1.0 and results["head/task1/n"] == results["task1/n"]
    records = [
        json.loads(line)
        for line in (evaluated / "predictions" / "aligned_item_head.jsonl").read_text().splitlines()
    ]
    task1 = [r for r in records if r["task"] == "retrieval"]
    assert task1 and all(len(r["items"]) == 5 and None not in r["items"] for r in task1)
    hits = [r["metrics"]["hr@5"] for r in task1]
    assert results["head/task1/hr@5"] == pytest.approx(sum(hits) / len(hits))
    # task 3 read off the head: P(yes) is the asked item's percentile in the head's ranking of its prompt, decided
    # at 0.5 (the reference rule) and at a threshold fit on validation examples, as the LLM's answers are
    from recexplainer.data.dataset import SequentialData
    from recexplainer.evaluate.predictors import ItemHeadPredictor
    from recexplainer.evaluate.stage import llm_predictor

    ecfg = compose_config(evaluate)
    data_folder = stage_folder(ecfg, "alignment_data")
    tests = {r["id"]: r for r in read_examples(data_folder, "test", ["interest", "interest_hard"])}
    titles = SequentialData.load(stage_folder(ecfg, "data")).titles
    upstream = {s: stage_folder(ecfg, s) for s in ("alignment_data", "aligner")}
    head = ItemHeadPredictor(llm_predictor(ecfg, upstream, titles, {}, "aligned", "test"))
    for task, prefix in (("interest", "task3"), ("interest_hard", "task3_hard")):
        scored = [r for r in records if r["task"] == task]
        assert len(scored) == results[f"head/{prefix}/n"] == results[f"{prefix}/n"]
        rows = [tests[r["id"]] for r in scored]
        scores = head.scores(rows)
        for r, row, s in zip(scored, rows, scores, strict=True):
            rank = (s > s[row["labels"]["item"]]).sum().item()  # items the head puts above the asked one
            assert r["p_yes"] == pytest.approx(1 - rank / (torch.isfinite(s).sum().item() - 1), abs=1e-6)
        acc = sum(r["metrics"]["acc"] for r in scored) / len(scored)
        assert results[f"head/{prefix}/acc"] == pytest.approx(acc)
        assert 0 <= results[f"head/{prefix}/threshold"] <= 1 and results[f"head/{prefix}/valid_n"] > 0
        answers = {r["id"]: r["labels"]["answer"] == "yes" for r in rows}
        calibrated = [(r["p_yes"] > results[f"head/{prefix}/threshold"]) == answers[r["id"]] for r in scored]
        assert results[f"head/{prefix}/acc/calibrated"] == pytest.approx(sum(calibrated) / len(calibrated))
    assert "percentile" in json.loads((evaluated / "protocol.json").read_text())["decoding"]["item_head"]
    # task 2 read off the head: the shown candidates in the order of the head's scores
    ranked = [r for r in records if r["task"] == "ranking"]
    ranking_rows = {r["id"]: r for r in read_examples(data_folder, "test", ["ranking"])}
    assert ranked and len(ranked) == results["head/task2/n"]
    for r in ranked:
        row = ranking_rows[r["id"]]
        s = head.scores([row])[0]
        assert sorted(r["items"]) == sorted(row["labels"]["shown"])
        assert [float(s[i]) for i in r["items"]] == sorted((float(s[i]) for i in r["items"]), reverse=True)
    ndcg = sum(r["metrics"]["ndcg@5"] for r in ranked) / len(ranked)
    assert results["head/task2/ndcg@5"] == pytest.approx(ndcg)

    # the explain stage decides by the head (explain.decision=item_head) at the threshold the evaluate stage fit
    explained = run(
        compose_config(
            [
                *base,
                "stage=explain",
                "explain.n_pairs=6",
                "explain.max_new_tokens=8",
                "explain.decision=item_head",
            ]
        )
    )
    explain_metrics = json.loads((explained / "metrics.json").read_text())
    assert explain_metrics["explain/decision_threshold"] == results["head/task3/threshold"]
    assert (
        explain_metrics["explain/decision_valid_acc/calibrated"] == results["head/task3/valid_acc/calibrated"]
    )
    explanations = [json.loads(line) for line in (explained / "explanations.jsonl").open()]
    pairs = {
        r["id"].replace("interest/", "explain/", 1): r for r in tests.values() if r["kind"] == "interest"
    }
    percentiles = head.predict("interest", [pairs[e["id"]] for e in explanations])
    for e, answer in zip(explanations, percentiles, strict=True):
        assert e["p_yes"] == pytest.approx(answer["p_yes"], abs=1e-6)
        assert e["decision"] == (
            "yes" if e["p_yes"] > explain_metrics["explain/decision_threshold"] else "no"
        )
        assert e["text"].startswith("Yes, because" if e["decision"] == "yes" else "No, because")
    assert "item head" in json.loads((explained / "protocol.json").read_text())["decision"]
    text = summary(compose_config([*base, "stage=evaluate", *SMALL_EVAL]), {"evaluate": evaluated})
    assert "item head" in text and f"{results['head/task1/hr@5']:.3f}" in text
