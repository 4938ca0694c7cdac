"""Bad input: clear errors naming file / line / field, and never a half-written output."""
from __future__ import annotations

import gzip
import json
import os
import pickle

import pytest

from diger.data.errors import DataError, DataFormatError, MissingInputError, MissingItemTextError, RecipeError
from diger.data.prepare import prepare
from diger.data.recipes import load_recipe
from tests.diger.data_fixtures import LETTER_ITEMS, amazon2014_raw, amazon2018_raw, letter_raw, movielens_raw, write_gz_lines

QUIET = {"log": lambda m: None}
A14 = dict(params={"category": "Fix"}, **QUIET)


def _no_output(out):
    """Nothing at all was left behind under ``out`` (the folder itself was not even created)."""
    return not out.exists()


def test_truncated_gzip(tmp_path):
    raw = amazon2014_raw(tmp_path / "raw")
    path = raw / "reviews_Fix_5.json.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    with pytest.raises(DataFormatError, match="truncated gzip") as exc:
        prepare("amazon2014", raw, tmp_path / "out", **A14)
    assert exc.value.path == str(path)
    assert _no_output(tmp_path / "out")


def test_json_line_that_does_not_parse(tmp_path):
    raw = amazon2014_raw(tmp_path / "raw")
    path = raw / "reviews_Fix_5.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    lines[2] = lines[2][:-5]  # cut the closing part of line 3
    write_gz_lines(path, lines)
    with pytest.raises(DataFormatError) as exc:
        prepare("amazon2014", raw, tmp_path / "out", **A14)
    assert exc.value.line == 3 and str(exc.value).startswith(f"{path}:3: invalid JSON line")
    assert _no_output(tmp_path / "out")


def test_review_without_required_key(tmp_path):
    raw = amazon2014_raw(tmp_path / "raw")
    path = raw / "reviews_Fix_5.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    rec = json.loads(lines[4]); del rec["unixReviewTime"]; lines[4] = json.dumps(rec)
    write_gz_lines(path, lines)
    with pytest.raises(DataFormatError, match=r":5: review has no 'unixReviewTime'"):
        prepare("amazon2014", raw, tmp_path / "out", **A14)


