"""The shared real datasets prepare with their verified counts (skipped when the folder is absent).

The folder is ``$DIGER_SHARED_DATASETS`` or ``../shared/datasets`` next to the repository. Each
preparation takes 0.5-3 s. The RecBole leave-one-out checks of Instruments, Yelp and ML-1M are
marked slow (about 10-40 s and up to 2 GB each): run them with ``DIGER_RUN_SLOW=1``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from diger.data.errors import MissingItemTextError
from diger.data.prepare import prepare
from diger.data.semantic_ids import load_letter_index

SHARED = Path(os.environ.get("DIGER_SHARED_DATASETS") or Path(__file__).resolve().parents[3] / "shared" / "datasets")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared datasets not found at {SHARED}")
slow = pytest.mark.skipif(os.environ.get("DIGER_RUN_SLOW") != "1", reason="slow: set DIGER_RUN_SLOW=1")
QUIET = {"log": lambda m: None}

CASES = [
    # recipe, shared folder, layout, (users, items, interactions), text fields
    ("amazon-beauty-2014", "amazon-beauty-2014", None, (22363, 12101, 198502), ["title", "brand", "categories"]),
    ("amazon-beauty-2014", "amazon-beauty-2014", "p5", (22363, 12101, 198502), []),
    ("amazon-toys-2014", "amazon-toys-2014", None, (19412, 11924, 167597), ["title", "categories"]),
    ("amazon-toys-2014", "amazon-toys-2014", "p5", (19412, 11924, 167597), []),
    ("yelp", "yelp-letter", None, (30431, 20033, 316354), ["title", "categories"]),
    ("yelp", "yelp-letter", "p5", (30431, 20033, 316354), []),
    ("amazon-scientific-2018", "amazon-scientific-2018-letter-format", None, (8317, 4344, 58492),
     ["title", "brand", "categories", "description"]),
    ("movielens-1m", "movielens-1m", None, (6040, 3706, 1000209), ["title", "genres"]),
    ("movielens-1m", "movielens-1m", "diffurec", (6040, 3706, 1000209), ["title", "genres"]),
    ("amazon-instruments-2018", "amazon-instruments-2018-lcrec-interactions-only", None, (24772, 9922, 206153), []),
]


def _prep(tmp_path, recipe, folder, layout, **kw):
    name = f"{recipe}-{layout or 'default'}"
    return prepare(recipe, SHARED / folder, tmp_path, layout=layout, name=name, allow_pickle=layout == "diffurec",
                   **QUIET, **kw)


@needs_shared
@pytest.mark.parametrize("recipe,folder,layout,counts,fields", CASES, ids=[f"{c[0]}-{c[2] or 'default'}" for c in CASES])
def test_shared_dataset_counts(tmp_path, recipe, folder, layout, counts, fields):
    res = _prep(tmp_path, recipe, folder, layout)
    s = res.stats
    assert (s["users"], s["items"], s["interactions"]) == counts
    assert s["verified_counts_match"] is True
    assert s["loo_split"]["train"] == counts[2] - 3 * counts[0] and s["seq_len"]["min"] >= 5
    assert s["text_fields"] == fields
    cfg = yaml.safe_load((res.out_dir / f"{res.name}.yaml").read_text())
    assert cfg["text_fields"] == fields
    n_lines = sum(1 for _ in open(res.out_dir / f"{res.name}.inter", encoding="utf-8"))
    assert n_lines == counts[2] + 1
    if fields:
        assert sum(1 for _ in open(res.out_dir / f"{res.name}.item", encoding="utf-8")) == counts[1] + 1


@needs_shared
def test_beauty_text_and_semantic_ids(tmp_path):
    res = _prep(tmp_path, "amazon-beauty-2014", "amazon-beauty-2014", None)
    s = res.stats
    assert s["text_fields_non_empty"] == {"title": 12094, "brand": 12017, "categories": 12101}
    assert s["text_blanked"]["title"]["items"] == 7  # placeholder titles 'title_<n>' written empty
    assert s["semantic_ids"]["letter"]["items"] == 12101
    tokens = ["[PAD]"] + [str(i) for i in range(12101)]
    table = load_letter_index(res.out_dir / f"{res.name}.letter.index.json", tokens)
    assert tuple(table.shape) == (12102, 4) and table[1:].min() >= 0 and table[1:].max() < 256
    first = json.loads((SHARED / "amazon-beauty-2014/raw/HonghuiBao2000_LETTER/Beauty.index.json").read_text())["0"]
    assert table[1].tolist() == [int(c[3:-1]) for c in first]


@needs_shared
@pytest.mark.parametrize("recipe,folder,offset", [("amazon-beauty-2014", "amazon-beauty-2014", 1), ("yelp", "yelp-letter", 1),
                                                  ("amazon-toys-2014", "amazon-toys-2014", 1)])
def test_letter_and_p5_layouts_agree(tmp_path, recipe, folder, offset):
    """LETTER id = P5 id - 1 for users and items, with the same order (as SOURCE.md states)."""
    a = _prep(tmp_path, recipe, folder, None)
    b = _prep(tmp_path, recipe, folder, "p5")
    rows_a = (a.out_dir / f"{a.name}.inter").read_text().splitlines()[1:]
    rows_b = (b.out_dir / f"{b.name}.inter").read_text().splitlines()[1:]
    shifted = ["\t".join([str(int(u) - offset), str(int(i) - offset), t]) for u, i, t in (r.split("\t") for r in rows_b)]
    assert shifted == rows_a


@needs_shared
def test_instruments_has_no_text_but_prepares_interactions(tmp_path):
    folder = SHARED / "amazon-instruments-2018-lcrec-interactions-only"
    with pytest.raises(MissingItemTextError, match="Instruments.item.json"):
        prepare("amazon-instruments-2018", folder, tmp_path, require_text=True, **QUIET)
    assert not (tmp_path / "amazon-instruments-2018").exists()
    res = prepare("amazon-instruments-2018", folder, tmp_path, **QUIET)
    assert not (res.out_dir / f"{res.name}.item").exists()
    cfg = yaml.safe_load((res.out_dir / f"{res.name}.yaml").read_text())
    assert cfg["text_available"] is False and "blocked" in cfg["text_missing_reason"]
    assert cfg["semantic_id_files"] == {"letter": "amazon-instruments-2018.letter.index.json"}


@needs_shared
def test_beauty_recbole_leave_one_out(tmp_path, monkeypatch):
    """RecBole's LS valid_and_test split gives the sizes of DIGER's ``check_artifacts.py`` (train = inter - 3 users)."""
    from tests.diger.test_data_recbole import recbole_dataset

    monkeypatch.chdir(tmp_path)
    res = _prep(tmp_path / "out", "amazon-beauty-2014", "amazon-beauty-2014", None)
    ds, counts, (train, valid, test) = recbole_dataset(tmp_path / "out", res.name)
    assert counts == (22363, 12101, 198502)
    assert (len(train), len(valid), len(test)) == (131413, 22363, 22363)
    assert list(ds.item_feat.columns) == ["item_id", "title", "brand", "categories"]


@needs_shared
@slow
@pytest.mark.parametrize("recipe,folder,counts,train", [
    ("amazon-instruments-2018", "amazon-instruments-2018-lcrec-interactions-only", (24772, 9922, 206153), 131837),
    ("yelp", "yelp-letter", (30431, 20033, 316354), 225061),
    ("movielens-1m", "movielens-1m", (6040, 3706, 1000209), 982089),
])
def test_recbole_leave_one_out_slow(tmp_path, monkeypatch, recipe, folder, counts, train):
    from tests.diger.test_data_recbole import recbole_dataset

    monkeypatch.chdir(tmp_path)
    res = _prep(tmp_path / "out", recipe, folder, None)
    ds, got, (tr, va, te) = recbole_dataset(tmp_path / "out", res.name, load_col={"inter": ["user_id", "item_id", "timestamp"]})
    assert got == counts
    assert (len(tr), len(va), len(te)) == (train, counts[0], counts[0])
