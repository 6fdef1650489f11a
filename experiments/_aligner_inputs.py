"""Shared by the aligner experiments: compose a config, find its alignment data, build the aligner's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def aligner_inputs(overrides: list[str]) -> tuple[Any, Path, Any, Any, Any]:
    """(cfg, alignment-data folder, model, tokenizer, formatter) for ``overrides``, as the aligner stage builds
    them; exits with the command to run when the alignment data is missing."""
    from hydra import compose, initialize_config_dir

    from recexplainer.aligner import setup
    from recexplainer.aligner.stage import recommender_dim
    from recexplainer.artifacts import is_complete
    from recexplainer.cli import CONF_DIR
    from recexplainer.config import register_configs
    from recexplainer.pipeline import stage_folder

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    folder = stage_folder(cfg, "alignment_data")
    if not is_complete(folder):
        raise SystemExit(
            f"no alignment data at {folder}: run `recexplainer stage=alignment_data {' '.join(overrides)}` first"
        )
    model, tokenizer, formatter = setup.build(cfg, recommender_dim(folder))
    return cfg, folder, model, tokenizer, formatter