@pytest.mark.parametrize("bad", [
    "{'asin': 'I7', 'title': open('x')}",
    "__import__('os').system('touch PWNED')",
    "{'asin': 'I7', 'title': 'unterminated}",
])
def test_metadata_line_that_is_not_a_literal(tmp_path, bad, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = amazon2014_raw(tmp_path / "raw")
    from tests.diger.data_fixtures import META_2014_LINES

    write_gz_lines(raw / "meta_Fix.json.gz", META_2014_LINES[:3] + [bad] + META_2014_LINES[3:])
    with pytest.raises(DataFormatError, match=r"meta_Fix\.json\.gz:4: metadata line is not a Python literal"):
        prepare("amazon2014", raw, tmp_path / "out", **A14)
    assert not (tmp_path / "PWNED").exists()  # never evaluated
    assert _no_output(tmp_path / "out")


def test_missing_metadata_error_policy(tmp_path):
    items = {k: v for k, v in LETTER_ITEMS.items() if k != "3"}
    raw = letter_raw(tmp_path / "raw", items=items)
    with pytest.raises(DataFormatError, match=r"Fix\.item\.json: 1 item\(s\) in the interactions have no record .*'3'") as exc:
        prepare("letter", raw, tmp_path / "out", params={"category": "Fix"}, **QUIET)
    assert exc.value.path.endswith("Fix.item.json")
    assert _no_output(tmp_path / "out")


def test_missing_metadata_keep_policy_is_reported(tmp_path):
    raw = amazon2014_raw(tmp_path / "raw")
    from tests.diger.data_fixtures import META_2014_LINES

    write_gz_lines(raw / "meta_Fix.json.gz", [l for l in META_2014_LINES if "'I2'" not in l])
    res = prepare("amazon2014", raw, tmp_path / "out", **A14)
    assert res.stats["filters"]["items_without_metadata"] == 1
    assert res.stats["items"] == 5 and any("'I2'" in n and "keep" in n for n in res.stats["notes"])


def test_missing_metadata_drop_policy_is_reported(tmp_path):
    raw = amazon2018_raw(tmp_path / "raw")
    res = prepare("amazon2018", raw, tmp_path / "out", **A14)
    assert res.stats["filters"]["items_without_metadata"] == 1
    assert "I9" not in (res.out_dir / "amazon2018-Fix.inter").read_text()


def test_failure_keeps_previous_output_intact(tmp_path):
    raw = letter_raw(tmp_path / "raw")
    out = tmp_path / "out"
    res = prepare("letter", raw, out, params={"category": "Fix"}, **QUIET)
    before = {p.name: p.read_bytes() for p in res.out_dir.iterdir()}
    (raw / "Fix.item.json").write_text('{"0": {"title": "x"},\n "1": oops}')
    with pytest.raises(DataFormatError, match=r"Fix\.item\.json:2: invalid JSON"):
        prepare("letter", raw, out, params={"category": "Fix"}, **QUIET)
    after = {p.name: p.read_bytes() for p in res.out_dir.iterdir()}
    assert after == before  # no staging folder left, nothing half-replaced


def test_bad_token_fails_before_anything_is_written(tmp_path):
    raw = letter_raw(tmp_path / "raw", items=False, index=False)
    (raw / "Fix.inter.json").write_text(json.dumps({"NA": [0, 1, 2]}))
    with pytest.raises(DataError, match="would be read by RecBole/pandas as missing"):
        prepare("letter", raw, tmp_path / "out", params={"category": "Fix"}, **QUIET)
    assert _no_output(tmp_path / "out")


def test_semantic_ids_must_cover_items(tmp_path):
    raw = letter_raw(tmp_path / "raw", index={"0": ["<a_1>", "<b_2>"]})
    with pytest.raises(DataFormatError, match=r"Fix\.index\.json: 4 output items have no semantic ID"):
        prepare("letter", raw, tmp_path / "out", params={"category": "Fix"}, **QUIET)
    assert _no_output(tmp_path / "out")


def test_require_text_when_missing(tmp_path):
    raw = letter_raw(tmp_path / "raw", items=False)
    with pytest.raises(MissingItemTextError, match=r"No Fix\.item\.json in --raw-dir"):
        prepare("letter", raw, tmp_path / "out", params={"category": "Fix"}, require_text=True, **QUIET)
    assert _no_output(tmp_path / "out")


def test_missing_raw_files_lists_what_was_looked_for(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(MissingInputError, match=r"reviews_Fix_5\.json\.gz") as exc:
        prepare("amazon2014", tmp_path / "raw", tmp_path / "out", **A14)
    assert "jmcauley" in str(exc.value)
    with pytest.raises(DataError, match="needs --category"):
        prepare("amazon2014", tmp_path / "raw", tmp_path / "out", **QUIET)


def test_malicious_pickle_is_refused_even_when_allowed(tmp_path):
    raw = movielens_raw(tmp_path / "raw")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    with open(raw / "dataset.pkl", "wb") as f:
        pickle.dump({"umap": Evil()}, f)
    with pytest.raises(DataFormatError, match="refusing to load global"):
        prepare("movielens-1m", raw, tmp_path / "out", layout="diffurec", allow_pickle=True,
                check_counts=False, **QUIET)
    assert not (tmp_path / "PWNED").exists() and not (raw / "PWNED").exists()


def test_latin1_file_read_as_utf8_is_reported(tmp_path):
    raw = movielens_raw(tmp_path / "raw")
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: not valid utf-8"):
        prepare("movielens-1m", raw, tmp_path / "out", layout="dat", check_counts=False, **QUIET,
                recipe_dir=_recipe_with_utf8_movies(tmp_path))


def _recipe_with_utf8_movies(tmp_path):
    d = tmp_path / "recipes"
    d.mkdir()
    text = load_recipe("movielens-1m").path.read_text()
    text = text.replace("    format: movielens_dat\n", "    format: movielens_dat\n    options: {encoding: utf-8}\n", 1)
    (d / "movielens-1m.yaml").write_text(text)
    return d


def test_recipe_schema_errors(tmp_path):
    d = tmp_path / "recipes"
    d.mkdir()
    (d / "bad.yaml").write_text("name: bad\nlayouts:\n  x:\n    format: letter\n    files: {inter: a.json}\n    kcor: 5\n")
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['kcor'\]"):
        load_recipe("bad", d)
    (d / "bad.yaml").write_text("name: bad\nlayouts:\n  x:\n    format: letter\n    files: {item: a.json}\n")
    with pytest.raises(RecipeError, match="needs a 'inter' file"):
        load_recipe("bad", d)
    (d / "bad.yaml").write_text("name: bad\nlayouts:\n  x:\n    format: letter\n    files: {inter: ../a.json}\n")
    with pytest.raises(RecipeError, match="relative path inside --raw-dir"):
        load_recipe("bad", d)
    (d / "bad.yaml").write_text("name: bad\nlayouts: [\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_recipe("bad", d)
    (d / "bad.yaml").write_text("!!python/object/apply:os.system ['touch PWNED']\n")
    with pytest.raises(RecipeError):
        load_recipe("bad", d)
    with pytest.raises(RecipeError, match="available: bad"):
        load_recipe("nope", d)
