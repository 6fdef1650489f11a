"""Readers for raw dataset formats into one normalized form (:class:`RawData`).

Every reader fails on malformed input with a :class:`DataFormatError` naming the file, the line and the
field, so a user can fix the file rather than debug the pipeline.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """Malformed dataset input; the message names the file, line and field."""


@dataclass
class RawData:
    """Interactions with raw (string) ids plus an item table with titles and metadata."""

    users: np.ndarray  # (N,) str
    items: np.ndarray  # (N,) str
    timestamps: np.ndarray  # (N,) float64
    ratings: np.ndarray | None  # (N,) float64 or None
    item_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw item id -> {"title": ..., ...}
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.users) == 0:
            raise DataFormatError(f"{self.source}: no interactions found (empty file?)")


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) of a text file (plain or .gz), decoded line by line so
    that an undecodable byte is reported with its line; a NUL byte means the file is not text."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                if b"\x00" in raw:
                    raise DataFormatError(f"{path}:{lineno}: binary data (NUL bytes); expected a text file")
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as err:
                    raise DataFormatError(
                        f"{path}:{lineno}: not {encoding} text (byte 0x{raw[err.start]:02x} at column "
                        f"{err.start + 1}); set dataset.encoding to the file's encoding (e.g. latin-1) or "
                        "convert the file, e.g. `iconv -f latin1 -t utf-8`"
                    ) from None
                yield lineno, text.rstrip("\n").rstrip("\r")
    except (OSError, EOFError) as err:  # a truncated or non-gzip .gz file
        raise DataFormatError(f"{path}: cannot be read ({err})") from None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFormatError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{what} file is empty: {path}")
    return path


def _to_float(value: str, path: Path, line: int, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataFormatError(f"{path}:{line}: field {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise DataFormatError(f"{path}:{line}: field {name!r} must be finite, got {value!r}")
    return out


def _read_atomic(path: Path, encoding: str = "utf-8") -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header names (``name:type`` -> ``name``) and an iterator of (line number, fields)."""
    lines = _lines(path, encoding)
    _, header_line = next(lines, (1, ""))
    if not header_line.strip():
        raise DataFormatError(f"{path}:1: missing header line (expected tab-separated `name:type` columns)")
    names = [col.split(":", 1)[0].strip() for col in header_line.split("\t")]

    def rows() -> Iterator[tuple[int, list[str]]]:
        for lineno, raw in lines:
            if not raw.strip():
                continue
            parts = raw.split("\t")
            if len(parts) != len(names):
                raise DataFormatError(
                    f"{path}:{lineno}: expected {len(names)} tab-separated fields ({', '.join(names)}), "
                    f"got {len(parts)}"
                )
            yield lineno, parts

    return names, rows()


def _column(names: list[str], name: str, path: Path, config_key: str) -> int:
    if name not in names:
        raise DataFormatError(
            f"{path}: missing column {name!r} (columns: {', '.join(names)}); set dataset.{config_key} "
            "to the right column name"
        )
    return names.index(name)


def load_recbole_atomic(cfg: Any, folder: Path) -> RawData:
    """RecBole atomic files: ``<prefix>.inter`` (required) and ``<prefix>.item`` (titles, metadata)."""
    prefix = cfg.file_prefix or cfg.name
    inter_path = _require_file(folder / f"{prefix}.inter", "interaction (.inter)")
    names, rows = _read_atomic(inter_path, cfg.encoding)
    iu = _column(names, cfg.user_field, inter_path, "user_field")
    ii = _column(names, cfg.item_field, inter_path, "item_field")
    it = _column(names, cfg.time_field, inter_path, "time_field")
    ir = _column(names, cfg.rating_field, inter_path, "rating_field") if cfg.rating_field else None
    user_field, item_field, time_field, rating_field = (
        cfg.user_field,
        cfg.item_field,
        cfg.time_field,
        cfg.rating_field,
    )
    users, items, times, ratings = [], [], [], []
    for lineno, parts in rows:  # plain locals in this loop: OmegaConf attribute access is slow
        u, i = parts[iu].strip(), parts[ii].strip()
        if not u:
            raise DataFormatError(f"{inter_path}:{lineno}: empty field {user_field!r}")
        if not i:
            raise DataFormatError(f"{inter_path}:{lineno}: empty field {item_field!r}")
        users.append(u)
        items.append(i)
        times.append(_to_float(parts[it], inter_path, lineno, time_field))
        if ir is not None:
            ratings.append(_to_float(parts[ir], inter_path, lineno, rating_field))

    if not users:
        raise DataFormatError(f"{inter_path}: no interactions found (header only?)")
    _warn_mixed_ids(users, user_field, inter_path)
    _warn_mixed_ids(items, item_field, inter_path)
    item_info: dict[str, dict[str, Any]] = {}
    item_path = folder / f"{prefix}.item"
    if not item_path.is_file() and cfg.missing_title != "id":
        raise DataFormatError(
            f"item file not found: {item_path} (the titles come from it); add it, or set "
            "dataset.missing_title=id to name items by their ids"
        )
    lines_of: dict[str, int] = {}
    if item_path.is_file():
        _require_file(item_path, "item (.item)")
        names, rows = _read_atomic(item_path, cfg.encoding)
        ki = _column(names, cfg.item_field, item_path, "item_field")
        kt = _column(names, cfg.title_field, item_path, "title_field")
        meta_cols = {
            out: _column(names, col, item_path, "metadata_fields") for col, out in cfg.metadata_fields.items()
        }
        list_fields = set(cfg.list_fields)
        for lineno, parts in rows:
            key = parts[ki].strip()
            if not key:
                raise DataFormatError(f"{item_path}:{lineno}: empty field {item_field!r}")
            if key in lines_of:
                raise DataFormatError(
                    f"{item_path}:{lineno}: item {key!r} is listed again (first on line {lines_of[key]}); "
                    "keep one line per item"
                )
            lines_of[key] = lineno
            info: dict[str, Any] = {"title": " ".join(parts[kt].split())}
            for out, col in meta_cols.items():
                value = parts[col].strip()
                info[out] = value.split() if out in list_fields else (value or None)
            item_info[key] = info
    return RawData(
        users=np.asarray(users, dtype=object),
        items=np.asarray(items, dtype=object),
        timestamps=np.asarray(times, dtype=np.float64),
        ratings=np.asarray(ratings, dtype=np.float64) if ir is not None else None,
        item_info=item_info,
        source=str(inter_path),
    )


