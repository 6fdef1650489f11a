"""Target recommenders (SASRec, MF) behind one interface, and their training stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recexplainer.recommender.base import Recommender, pad_left
from recexplainer.recommender.mf import MF
from recexplainer.recommender.sasrec import SASRec

__all__ = ["MF", "SASRec", "Recommender", "build_model", "load_recommender", "pad_left"]


def model_kwargs(cfg: Any, n_items: int, n_users: int) -> dict[str, Any]:
    if cfg.name == "sasrec":
        return dict(
            n_items=n_items,
            hidden_size=cfg.hidden_size,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            inner_size=cfg.inner_size,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
            max_len=cfg.max_len,
            norm_first=cfg.norm_first,
        )
    if cfg.name == "mf":
        return dict(n_items=n_items, n_users=n_users, hidden_size=cfg.hidden_size, dropout=cfg.dropout)
    raise ValueError(f"unknown recommender {cfg.name!r}; choose sasrec or mf")


MODELS = {"sasrec": SASRec, "mf": MF}


def build_model(name: str, kwargs: dict[str, Any]) -> Recommender:
    return MODELS[name](**kwargs)


def load_recommender(folder: str | Path) -> Recommender:
    """Load a trained recommender from a ``recommender`` stage folder (safetensors), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = json.loads((folder / "model.json").read_text())
    model = build_model(spec["name"], spec["kwargs"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()
