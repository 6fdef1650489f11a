"""Closed-form projector initialisation: start where a projected vector already means something to the LLM.

``title_lsq``: the item projector is fit (ridge least squares on its last linear layer, the layers before
it kept at their random initialisation) so that a projected item vector lands near the LLM's own
embedding of that item's title (mean of the title's token embeddings); the user projector so that a
projected user vector lands near the mean title embedding of the user's history (``title_lsq``) or near the
title embedding of the recommender's top-1 item for that user (``title_lsq_top1``: the argmax of the user
vector's dot product with the item vectors, history excluded, the task-1 answer). With ``add`` injection
the placeholder row is subtracted from the target, so that row + projection ~ title embedding. No LLM
training is needed: one linear solve per projector.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recexplainer.aligner.model import base_model

log = logging.getLogger(__name__)


@torch.no_grad()
def title_embeddings(lm: nn.Module, tokenizer: Any, titles: Sequence[str]) -> torch.Tensor:
    """(len(titles), H) mean input embedding of each title's tokens (as it follows a placeholder: ' ' + title)."""
    table = lm.get_input_embeddings().weight
    out = torch.zeros(len(titles), table.shape[1])
    for i, title in enumerate(titles):
        ids = tokenizer(" " + title, add_special_tokens=False)["input_ids"] if title else []
        if ids:
            out[i] = table[ids].float().mean(0)
    return out


@torch.no_grad()
def fit_last_layer(
    projector: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-2
) -> float:
    """Ridge fit of the projector's last Linear so that ``projector(inputs) ~ targets``; returns the
    relative residual ||P(x) - t|| / ||t - mean(t)|| after the fit (1.0 = no better than the mean)."""
    if isinstance(projector, nn.Linear):
        features, last = inputs.float(), projector
    elif isinstance(projector, nn.Sequential) and isinstance(projector[-1], nn.Linear):
        features, last = projector[:-1](inputs.float()).float(), projector[-1]
    else:
        raise ValueError(
            f"title_lsq initialisation needs a linear or MLP projector, got {type(projector).__name__}"
        )
    design = torch.cat([features, torch.ones(len(features), 1)], dim=1).double()  # (N, F + 1)
    gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1], dtype=torch.float64)
    gram[-1, -1] -= ridge * len(design)  # the bias is not penalised
    solution = torch.linalg.solve(gram, design.T @ targets.double())  # (F + 1, H)
    last.weight.copy_(solution[:-1].T.to(last.weight.dtype))
    last.bias.copy_(solution[-1].to(last.bias.dtype))
    residual = (projector(inputs.float()).float() - targets).norm()
    return float(residual / (targets - targets.mean(0)).norm().clamp(min=1e-12))


@torch.no_grad()
def top1_items(
    user_vectors: torch.Tensor, item_vectors: torch.Tensor, histories: Sequence[Sequence[int]]
) -> torch.Tensor:
    """(U,) the recommender's top-1 item per user: argmax of u . e_i over the catalog, padding row 0 and
    the user's history excluded (the task-1 label, recomputed from the saved vectors the way
    ``Recommender.score_user_vectors`` scores, without loading the recommender)."""
    scores = user_vectors.float() @ item_vectors.float().T  # (U, N + 1)
    scores[:, 0] = -torch.inf
    for r, history in enumerate(histories):
        if len(history):
            scores[r, list(history)] = -torch.inf
    return scores.argmax(1)


def init_projectors_from_titles(
    model: Any,
    tokenizer: Any,
    titles: Sequence[str],
    item_vectors: torch.Tensor,
    user_vectors: torch.Tensor | None = None,
    user_histories: Sequence[Sequence[int]] = (),
    user_target: str = "history",
) -> dict[str, float]:
    """Fit both projectors of a RecExplainerLM in closed form; returns the relative residuals.

    ``item_vectors``: (N + 1, d_rec), row i = item i (row 0 padding, skipped); ``user_vectors[r]`` belongs
    to ``user_histories[r]``. ``user_target``: ``history`` (mean title embedding of the history) or
    ``top1`` (title embedding of the recommender's top-1 item, history excluded).
    """
    if user_target not in ("history", "top1"):
        raise ValueError(f"user_target must be 'history' or 'top1', got {user_target!r}")
    base = base_model(model.lm)
    targets = title_embeddings(base, tokenizer, titles)  # (N + 1, H)
    rows = model.placeholder_embeddings.detach().float()  # (2, H): user, item
    add = model.injection == "add"
    stats = {}
    items = torch.arange(1, len(titles))
    item_target = targets[items] - (rows[1] if add else 0.0)
    stats["init/item_residual"] = fit_last_layer(model.item_projector, item_vectors[items], item_target)
    if user_vectors is not None and len(user_histories):
        if user_target == "top1":
            goal = targets[top1_items(user_vectors, item_vectors, user_histories)]
        else:
            goal = torch.stack(
                [targets[list(h)].mean(0) if len(h) else targets[1:].mean(0) for h in user_histories]
            )
        user_target = goal - (rows[0] if add else 0.0)
        stats["init/user_residual"] = fit_last_layer(model.user_projector, user_vectors, user_target)
    log.info("projectors initialised from title embeddings: %s", {k: round(v, 3) for k, v in stats.items()})
    return stats