def _warn_mixed_ids(values: list[str], field: str, path: Path) -> None:
    """Ids are kept as strings (RecBole tokens); say so when a mostly numeric column holds some that are not
    numbers, which usually means a shifted or corrupted line."""
    if not values:
        return
    odd = [k for k, v in enumerate(values) if not v.isdigit()]
    if odd and len(odd) < 0.05 * len(values):
        log.warning(
            "%s: %d of %d %r values are not numbers (first: %r in data row %d); ids are kept as strings, "
            "so they count as their own users / items",
            path,
            len(odd),
            len(values),
            field,
            values[odd[0]],
            odd[0] + 1,
        )


AMAZON_JSON_HINT = (
    "Amazon 2018 files are one JSON object per line (the 2014 files use Python literals: convert them first)"
)


def json_lines(path: Path, hint: str = "", encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of a JSON-lines file (plain or .gz)."""
    for lineno, raw in _lines(path, encoding):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"{path}:{lineno}: not valid JSON ({err.msg}){'; ' + hint if hint else ''}"
            ) from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _field(obj: dict[str, Any], name: str, path: Path, lineno: int) -> Any:
    if name not in obj or obj[name] in (None, ""):
        raise DataFormatError(f"{path}:{lineno}: missing field {name!r}")
    return obj[name]


def _clean_text(value: Any) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    return " ".join(html.unescape(str(value)).split())


def load_amazon(cfg: Any) -> RawData:
    """Amazon reviews 2018: reviews JSON lines + metadata JSON lines (plain or gzipped)."""
    reviews = _require_file(Path(cfg.reviews_file).expanduser(), "Amazon reviews")
    meta = _require_file(Path(cfg.meta_file).expanduser(), "Amazon metadata")
    users, items, times, ratings = [], [], [], []
    description_chars = cfg.description_chars
    for lineno, obj in json_lines(reviews, AMAZON_JSON_HINT, cfg.encoding):
        users.append(str(_field(obj, "reviewerID", reviews, lineno)))
        items.append(str(_field(obj, "asin", reviews, lineno)))
        times.append(
            _to_float(_field(obj, "unixReviewTime", reviews, lineno), reviews, lineno, "unixReviewTime")
        )
        overall = obj.get("overall")
        ratings.append(math.nan if overall is None else _to_float(overall, reviews, lineno, "overall"))
    item_info: dict[str, dict[str, Any]] = {}
    for lineno, obj in json_lines(meta, AMAZON_JSON_HINT, cfg.encoding):
        asin = str(_field(obj, "asin", meta, lineno))
        title = _clean_text(obj.get("title", ""))
        info: dict[str, Any] = {"title": title}
        category = obj.get("category") or []
        info["categories"] = (
            [_clean_text(c) for c in category] if isinstance(category, list) else [_clean_text(category)]
        )
        if obj.get("brand"):
            info["brand"] = _clean_text(obj["brand"])
        if obj.get("description"):
            info["description"] = _clean_text(obj["description"])[:description_chars]
        item_info[asin] = info
    return RawData(
        users=np.asarray(users, dtype=object),
        items=np.asarray(items, dtype=object),
        timestamps=np.asarray(times, dtype=np.float64),
        ratings=np.asarray(ratings, dtype=np.float64),
        item_info=item_info,
        source=str(reviews),
    )


def make_synthetic(cfg: Any) -> RawData:
    """Users move through item genres by a sticky Markov chain; items within a genre are Zipf-popular."""
    rng = np.random.default_rng(cfg.seed)
    genre_of = np.arange(cfg.n_items) % cfg.n_genres
    by_genre = [np.flatnonzero(genre_of == g) for g in range(cfg.n_genres)]
    users, items, times = [], [], []
    for u in range(cfg.n_users):
        length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        genre = int(rng.integers(cfg.n_genres))
        seen: set[int] = set()
        for t in range(length):
            if rng.random() > cfg.stickiness:
                genre = int(rng.integers(cfg.n_genres))
            pool = [i for i in by_genre[genre] if i not in seen] or list(by_genre[genre])
            weights = 1.0 / np.arange(1, len(pool) + 1)
            item = int(rng.choice(pool, p=weights / weights.sum()))
            seen.add(item)
            users.append(f"u{u}")
            items.append(f"i{item}")
            times.append(float(1_000_000 + 1000 * u + t))
    item_info = {
        f"i{i}": {
            "title": f"Synthetic Item {i}",
            "genres": [f"Genre {genre_of[i]}"],
            "year": str(1990 + i % 30),
        }
        for i in range(cfg.n_items)
    }
    return RawData(
        users=np.asarray(users, dtype=object),
        items=np.asarray(items, dtype=object),
        timestamps=np.asarray(times, dtype=np.float64),
        ratings=None,
        item_info=item_info,
        source="synthetic",
    )
