import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from recexplainer.assets import AssetError, asset_dir
from recexplainer.config import AmazonDataset, RecboleAtomicDataset, SyntheticDataset
from recexplainer.data.dataset import SequentialData
from recexplainer.data.loaders import DataFormatError, load_amazon, load_recbole_atomic, make_synthetic
from recexplainer.data.preprocess import preprocess

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"


def atomic_cfg(**kw):
    base = OmegaConf.structured(RecboleAtomicDataset(name="toy", path="unused"))
    base.metadata_fields = {"release_year": "year", "class": "genres"}
    base.list_fields = ["genres"]
    return OmegaConf.merge(base, kw)


def write_toy(folder: Path, inter_rows: list[str], item_rows: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.inter").write_text(INTER_HEADER + "".join(r + "\n" for r in inter_rows))
    if item_rows is not None:
        (folder / "toy.item").write_text(ITEM_HEADER + "".join(r + "\n" for r in item_rows))
    return folder


ITEMS = [
    "10\tAlpha\t1990\tDrama Comedy",
    "20\tBeta\t1991\tAction",
    "30\tGamma\t1992\tDrama",
    "40\tDelta\t\tHorror",
]


def test_recbole_atomic_parses_ids_times_titles_and_metadata(tmp_path):
    folder = write_toy(tmp_path, ["1\t10\t4\t100", "1\t20\t5\t50", "2\t30\t3\t7"], ITEMS)
    raw = load_recbole_atomic(atomic_cfg(), folder)
    assert list(raw.users) == ["1", "1", "2"] and list(raw.items) == ["10", "20", "30"]
    assert raw.timestamps.tolist() == [100.0, 50.0, 7.0] and raw.ratings.tolist() == [4.0, 5.0, 3.0]
    assert raw.item_info["10"] == {"title": "Alpha", "year": "1990", "genres": ["Drama", "Comedy"]}
    assert raw.item_info["40"]["year"] is None


@pytest.mark.parametrize(
    "rows,match",
    [
        (["1\t10\t4"], r"toy\.inter:2: expected 4 tab-separated fields"),
        (["1\t10\t4\t100", "1\t20\t5\tyesterday"], r"toy\.inter:3: field 'timestamp' must be a number"),
        (["1\t\t4\t100"], r"toy\.inter:2: empty field 'item_id'"),
        (["1\t10\tgood\t100"], r"toy\.inter:2: field 'rating' must be a number"),
    ],
)
def test_malformed_interactions_name_file_line_and_field(tmp_path, rows, match):
    folder = write_toy(tmp_path, rows, ITEMS)
    with pytest.raises(DataFormatError, match=match):
        load_recbole_atomic(atomic_cfg(), folder)


def test_missing_column_names_the_config_key(tmp_path):
    folder = write_toy(tmp_path, ["1\t10\t4\t100"], ITEMS)
    with pytest.raises(DataFormatError, match=r"missing column 'time'.*dataset\.time_field"):
        load_recbole_atomic(atomic_cfg(time_field="time"), folder)


def test_empty_and_missing_files_are_reported(tmp_path):
    (tmp_path / "toy.inter").write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        load_recbole_atomic(atomic_cfg(), tmp_path)
    with pytest.raises(DataFormatError, match="not found"):
        load_recbole_atomic(atomic_cfg(), tmp_path / "nowhere")
    (tmp_path / "toy.inter").write_text(INTER_HEADER)
    with pytest.raises(DataFormatError, match="no interactions"):
        load_recbole_atomic(atomic_cfg(), tmp_path)


def test_missing_title_policy(tmp_path):
    rows = [f"{u}\t{i}\t4\t{t}" for u in (1, 2) for t, i in enumerate((10, 20, 30, 99))]
    folder = write_toy(tmp_path, rows, ITEMS)
    raw = load_recbole_atomic(atomic_cfg(), folder)
    with pytest.raises(DataFormatError, match=r"1 item\(s\).*first: 99.*dataset\.missing_title"):
        preprocess(raw, atomic_cfg(), seed=0)
    data, stats = preprocess(raw, atomic_cfg(missing_title="drop"), seed=0)
    assert data.n_items == 3 and stats["dropped/missing_title"] == 2
    data, _ = preprocess(raw, atomic_cfg(missing_title="id"), seed=0)
    assert "item 99" in data.titles


def _toy_raw(tmp_path, rows):
    return load_recbole_atomic(atomic_cfg(), write_toy(tmp_path, rows, ITEMS))


def test_split_is_time_ordered_leave_one_out_with_stable_ties(tmp_path):
    # user 1 listed out of time order; two items share timestamp 5 (file order decides)
    rows = [
        "1\t30\t4\t9",
        "1\t10\t4\t5",
        "1\t40\t4\t5",
        "1\t20\t4\t1",
        "2\t10\t4\t1",
        "2\t20\t4\t2",
        "2\t30\t4\t3",
    ]
    data, _ = preprocess(_toy_raw(tmp_path, rows), atomic_cfg(), seed=0)
    title = {t: k for k, t in enumerate(data.titles)}
    u1 = data.user_ids.index("1")
    assert [data.titles[i] for i in data.sequence(u1)] == ["Beta", "Alpha", "Delta", "Gamma"]
    assert data.target(u1, "test") == title["Gamma"] and data.target(u1, "valid") == title["Delta"]
    assert [data.titles[i] for i in data.history(u1, "valid")] == ["Beta", "Alpha"]
    assert [data.titles[i] for i in data.history(u1, "test")] == ["Beta", "Alpha", "Delta"]
    assert data.user_ids == ["1", "2"] and data.item_table[0]["title"] == "<pad>"


@pytest.mark.parametrize(
    "mode,expected", [("first", ["Alpha", "Beta", "Gamma"]), ("last", ["Beta", "Alpha", "Gamma"])]
)
def test_duplicates_keep_first_or_last(tmp_path, mode, expected):
    rows = ["1\t10\t4\t1", "1\t20\t4\t2", "1\t10\t4\t3", "1\t30\t4\t4"]
    cfg = atomic_cfg(preprocess={"dedup": mode})
    data, stats = preprocess(_toy_raw(tmp_path, rows), cfg, seed=0)
    assert [data.titles[i] for i in data.sequence(0)] == expected and stats["dropped/duplicates"] == 1


def test_kcore_leaves_every_user_and_item_with_k_interactions():
    cfg = OmegaConf.structured(SyntheticDataset(n_users=80, n_items=60, min_len=3, max_len=12, seed=3))
    raw = make_synthetic(cfg)
    cfg.preprocess.user_core, cfg.preprocess.item_core = 5, 6
    data, stats = preprocess(raw, cfg, seed=0)
    assert stats["dropped/kcore"] > 0
    assert np.diff(data.offsets).min() >= 5
    assert np.bincount(data.items)[1:].min() >= 6


def test_top_n_items_and_user_sampling_are_deterministic():
    cfg = OmegaConf.structured(SyntheticDataset(n_users=50, n_items=40, seed=1))
    raw = make_synthetic(cfg)
    cfg.preprocess.top_n_items, cfg.preprocess.sample_users = 10, 20
    a, _ = preprocess(raw, cfg, seed=7)
    b, _ = preprocess(raw, cfg, seed=7)
    c, _ = preprocess(raw, cfg, seed=8)
    assert a.n_items <= 10 and a.n_users <= 20
    assert a.user_ids == b.user_ids and np.array_equal(a.items, b.items)
    assert a.user_ids != c.user_ids
    counts = {}  # interactions per item after duplicate removal
    for _, i in set(zip(raw.users, raw.items, strict=True)):
        counts[i] = counts.get(i, 0) + 1
    top = set(sorted(counts, key=lambda i: (-counts[i], i))[:10])
    assert {row["id"] for row in a.item_table[1:]} <= top


def test_duplicate_titles_become_unique(tmp_path):
    items = ["10\tSame\t1990\tDrama", "20\tSame\t1991\tDrama", "30\tSame [2]\t1992\tDrama"]
    rows = [f"1\t{i}\t4\t{t}" for t, i in enumerate((10, 20, 30))]
    data, stats = preprocess(
        load_recbole_atomic(atomic_cfg(), write_toy(tmp_path, rows, items)), atomic_cfg(), 0
    )
    assert len(set(data.titles)) == len(data.titles) and stats["renamed/duplicate_titles"] == 1
    assert data.titles[1:] == ["Same", "Same [3]", "Same [2]"]


def test_save_load_roundtrip(tmp_path):
    cfg = OmegaConf.structured(SyntheticDataset())
    data, _ = preprocess(make_synthetic(cfg), cfg, seed=0)
    data.save(tmp_path / "d")
    back = SequentialData.load(tmp_path / "d")
    assert np.array_equal(back.items, data.items) and back.item_table == data.item_table
    assert back.user_ids == data.user_ids
    assert back.train_item_counts().sum() == len(data.items) - 2 * data.n_users


def _write_amazon(tmp_path, reviews, meta, gz=False):
    opener = gzip.open if gz else open
    suffix = ".json.gz" if gz else ".json"
    rp, mp = tmp_path / f"reviews{suffix}", tmp_path / f"meta{suffix}"
    with opener(rp, "wt") as f:
        f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in reviews))
    with opener(mp, "wt") as f:
        f.write("".join(json.dumps(m) + "\n" for m in meta))
    return OmegaConf.structured(AmazonDataset(name="games", reviews_file=str(rp), meta_file=str(mp)))


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_reviews_and_metadata(tmp_path, gz):
    reviews = [{"reviewerID": "A", "asin": "X1", "unixReviewTime": 10, "overall": 5.0}]
    meta = [
        {
            "asin": "X1",
            "title": "Zelda &amp; Co",
            "category": ["Games", "Nintendo"],
            "description": ["Fun", "game"],
        }
    ]
    raw = load_amazon(_write_amazon(tmp_path, reviews, meta, gz))
    assert raw.item_info["X1"]["title"] == "Zelda & Co"
    assert raw.item_info["X1"]["categories"] == ["Games", "Nintendo"]
    assert raw.item_info["X1"]["description"] == "Fun game" and raw.ratings.tolist() == [5.0]


