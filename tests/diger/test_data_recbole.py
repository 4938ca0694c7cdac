"""Prepared datasets load in RecBole 1.2.1 unchanged, and published SIDs align with its item ids.

RecBole writes ./log and ./saved, so every test chdirs into tmp_path.
"""
from __future__ import annotations

import pytest
import torch
import yaml

from diger.data.prepare import prepare
from diger.data.semantic_ids import SemanticIdError, load_letter_index, parse_code
from tests.diger.data_fixtures import EXPECTED_ITEMS_2014, LETTER_INDEX, amazon2014_raw, letter_raw

QUIET = {"log": lambda m: None}


def recbole_dataset(parent, name, **extra):
    """``create_dataset`` + ``build`` with the SASRec / leave-one-out settings of DIGER (arXiv 2601.19711)."""
    import diger.compat

    diger.compat.apply()
    from recbole.config import Config
    from recbole.data import create_dataset

    cfg = yaml.safe_load((parent / name / f"{name}.yaml").read_text())
    cfg.update({
        "data_path": str(parent), "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "train_neg_sample_args": None, "loss_type": "CE", "MAX_ITEM_LIST_LENGTH": 50, "show_progress": False,
        "checkpoint_dir": "saved", "save_dataset": False, "save_dataloaders": False,
    })
    cfg.update(extra)
    config = Config(model="SASRec", dataset=name, config_dict=cfg)
    ds = create_dataset(config)
    counts = (ds.user_num - 1, ds.item_num - 1, len(ds.inter_feat))  # before build() augments
    return ds, counts, ds.build()


def test_recbole_loads_amazon2014_fixture(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = prepare("amazon2014", amazon2014_raw(tmp_path / "raw"), tmp_path / "out", params={"category": "Fix"}, **QUIET)
    ds, counts, (train, valid, test) = recbole_dataset(tmp_path / "out", res.name)
    assert counts == (5, 5, 25)
    assert (len(train), len(valid), len(test)) == (25 - 3 * 5, 5, 5)
    # the item text fields were loaded as token_seq without shifting columns
    assert list(ds.item_feat.columns) == ["item_id", "title", "brand", "categories"]
    tokens = ds.field2id_token["item_id"]
    i3 = int(ds.token2id("item_id", "I3"))
    title = [ds.field2id_token["title"][t] for t in ds.item_feat["title"][i3].tolist() if t]
    assert " ".join(title) == '"Best" Lotion' == EXPECTED_ITEMS_2014[2][1]
    i1 = int(ds.token2id("item_id", "I1"))
    assert [ds.field2id_token["title"][t] for t in ds.item_feat["title"][i1].tolist() if t] == ["Shampoo", "Deluxe"]
    assert sorted(tokens[1:]) == ["I1", "I2", "I3", "I4", "I5"]
    # chronological order (ties by file order) survives RecBole's stable sort: user UB's test
    # target is I1 (t=400), validation target I2 (t=300); history I3, I5, I4
    ub = int(ds.token2id("user_id", "UB"))
    row = (test.inter_feat["user_id"] == ub).nonzero().item()
    hist = test.inter_feat["item_id_list"][row][: test.inter_feat["item_length"][row]].tolist()
    assert [tokens[i] for i in hist] == ["I3", "I5", "I4", "I2"]
    assert tokens[test.inter_feat["item_id"][row].item()] == "I1"


def test_letter_index_aligns_with_recbole_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = prepare("letter", letter_raw(tmp_path / "raw"), tmp_path / "out", params={"category": "Fix"}, **QUIET)
    ds, _, _ = recbole_dataset(tmp_path / "out", res.name)
    tokens = ds.field2id_token["item_id"]
    table = load_letter_index(res.out_dir / "Fix.letter.index.json", tokens)
    assert table.dtype == torch.long and table.shape == (6, 4)
    assert table[0].tolist() == [-1, -1, -1, -1]
    for i in range(1, 6):
        assert table[i].tolist() == [int(c.split("_")[1][:-1]) for c in LETTER_INDEX[tokens[i]]]


def test_load_letter_index_errors(tmp_path):
    path = tmp_path / "x.index.json"
    path.write_text('{"0": ["<a_1>", "<b_2>"], "1": ["<a_3>", "<b_4>"]}')
    assert load_letter_index(path, ["[PAD]", "1", "0"]).tolist() == [[-1, -1], [3, 4], [1, 2]]
    with pytest.raises(SemanticIdError, match=r"1 of 2 items have no semantic ID, e.g. \['7'\]"):
        load_letter_index(path, ["[PAD]", "1", "7"])
    path.write_text('{"0": ["<a_1>", "<c_2>"]}')
    with pytest.raises(SemanticIdError, match="at level 1 should start with '<b_'"):
        load_letter_index(path, ["[PAD]", "0"])
    path.write_text('{"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}')
    with pytest.raises(SemanticIdError, match="1 codes, other items have 2"):
        load_letter_index(path, ["[PAD]", "0"])
    with pytest.raises(SemanticIdError, match="not of the form"):
        parse_code("a_1", 0, "here")
