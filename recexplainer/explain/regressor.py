"""How much of the recommender's signal an explanation carries: a ridge regressor on sentence embeddings
of the explanation predicts the recommender's score of the pair (the paper's Table 3 uses BERT); lower
held-out MSE = more signal. The all-MiniLM-L6-v2 encoder comes from the offline asset ``minilm-l6-v2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch


def minilm_encoder(folder: Path, batch_size: int = 32) -> Callable[[Sequence[str]], np.ndarray]:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings (as sentence-transformers computes them)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    @torch.no_grad()
    def encode(texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    return encode


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression weights and intercept (features centred, intercept unpenalised)."""
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)


def cross_validated_mse(
    features: np.ndarray, targets: np.ndarray, folds: int = 5, alpha: float = 1.0, seed: int = 0
) -> dict[str, float]:
    """Held-out MSE of ridge regression (k-fold), next to predicting the training folds' mean."""
    n = len(targets)
    if n < folds or n < 4:
        return {}
    order = np.random.default_rng(seed).permutation(n)
    errors, baseline = np.zeros(n), np.zeros(n)
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        w, b = ridge_fit(features[train], targets[train], alpha)
        errors[fold] = (features[fold] @ w + b - targets[fold]) ** 2
        baseline[fold] = (targets[train].mean() - targets[fold]) ** 2
    return {"score_mse": float(errors.mean()), "score_mse_mean_baseline": float(baseline.mean())}