def test_amazon_errors_name_line_and_field(tmp_path):
    good = {"reviewerID": "A", "asin": "X1", "unixReviewTime": 10}
    cfg = _write_amazon(tmp_path, [good, "{'python': 'literal'}"], [{"asin": "X1", "title": "t"}])
    with pytest.raises(DataFormatError, match=r"reviews\.json:2: not valid JSON"):
        load_amazon(cfg)
    cfg = _write_amazon(tmp_path, [good, {"reviewerID": "B", "unixReviewTime": 3}], [{"asin": "X1"}])
    with pytest.raises(DataFormatError, match=r"reviews\.json:2: missing field 'asin'"):
        load_amazon(cfg)


def test_missing_asset_error_says_what_to_run(tmp_path):
    with pytest.raises(AssetError, match=r"python -m recexplainer.assets fetch ml-100k"):
        asset_dir("ml-100k", tmp_path / "empty-cache")


@pytest.mark.slow
def test_movielens_100k_from_the_offline_asset():
    try:
        folder = asset_dir("ml-100k")
    except AssetError:
        pytest.skip("ml-100k asset not fetched (make setup)")
    cfg = OmegaConf.merge(
        OmegaConf.structured(RecboleAtomicDataset(name="ml-100k")),
        {"metadata_fields": {"release_year": "year", "class": "genres"}, "list_fields": ["genres"]},
    )
    data, stats = preprocess(load_recbole_atomic(cfg, folder), cfg, seed=0)
    assert (data.n_users, data.n_items, len(data.items)) == (943, 1682, 100_000)
    assert stats["dropped/duplicates"] == 0 and stats["renamed/duplicate_titles"] == 23
    assert data.item_table[1]["title"] == "Toy Story" and "Animation" in data.item_table[1]["genres"]
    assert len(set(data.titles)) == len(data.titles)


def test_a_non_numeric_id_in_a_numeric_column_is_logged(tmp_path, caplog):
    rows = [f"{u}\t10\t4\t{u}" for u in range(1, 41)] + ["4x\t20\t4\t99"]
    with caplog.at_level("WARNING"):
        raw = load_recbole_atomic(atomic_cfg(), write_toy(tmp_path, rows, ITEMS))
    assert "4x" in list(raw.users)  # kept, as a RecBole token
    assert any(
        "1 of 41 'user_id' values are not numbers (first: '4x'" in r.getMessage() for r in caplog.records
    )
