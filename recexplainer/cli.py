"""The ``recexplainer`` console entry point: a thin Hydra wrapper around :func:`run`."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from recexplainer.artifacts import atomic_write_text
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
    if cfg.stage == "report":  # the whole method: every stage (reused when cached), the report, the summary
        from recexplainer.report.summary import run_report

        return run_report(cfg)
    folder = run_stage(cfg, cfg.stage, force=cfg.force)
    if cfg.show and cfg.stage == "alignment_data":  # also for a cached folder
        from recexplainer.alignment_data.stage import show

        show(folder, cfg.show)
    return folder


FAILED_FILE = "FAILED.json"
RESULT_FILE = "result.json"  # a sweep point's stage and folder, for the sweep's report


def _multirun_job() -> tuple[bool, Path | None, list[str]]:
    """(is this a multirun job, its output folder, its overrides)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, None, []
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN, Path(hc.runtime.output_dir), list(hc.overrides.task)


class SweepReport(Callback):
    """At the end of a multirun: list the points that failed (with their logs) and write
    ``sweep_summary.json`` in the sweep folder; the command exits 1 if any point failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        failed = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{FAILED_FILE}"))]
        jobs = (
            [p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()] if sweep.is_dir() else []
        )
        summary = {"points": len(jobs), "failed": failed}
        if sweep.is_dir():
            (sweep / "sweep_summary.json").write_text(json.dumps(summary, indent=1))
            self._report(sweep)
        if failed:
            for f in failed:
                log.error(
                    "sweep point failed: %s: %s (log: %s)", " ".join(f["overrides"]), f["error"], f["log"]
                )
            log.error(
                "%d of %d sweep points failed; the others completed (%s)", len(failed), len(jobs), sweep
            )
            raise SystemExit(1)
        log.info("sweep: %d points completed (%s)", len(jobs), sweep)

    @staticmethod
    def _report(sweep: Path) -> None:
        """The report of this sweep's points only (and their baselines / upstream training curves), in
        <sweep>/report; a failure here is logged, never fatal: the points' artifacts are all written."""
        from recexplainer.report.tables import lineage, write_report

        results = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RESULT_FILE}"))]
        by_root: dict[Path, set[Path]] = {}
        for r in results:
            folder = Path(r["folder"]).resolve()
            if r["stage"] in ("evaluate", "explain", "aligner", "recommender"):
                by_root.setdefault(folder.parent.parent, set()).update(lineage(folder))
        for i, (root, only) in enumerate(sorted(by_root.items())):
            out = sweep / ("report" if len(by_root) == 1 else f"report_{i}")
            try:
                paths = write_report(root, out, only)
            except (Exception, SystemExit) as err:  # noqa: BLE001
                log.error("sweep report for %s failed: %s", root, err)
                continue
            if paths:
                log.info("sweep report: %s", ", ".join(str(p) for p in paths))


def _record_failure(out_dir: Path, overrides: list[str], err: BaseException) -> None:
    import traceback

    logs = sorted(out_dir.glob("*.log"))
    err = err.__cause__ or err  # SystemExit(2) from a ConfigError / DataFormatError: record the cause
    record = {
        "overrides": overrides,
        "error": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(err)),
        "log": str(logs[0]) if logs else str(out_dir),
    }
    (out_dir / FAILED_FILE).write_text(json.dumps(record, indent=1))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    multirun, out_dir, overrides = _multirun_job()
    if not multirun:
        return _run_and_report(cfg)
    try:  # one failed sweep point must not stop the others
        folder = _run_and_report(cfg)
        from recexplainer.runtime import process_rank

        if process_rank() == 0:  # for the sweep's report
            stage = (
                "explain" if cfg.stage == "report" else cfg.stage
            )  # stage=report returns the explain folder
            result = {"stage": stage, "folder": str(folder), "overrides": overrides}
            atomic_write_text(out_dir / RESULT_FILE, json.dumps(result, indent=1))
    except (Exception, SystemExit) as err:  # noqa: BLE001
        if isinstance(err, SystemExit) and err.code in (0, None):
            return
        log.exception("sweep point %s failed", " ".join(overrides))
        _record_failure(out_dir, overrides, err)


def _run_and_report(cfg: DictConfig) -> Path:
    from recexplainer.assets import AssetError
    from recexplainer.data.loaders import DataFormatError
    from recexplainer.explain.judge import JudgeFailed

    try:
        folder = run(cfg)
    except ConfigError as err:
        log.error("config error: %s", err)
        raise SystemExit(2) from err
    except (DataFormatError, AssetError, FileNotFoundError, JudgeFailed) as err:  # the user can fix these
        log.error("%s: %s", type(err).__name__, err)
        raise SystemExit(2) from err
    metrics = folder / "metrics.json"
    if cfg.stage != "report":  # the report stage printed its summary and report path
        print(f"{cfg.stage}: {folder}" + (f"\nmetrics: {metrics}" if metrics.is_file() else ""))
    return folder


SECRET_KEY = re.compile(r"(^|_)(api_?key|apikey|secret|token|password|passwd|credentials?)$", re.IGNORECASE)
# OpenAI- / Hugging Face-style key values
SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,})")


def secret_override(args: list[str]) -> str | None:
    """The first command-line override that sets a secret, by its key or its value; None if none does.

    Hydra writes every override into the run folder (``.hydra/overrides.yaml``, ``config.yaml``) before any
    check of ours runs, so a secret must be refused before Hydra starts."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key.startswith("-"):
            continue
        leaf = key.rsplit(".", 1)[-1]
        if (SECRET_KEY.search(leaf) and not leaf.endswith("_env")) or SECRET_VALUE.search(value):
            return key
    return None


def main() -> None:
    key = secret_override(sys.argv[1:])
    if key is not None:
        sys.exit(
            f"config error: {key}=... looks like a secret; secrets are never set through the config (it is "
            "saved with every run). Export it in the environment variable that judge.api_key_env names "
            "(OPENAI_API_KEY by default) and run again."
        )
    if not CONF_DIR.is_dir():
        sys.exit(f"config folder not found at {CONF_DIR}; install the package in editable mode (make setup)")
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
