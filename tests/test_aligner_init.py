"""Closed-form projector initialisation from title embeddings."""

import pytest
import torch

from recexplainer.aligner import setup
from recexplainer.aligner.init import (
    fit_last_layer,
    init_projectors_from_titles,
    title_embeddings,
    top1_items,
)
from recexplainer.aligner.model import RecExplainerLM
from recexplainer.aligner.projector import build_projector
from recexplainer.llm import loading

D_REC = 16


def test_fit_last_layer_recovers_a_linear_map():
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    truth = torch.randn(8, 16)
    y = x @ truth + 0.5
    projector = build_projector("linear", 8, 16)
    assert fit_last_layer(projector, x, y, ridge=1e-6) < 1e-3
    mlp = build_projector("mlp2x_gelu", 8, 16)
    before = ((mlp(x) - y).norm() / (y - y.mean(0)).norm()).item()
    after = fit_last_layer(mlp, x, y, ridge=1e-4)
    assert after < 0.75 < 0.9 < before  # 8 GELU features of a random projection: a partial fit


def test_projected_items_start_near_their_title_embeddings():
    torch.manual_seed(0)
    tokenizer = loading.tiny_tokenizer()
    lm = loading.tiny_random_llama(tokenizer, n_layers=1, hidden_size=64)
    user_id, item_id = setup.add_placeholder_tokens(lm, tokenizer, "<user>", "<item>")
    titles = ["", "Heat", "Fargo", "Casino", "Alien", "Toy Story", "Star Wars", "The Godfather", "Up"]
    model = RecExplainerLM(lm, user_id, item_id, D_REC, "mlp2x_gelu", "add")
    items = torch.randn(len(titles), D_REC)
    users = torch.randn(4, D_REC)
    histories = [[1, 2], [3], [4, 5, 6], [7, 8]]
    stats = init_projectors_from_titles(model, tokenizer, titles, items, users, histories)
    assert stats["init/item_residual"] < 0.5 and "init/user_residual" in stats
    target = title_embeddings(lm, tokenizer, titles)
    injected = model.placeholder_embeddings[1] + model.item_projector(items)  # what 'add' puts at <item>
    sims = torch.nn.functional.cosine_similarity(injected[1:, None], target[None, 1:], dim=-1)
    assert (
        sims.argmax(1) == torch.arange(len(titles) - 1)
    ).float().mean() > 0.7  # each lands nearest its own title


def test_top1_items_skip_padding_and_history():
    items = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])  # row 0: padding
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert top1_items(users, items, [[], [1], [2, 3]]).tolist() == [1, 3, 1]


def test_users_start_near_their_top1_title_with_title_lsq_top1():
    torch.manual_seed(0)
    tokenizer = loading.tiny_tokenizer()
    lm = loading.tiny_random_llama(tokenizer, n_layers=1, hidden_size=64)
    user_id, item_id = setup.add_placeholder_tokens(lm, tokenizer, "<user>", "<item>")
    titles = ["", "Heat", "Fargo", "Casino", "Alien"]
    model = RecExplainerLM(lm, user_id, item_id, D_REC, "linear", "add")
    items = torch.randn(len(titles), D_REC)
    users = items[[1, 2, 3, 4, 1, 2]] * 3  # each user's top-1 is "its" item (no history)
    stats = init_projectors_from_titles(model, tokenizer, titles, items, users, [[]] * 6, user_target="top1")
    assert stats["init/user_residual"] < 0.1
    target = title_embeddings(lm, tokenizer, titles)
    injected = model.placeholder_embeddings[0] + model.user_projector(users)
    sims = torch.nn.functional.cosine_similarity(injected[:, None], target[None, 1:], dim=-1)
    assert sims.argmax(1).tolist() == [0, 1, 2, 3, 0, 1]


def test_example_loss_weighting_averages_per_example():
    torch.manual_seed(0)
    tokenizer = loading.tiny_tokenizer()
    lm = loading.tiny_random_llama(tokenizer, n_layers=1, hidden_size=64)
    user_id, item_id = setup.add_placeholder_tokens(lm, tokenizer, "<user>", "<item>")
    ids = torch.randint(5, 200, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 10:] = ids[0, 10:]  # 2 answer tokens
    labels[1, 3:] = ids[1, 3:]  # 9 answer tokens
    token = RecExplainerLM(lm, user_id, item_id, D_REC, loss_weighting="token")
    example = RecExplainerLM(lm, user_id, item_id, D_REC, loss_weighting="example")
    per_example = [token(ids[i : i + 1], labels=labels[i : i + 1]).loss for i in range(2)]
    torch.testing.assert_close(example(ids, labels=labels).loss, (per_example[0] + per_example[1]) / 2)
    weighted = (2 * per_example[0] + 9 * per_example[1]) / 11
    torch.testing.assert_close(token(ids, labels=labels).loss, weighted)


@pytest.mark.slow
def test_title_lsq_initialisation_runs_in_the_aligner_stage(make_cfg):
    import json

    from recexplainer.cli import run

    from .helpers import ALIGN

    folder = run(make_cfg(*ALIGN, "aligner.projector_init=title_lsq", "aligner.loss_weighting=example"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 <= metrics["init/item_residual"] < 1 and 0 <= metrics["init/user_residual"] <= 1
