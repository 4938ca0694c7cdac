"""Each input format on tiny fixtures, checking exact output rows, counts and YAML keys."""
from __future__ import annotations

import json

import pytest
import yaml

from diger.data.errors import DataError, PickleNotAllowedError
from diger.data.prepare import prepare
from tests.diger.data_fixtures import (
    EXPECTED_INTER_2014, EXPECTED_INTER_ML, EXPECTED_ITEMS_2014, EXPECTED_ITEMS_ML, LETTER_INDEX,
    amazon2014_raw, amazon2018_raw, letter_raw, movielens_raw, p5_raw, read_rows,
)

QUIET = {"log": lambda m: None}


def _files(res):
    return sorted(p.name for p in res.out_dir.iterdir())


def test_amazon2014_dumps(tmp_path):
    raw = amazon2014_raw(tmp_path / "raw")
    res = prepare("amazon2014", raw, tmp_path / "out", params={"category": "Fix"}, **QUIET)
    name = "amazon2014-Fix"
    assert res.name == name and res.out_dir == tmp_path / "out" / name
    assert _files(res) == [f"{name}.inter", f"{name}.item", f"{name}.yaml", "stats.json"]
    header, rows = read_rows(res.out_dir / f"{name}.inter")
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    assert rows == EXPECTED_INTER_2014
    header, items = read_rows(res.out_dir / f"{name}.item")
    assert header == ["item_id:token", "title:token_seq", "brand:token_seq", "categories:token_seq"]
    assert items == EXPECTED_ITEMS_2014
    # a value starting with a quote is CSV-quoted on disk; nothing else is
    raw_lines = (res.out_dir / f"{name}.item").read_text(encoding="utf-8").splitlines()
    assert raw_lines[3] == 'I3\t"""Best"" Lotion"\t\tBeauty, Skin'
    assert raw_lines[1] == "I1\tShampoo Deluxe\tBrandy\tBeauty, Hair Care | Beauty, Shampoo"
    s = res.stats
    assert (s["users"], s["items"], s["interactions"]) == (5, 5, 25)
    assert s["filters"]["duplicates_dropped"] == 1
    assert s["filters"]["kcore"] == {"k": 5, "rounds": 1, "interactions_dropped": 2}
    assert s["filters"]["items_without_metadata"] == 0
    assert s["time_kind"] == "unix"
    assert s["seq_len"]["min"] == 5 and s["loo_split"] == {"train": 10, "valid": 5, "test": 5, "users_below_3": 0}
    assert s["text_fields_non_empty"] == {"title": 4, "brand": 3, "categories": 4}
    cfg = yaml.safe_load((res.out_dir / f"{name}.yaml").read_text())
    assert cfg["load_col"] == {"inter": ["user_id", "item_id", "timestamp"],
                               "item": ["item_id", "title", "brand", "categories"]}
    assert cfg["text_fields"] == ["title", "brand", "categories"]
    assert cfg["USER_ID_FIELD"] == "user_id" and cfg["ITEM_ID_FIELD"] == "item_id" and cfg["TIME_FIELD"] == "timestamp"
    assert cfg["user_inter_num_interval"] == "[0,inf)" and cfg["item_inter_num_interval"] == "[0,inf)"
    assert json.loads((res.out_dir / "stats.json").read_text())["interactions"] == 25


def test_amazon2014_order_index(tmp_path):
    raw = amazon2014_raw(tmp_path / "raw")
    res = prepare("amazon2014", raw, tmp_path / "out", params={"category": "Fix"}, timestamp="order", **QUIET)
    _, rows = read_rows(res.out_dir / "amazon2014-Fix.inter")
    assert [r[:2] for r in rows] == [r[:2] for r in EXPECTED_INTER_2014]
    assert [r[2] for r in rows] == [str(i) for _ in range(5) for i in range(5)]
    assert res.stats["time_kind"] == "order"


def test_amazon2018_dumps(tmp_path):
    raw = amazon2018_raw(tmp_path / "raw")
    res = prepare("amazon2018", raw, tmp_path / "out", params={"category": "Fix"}, **QUIET)
    name = "amazon2018-Fix"
    _, rows = read_rows(res.out_dir / f"{name}.inter")
    assert rows == EXPECTED_INTER_2014  # I9 (no metadata) dropped, then UF/I6 by the 5-core
    header, items = read_rows(res.out_dir / f"{name}.item")
    assert header == ["item_id:token", "title:token_seq", "brand:token_seq", "categories:token_seq",
                      "description:token_seq"]
    assert items == [
        ("I1", "Shampoo Deluxe", "Brandy", "Beauty, Hair Care", "Washes. Rinses."),
        ("I2", "", "B2", "Beauty", ""),
        ("I3", "Lotion for hands", "", "Beauty, Skin", ""),
        ("I4", "L'Oréal Crème", "L'Oréal", "Beauty", ""),
        ("I5", "Soap", "", "Beauty", "Clean."),
    ]
    f = res.stats["filters"]
    assert f["items_without_metadata"] == 1 and f["interactions_of_items_without_metadata"] == 5
    assert f["duplicates_dropped"] == 1
    assert any("duplicated metadata" in n for n in res.stats["notes"])
    assert any("I9" in n and "drop" in n for n in res.stats["notes"])


