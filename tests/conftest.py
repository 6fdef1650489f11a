"""Tests compose the real config (conf/) and shrink it: synthetic data, a tiny model, CPU, tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from recexplainer.cli import CONF_DIR
from recexplainer.config import register_configs

TINY = [
    "dataset=synthetic",
    "recommender.hidden_size=16",
    "recommender.train.max_epochs=3",
    "recommender.train.batch_size=16",
    "recommender.train.patience=50",
    "trainer.enable_progress_bar=false",
    "num_threads=1",
]
TINY_SASREC = [
    "recommender.n_layers=1",
    "recommender.n_heads=1",
    "recommender.inner_size=32",
    "recommender.max_len=10",
]


def compose_config(overrides: list[str], pin_precision: bool = True):
    """The composed config; ``pin_precision``: fp32 unless a trainer or precision is chosen, so that tests
    run the same numerics on every CPU (the default precision depends on the CPU's bf16 support)."""
    if pin_precision and not any(o.startswith(("trainer=", "trainer.precision=")) for o in overrides):
        overrides = [*overrides, "trainer.precision=32-true"]
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def make_cfg(tmp_path: Path):
    """Compose the real config with the tiny overrides, artifacts under tmp_path."""

    def _make(*overrides: str, tiny: bool = True):
        base = [f"paths.artifacts={tmp_path / 'artifacts'}"]
        if not any(o.startswith("stage=") for o in overrides):
            base.append("stage=recommender")  # the default (report) runs the whole method
        if tiny:
            base += TINY
            if not any(o.startswith("recommender=") and o != "recommender=sasrec" for o in overrides):
                base += TINY_SASREC
        return compose_config(base + list(overrides))

    return _make
