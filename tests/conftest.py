"""Tests compose the real config (conf/) and shrink it: synthetic data, a tiny model, CPU, tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("WANDB_MODE", "offline")

import pytest

from .helpers import TINY, TINY_SASREC, compose_config


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