def test_letter_layout_with_semantic_ids(tmp_path):
    raw = letter_raw(tmp_path / "raw")
    res = prepare("letter", raw, tmp_path / "out", params={"category": "Fix"}, **QUIET)
    assert res.name == "Fix"
    assert _files(res) == ["Fix.inter", "Fix.item", "Fix.letter.index.json", "Fix.yaml", "stats.json"]
    _, rows = read_rows(res.out_dir / "Fix.inter")
    assert rows == [("0", "0", "0"), ("0", "1", "1"), ("0", "2", "2"), ("0", "3", "3"), ("0", "4", "4"),
                    ("1", "2", "0"), ("1", "1", "1"), ("1", "1", "2"), ("1", "0", "3"), ("1", "3", "4"),
                    ("2", "4", "0"), ("2", "3", "1"), ("2", "2", "2"), ("2", "1", "3"), ("2", "0", "4")]
    _, items = read_rows(res.out_dir / "Fix.item")
    assert items == [("0", "Alpha.", "First item."), ("1", "", "No title here."), ("2", '"Quoted" start', ""),
                     ("3", "Delta.", "Fourth."), ("4", "Epsilon.", "Fifth.")]
    assert json.loads((res.out_dir / "Fix.letter.index.json").read_text()) == LETTER_INDEX
    cfg = yaml.safe_load((res.out_dir / "Fix.yaml").read_text())
    assert cfg["semantic_id_files"] == {"letter": "Fix.letter.index.json"}
    assert cfg["timestamp_kind"] == "order" and cfg["text_fields"] == ["title", "description"]
    assert res.stats["semantic_ids"]["letter"] == {"items": 5, "unique_sids": 5, "colliding_items": 0, "code_length": 4}
    assert (res.stats["users"], res.stats["items"], res.stats["interactions"]) == (3, 5, 15)


def test_letter_without_item_file_prepares_interactions(tmp_path):
    raw = letter_raw(tmp_path / "raw", items=False)
    res = prepare("letter", raw, tmp_path / "out", params={"category": "Fix"}, **QUIET)
    assert _files(res) == ["Fix.inter", "Fix.letter.index.json", "Fix.yaml", "stats.json"]
    cfg = yaml.safe_load((res.out_dir / "Fix.yaml").read_text())
    assert cfg["text_fields"] == [] and cfg["text_available"] is False
    assert cfg["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}
    assert "item.json" in cfg["text_missing_reason"]


def test_p5_layout(tmp_path):
    raw = p5_raw(tmp_path / "raw")
    res = prepare("p5", raw, tmp_path / "out", params={"category": "fix"}, **QUIET)
    assert res.name == "p5-fix"
    _, rows = read_rows(res.out_dir / "p5-fix.inter")
    assert rows == [("1", "1", "0"), ("1", "2", "1"), ("1", "3", "2"), ("1", "4", "3"),
                    ("2", "3", "0"), ("2", "2", "1"), ("2", "1", "2"),
                    ("3", "4", "0"), ("3", "4", "1"), ("3", "1", "2"), ("3", "2", "3")]
    header, items = read_rows(res.out_dir / "p5-fix.item")
    assert header == ["item_id:token", "raw_id:token_seq"]
    assert items == [("1", "A1"), ("2", "A2"), ("3", "A3"), ("4", "A4")]
    cfg = yaml.safe_load((res.out_dir / "p5-fix.yaml").read_text())
    assert cfg["text_fields"] == [] and cfg["load_col"]["item"] == ["item_id"]


def test_movielens_dat_latin1(tmp_path):
    raw = movielens_raw(tmp_path / "raw")
    with pytest.raises(DataError, match="differ from the recipe's verified"):
        prepare("movielens-1m", raw, tmp_path / "out", layout="dat", **QUIET)
    assert not (tmp_path / "out").exists()
    res = prepare("movielens-1m", raw, tmp_path / "out", layout="dat", check_counts=False, **QUIET)
    _, rows = read_rows(res.out_dir / "movielens-1m.inter")
    assert rows == EXPECTED_INTER_ML  # user 1: equal timestamps keep the ratings.dat line order
    _, items = read_rows(res.out_dir / "movielens-1m.item")
    assert items == EXPECTED_ITEMS_ML
    assert "Misérables".encode("utf-8") in (res.out_dir / "movielens-1m.item").read_bytes()
    assert res.stats["verified_counts_match"] is False


@pytest.mark.parametrize("layout", ["sequences", "diffurec"])
def test_movielens_sequence_layouts(tmp_path, layout):
    raw = movielens_raw(tmp_path / "raw")
    kw = dict(layout=layout, check_counts=False, name="ml", **QUIET)
    if layout == "diffurec":
        with pytest.raises(PickleNotAllowedError, match="--allow-pickle"):
            prepare("movielens-1m", raw, tmp_path / "out", **kw)
        assert not (tmp_path / "out").exists()
        kw["allow_pickle"] = True
    res = prepare("movielens-1m", raw, tmp_path / "out", **kw)
    _, rows = read_rows(res.out_dir / "ml.inter")
    assert rows == [("1", "1", "0"), ("1", "2", "1"), ("1", "3", "2"), ("2", "2", "0"), ("2", "1", "1")]
    _, items = read_rows(res.out_dir / "ml.item")
    assert items == EXPECTED_ITEMS_ML


def test_auto_layout_detection_and_rerun_replaces_files(tmp_path):
    raw = movielens_raw(tmp_path / "raw")
    (raw / "ratings.dat").unlink()  # no 'dat' layout -> falls back to 'sequences'
    res = prepare("movielens-1m", raw, tmp_path / "out", check_counts=False, **QUIET)
    assert res.layout == "sequences"
    res2 = prepare("movielens-1m", raw, tmp_path / "out", check_counts=False, **QUIET)
    assert _files(res2) == ["movielens-1m.inter", "movielens-1m.item", "movielens-1m.yaml", "stats.json"]
