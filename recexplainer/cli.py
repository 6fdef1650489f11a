"""The ``recexplainer`` console entry point: a thin Hydra wrapper around :func:`run`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from recexplainer.config import ConfigError, register_configs, validate

log = logging.getLogger("recexplainer")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def run(cfg: DictConfig) -> Path:
    """Validate the config, run the requested stage (and its missing upstream stages), return its folder."""
    from recexplainer.pipeline import STAGES, run_stage

    validate(cfg, tuple(STAGES))
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    folder = run_stage(cfg, cfg.stage, force=cfg.force)
    if cfg.show and cfg.stage == "alignment_data":  # also for a cached folder
        from recexplainer.alignment.stage import show

        show(folder, cfg.show)
    return folder


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from recexplainer.assets import AssetError
    from recexplainer.data.loaders import DataFormatError

    try:
        folder = run(cfg)
    except ConfigError as err:
        log.error("config error: %s", err)
        raise SystemExit(2) from None
    except (DataFormatError, AssetError, FileNotFoundError) as err:  # the user can fix these: no traceback
        log.error("%s: %s", type(err).__name__, err)
        raise SystemExit(2) from None
    metrics = folder / "metrics.json"
    print(f"{cfg.stage}: {folder}" + (f"\nmetrics: {metrics}" if metrics.is_file() else ""))


def main() -> None:
    if not CONF_DIR.is_dir():
        sys.exit(f"config folder not found at {CONF_DIR}; install the package in editable mode (make setup)")
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
