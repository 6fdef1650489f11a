"""The ``data`` stage: read a raw dataset, filter it, split it leave-one-out, write the normalized form."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recexplainer.artifacts import atomic_write_text, write_json
from recexplainer.assets import asset_dir, sha256, verify_asset
from recexplainer.data.loaders import RawData, load_amazon, load_recbole_atomic, make_synthetic
from recexplainer.data.preprocess import preprocess
from recexplainer.runtime import process_rank

log = logging.getLogger(__name__)


def _input_files(cfg: DictConfig) -> list[Path]:
    ds = cfg.dataset
    if ds.format == "amazon":
        return [Path(ds.reviews_file).expanduser(), Path(ds.meta_file).expanduser()]
    if ds.format == "recbole_atomic" and ds.path:
        prefix = ds.file_prefix or ds.name
        return [Path(ds.path).expanduser() / f"{prefix}.{ext}" for ext in ("inter", "item")]
    return []  # generated data, or a checksummed offline asset


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    """What determines the data stage's output: the dataset config, the input files' content (SHA-256), the
    seed. An offline asset's content is pinned by its registry checksums: its files are verified instead
    (a corrupted cache is an error, not a silent reuse of an older folder)."""
    fields: dict[str, Any] = {"dataset": OmegaConf.to_container(cfg.dataset, resolve=True)}
    if cfg.dataset.format == "recbole_atomic" and not cfg.dataset.path and cfg.dataset.asset:
        verify_asset(cfg.dataset.asset, cfg.paths.assets)
    memo = Path(cfg.paths.artifacts) / "data" / CHECKSUMS_FILE
    fields["files"] = [
        {"path": str(p.resolve()), "sha256": file_digest(p, memo)} for p in _input_files(cfg) if p.is_file()
    ]
    if cfg.dataset.preprocess.sample_users is not None:
        fields["seed"] = cfg.seed
    return fields


CHECKSUMS_FILE = "checksums.json"  # path -> (size, mtime, sha256): a large file is hashed once, not every run


def file_digest(path: Path, memo: Path) -> str:
    """SHA-256 of ``path``, memoised in ``memo`` by the file's size and modification time."""
    stat = path.stat()
    known = json.loads(memo.read_text()) if memo.is_file() else {}
    entry = known.get(str(path.resolve()))
    if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
        return entry["sha256"]
    digest = sha256(path)
    known[str(path.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    if process_rank() == 0:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps(known, indent=1))
    return digest


def read_raw(cfg: DictConfig) -> RawData:
    ds = cfg.dataset
    if ds.format == "synthetic":
        return make_synthetic(ds)
    if ds.format == "amazon":
        return load_amazon(ds)
    folder = Path(ds.path).expanduser() if ds.path else asset_dir(ds.asset, cfg.paths.assets)
    return load_recbole_atomic(ds, folder)


def run(cfg: DictConfig, out_dir: Path, upstream: dict[str, Path]) -> dict[str, float]:
    log.info("reading %s dataset %r", cfg.dataset.format, cfg.dataset.name)
    raw = read_raw(cfg)
    data, steps = preprocess(raw, cfg.dataset, cfg.seed)
    data.save(out_dir)
    stats = data.statistics()
    log.info(
        "dataset %s: %d users, %d items, %d interactions (dropped: %s)",
        cfg.dataset.name,
        stats["n_users"],
        stats["n_items"],
        stats["n_interactions"],
        {k.split("/", 1)[1]: v for k, v in steps.items() if k.startswith("dropped/") and v},
    )
    protocol = {
        "split": "leave-one-out, time-ordered: last item test, second-to-last validation, rest train",
        "dedup": cfg.dataset.preprocess.dedup,
        "user_core": cfg.dataset.preprocess.user_core,
        "item_core": cfg.dataset.preprocess.item_core,
    }
    write_json(out_dir / "protocol.json", protocol)
    return {**stats, **steps, "protocol/leave_one_out": 1}
