"""Every malformed input file is a clear error: the data stage exits with code 2 and a message naming the
file (and the line and field where they apply), without a traceback."""

import gzip
import logging
import os
import re

import pytest

from recexplainer.cli import _run_and_report

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\n"
GOOD_INTER = HEADER + "1\t10\t4\t100\n1\t20\t5\t101\n"
GOOD_ITEM = ITEM_HEADER + "10\tAlpha (1990)\n20\tBeta (1991)\n"

# variant -> (toy.inter, toy.item (None: no file), the message)
VARIANTS = {
    "empty interaction file": ("", GOOD_ITEM, r"interaction \(\.inter\) file is empty: .*toy\.inter"),
    "header only": (HEADER, GOOD_ITEM, r"toy\.inter: no interactions found"),
    "missing column": (
        "user_id:token\titem_id:token\trating:float\n1\t10\t4\n",
        GOOD_ITEM,
        r"toy\.inter: missing column 'timestamp' .*dataset\.time_field",
    ),
    "text in a numeric field": (
        HEADER + "1\t10\t4\tyesterday\n",
        GOOD_ITEM,
        r"toy\.inter:2: field 'timestamp'",
    ),
    "infinite number": (
        HEADER + "1\t10\tinf\t100\n",
        GOOD_ITEM,
        r"toy\.inter:2: field 'rating' must be finite",
    ),
    "short row": (GOOD_INTER + "2\t10\t4\n", GOOD_ITEM, r"toy\.inter:4: expected 4 tab-separated fields"),
    "empty id": (HEADER + "\t10\t4\t100\n", GOOD_ITEM, r"toy\.inter:2: empty field 'user_id'"),
    "duplicate item line": (
        GOOD_INTER,
        GOOD_ITEM + "10\tAlpha again\n",
        r"toy\.item:4: item '10' is listed again \(first on line 2\)",
    ),
    "missing item file": (GOOD_INTER, None, r"item file not found: .*toy\.item .*dataset\.missing_title=id"),
    "empty title": (
        GOOD_INTER,
        ITEM_HEADER + "10\t\n20\tBeta\n",
        r"1 item\(s\) used in interactions have no title",
    ),
    "unknown item id": (
        GOOD_INTER + "1\t99\t3\t102\n",
        GOOD_ITEM,
        r"have no title .*first: 99\).*dataset\.missing_title",
    ),
    "binary garbage": (
        b"\x7fELF\x02\x01\x01\x00\x00\x00\n\x03\x00>\x00",
        GOOD_ITEM,
        r"toy\.inter:1: binary data",
    ),
    "wrong encoding": (
        GOOD_INTER,
        ITEM_HEADER.encode() + b"10\tAm\xe9lie (2001)\n",
        r"toy\.item:2: not utf-8 text \(byte 0xe9 at column 6\); set dataset\.encoding .*iconv",
    ),
    "random bytes": (bytes(range(128, 256)) * 4, GOOD_ITEM, r"toy\.inter:1: not utf-8 text"),
}


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_malformed_atomic_files_exit_2_naming_file_line_and_field(variant, tmp_path, make_cfg, caplog):
    inter, item, says = VARIANTS[variant]
    folder = tmp_path / "toy"
    folder.mkdir()
    _write(folder / "toy.inter", inter)
    if item is not None:
        _write(folder / "toy.item", item)
    cfg = make_cfg(
        "dataset=recbole_atomic",
        "dataset.name=toy",
        f"dataset.path={folder}",
        "dataset.metadata_fields={}",
        "stage=data",
        tiny=False,
    )
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        _run_and_report(cfg)
    assert exit_info.value.code == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line, no traceback
    assert errors[0].getMessage().startswith("DataFormatError: ")
    assert re.search(says, errors[0].getMessage()), errors[0].getMessage()


@pytest.mark.parametrize(
    ("reviews", "says"),
    [
        (b"not gzip at all", r"reviews\.json\.gz: cannot be read"),
        (gzip.compress(b'{"reviewerID": "u", "asin": "a"\n'), r"reviews\.json\.gz:1: not valid JSON"),
        (
            gzip.compress(b'{"reviewerID": "u", "asin": "a"}\n'),
            r"reviews\.json\.gz:1: missing field 'unixReviewTime'",
        ),
    ],
    ids=["not gzip", "invalid json", "missing field"],
)
def test_malformed_amazon_files_exit_2(reviews, says, tmp_path, make_cfg, caplog):
    (tmp_path / "reviews.json.gz").write_bytes(reviews)
    (tmp_path / "meta.json").write_text('{"asin": "a", "title": "A"}\n')
    cfg = make_cfg(
        "dataset=amazon",
        "dataset.name=toy_amazon",
        f"dataset.reviews_file={tmp_path / 'reviews.json.gz'}",
        f"dataset.meta_file={tmp_path / 'meta.json'}",
        "stage=data",
        tiny=False,
    )
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        _run_and_report(cfg)
    message = next(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert re.search(says, message), message


def test_a_corrupted_asset_cache_is_an_error_not_a_reused_folder(tmp_path, make_cfg, caplog):
    """The built-in dataset's files are checked against their registry checksums whenever its key is
    computed, so a broken cache cannot silently reuse a folder built from the good files."""
    from recexplainer.assets import ASSETS, cache_root

    cache = tmp_path / "cache"
    folder = cache_root(cache) / "assets" / "ml-100k"
    folder.mkdir(parents=True)
    for name in ASSETS["ml-100k"].files:
        (folder / name).write_text(GOOD_INTER)
    cfg = make_cfg(f"paths.assets={cache}", "stage=data", tiny=False)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        _run_and_report(cfg)
    assert exit_info.value.code == 2
    message = next(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "is corrupt (sha256" in message and "recexplainer.assets fetch ml-100k" in message


def test_a_latin1_file_reads_with_dataset_encoding(tmp_path, make_cfg):
    from recexplainer.data.loaders import load_recbole_atomic

    folder = tmp_path / "toy"
    folder.mkdir()
    _write(folder / "toy.inter", GOOD_INTER)
    _write(folder / "toy.item", ITEM_HEADER.encode() + b"10\tAm\xe9lie (2001)\n20\tBeta (1991)\n")
    cfg = make_cfg(
        "dataset=recbole_atomic",
        "dataset.name=toy",
        f"dataset.path={folder}",
        "dataset.encoding=latin-1",
        tiny=False,
    )
    raw = load_recbole_atomic(cfg.dataset, folder)
    assert raw.item_info["10"]["title"] == "Amélie (2001)"


def test_the_data_key_follows_the_files_content_not_their_timestamps(tmp_path, make_cfg):
    from recexplainer.data.stage import CHECKSUMS_FILE, key_fields

    folder = tmp_path / "toy"
    folder.mkdir()
    _write(folder / "toy.inter", GOOD_INTER)
    _write(folder / "toy.item", GOOD_ITEM)
    cfg = make_cfg("dataset=recbole_atomic", "dataset.name=toy", f"dataset.path={folder}", tiny=False)
    first = key_fields(cfg)
    assert (tmp_path / "artifacts" / "data" / CHECKSUMS_FILE).is_file()  # the digests are memoised
    os.utime(folder / "toy.inter", (1, 1))  # touched, same content: the same key
    assert key_fields(cfg) == first
    _write(folder / "toy.inter", GOOD_INTER + "2\t10\t3\t102\n")  # new content: a new key
    assert key_fields(cfg)["files"] != first["files"]
