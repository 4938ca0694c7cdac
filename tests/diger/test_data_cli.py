"""``diger data`` command line (through ``diger.data.cli``), shipped recipes, and small helpers."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from diger.data import cli
from diger.data.atomic import StagedOutput, read_atomic, write_table
from diger.data.recipes import default_recipe_dir, list_recipes, load_recipe
from diger.data.text import clean_text
from tests.diger.data_fixtures import letter_raw

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["amazon-beauty-2014", "amazon-toys-2014", "amazon-instruments-2018", "amazon-scientific-2018", "yelp",
           "movielens-1m", "amazon2014", "amazon2018", "p5", "letter"]


def test_shipped_recipes_are_valid_and_documented():
    assert default_recipe_dir() == REPO / "datasets"
    names = [p.stem for p in list_recipes()]
    assert sorted(names) == sorted(SHIPPED)
    assert not list((REPO / "datasets").glob("*.py")) and not (REPO / "datasets" / "__init__.py").exists()
    readme = (REPO / "datasets" / "README.md").read_text()
    for name in names:
        r = load_recipe(name)
        assert r.layouts and r.upstream, name
        assert f"`{name}`" in readme, f"{name} not documented in datasets/README.md"


def test_cli_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "amazon-beauty-2014" in out and "22,363 / 12,101 / 198,502" in out


def test_cli_prepare_and_errors(tmp_path, capsys):
    raw = letter_raw(tmp_path / "raw")
    rc = cli.main(["prepare", "letter", "--category", "Fix", "--raw-dir", str(raw), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    assert "Fix: 3 users, 5 items, 15 interactions" in capsys.readouterr().out
    assert (tmp_path / "out" / "Fix" / "Fix.inter").is_file()
    rc = cli.main(["prepare", "letter", "--raw-dir", str(raw), "--out", str(tmp_path / "o2")])
    assert rc == 2 and "needs --category" in capsys.readouterr().err
    rc = cli.main(["prepare", "nope", "--raw-dir", str(raw), "--out", str(tmp_path / "o2")])
    assert rc == 2 and "no recipe 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_add_arguments_on_a_parent_parser(tmp_path):
    parser = argparse.ArgumentParser(prog="diger")
    sub = parser.add_subparsers(dest="command")
    cli.add_arguments(sub.add_parser("data"))
    args = parser.parse_args(["data", "prepare", "yelp", "--raw-dir", "r", "--out", "o", "--allow-pickle",
                              "--timestamp", "order"])
    assert (args.data_command, args.recipe, args.allow_pickle, args.timestamp, args.check_counts) == \
        ("prepare", "yelp", True, "order", True)


def test_clean_text():
    assert clean_text(None) == "" and clean_text(float("nan")) == ""
    assert clean_text(" a\tb\r\nc\u2028d\x85e ") == "a b  c d e"
    assert clean_text([["A", "B"], ["A", "C"]]) == "A, B | A, C"
    assert clean_text(["x", "", "y"]) == "x, y" and clean_text(3.5) == "3.5"
    with pytest.raises(TypeError):
        clean_text({"a": 1})


def test_atomic_roundtrip_and_validation(tmp_path):
    fields = [("item_id", "token"), ("title", "token_seq")]
    values = ['"quoted" start', 'mid "quote', 'N/A', "", "trailing quote\""]
    write_table(tmp_path / "x.item", fields, [[str(i), v] for i, v in enumerate(values)])
    got_fields, rows = read_atomic(tmp_path / "x.item")
    assert got_fields == fields and [r[1] for r in rows] == values
    for bad_fields, row, msg in [
        ([("item id", "token")], ["1"], "bad field name"),
        ([("item_id", "text")], ["1"], "not one of"),
        ([("a", "token"), ("a", "token")], ["1", "2"], "appears twice"),
        (fields, ["NA", "x"], "as missing"),
        (fields, ["1", "a\tb"], "tab or line break"),
        ([("t", "float")], ["abc"], "could not convert"),
    ]:
        with pytest.raises(ValueError, match=msg):
            write_table(tmp_path / "y", bad_fields, [row])


def test_staged_output_is_all_or_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with StagedOutput(out) as stage:
            (stage / "f.txt").write_text("x")
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    out.mkdir(parents=True)
    (out / "old.item").write_text("old")
    (out / "keep.npy").write_text("user file")
    with StagedOutput(out, remove_stale=["old.item"]) as stage:
        (stage / "f.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["f.txt", "keep.npy"]


def test_beauty_configs():
    import yaml

    paper = yaml.safe_load((REPO / "configs" / "beauty_paper.yaml").read_text())
    for key, value in {
        "epochs": 120, "stopping_step": 15, "train_batch_size": 256, "eval_batch_size": 32, "learning_rate": 1e-3,
        "lr_id": 1e-5, "weight_decay": 0.05, "warmup_steps": 500, "gumbel_tau": 2.0, "frq_rho": 1.5,
        "frq_momentum": 0.99, "sdud_sigma0": 2.0, "sdud_lambda": 1.7, "num_beams": 20, "MAX_ITEM_LIST_LENGTH": 50,
        "seed": 2020, "t5_layers": 6, "d_model": 128, "d_ff": 512, "code_num": 256, "code_levels": 3,
        "sk_epsilon": 0.003, "vq_beta": 0.25, "valid_metric": "NDCG@10", "constrained_decoding": False,
    }.items():
        assert paper[key] == value, key
    cpu_text = (REPO / "configs" / "beauty_cpu.yaml").read_text()
    cpu = yaml.safe_load(cpu_text)
    assert "MEASURED (" in cpu_text and "| TIGER | 31.6 min |" in cpu_text  # filled from the measured run
    for cfg in (paper, cpu):
        assert cfg["eval_args"]["split"] == {"LS": "valid_and_test"} and cfg["eval_args"]["order"] == "TO"
        assert cfg["text_fields"] == ["title", "brand", "categories"] and cfg["topk"] == [5, 10]
        assert cfg["num_beams"] >= max(cfg["topk"])
    # the protocol-only file used to compare every model: the protocol part of beauty_cpu.yaml, and no
    # model / optimiser keys (beauty_cpu's weight_decay 0.05 for T5 would cripple RecBole's Adam baselines)
    proto = yaml.safe_load((REPO / "configs" / "beauty_protocol.yaml").read_text())
    assert all(cpu[k] == v for k, v in proto.items())
    assert not {"weight_decay", "learning_rate", "epochs", "train_batch_size", "lr_scheduler"} & set(proto)


def test_converged_configs_share_the_protocol():
    """Beauty's converged recipe (for a GPU) trains exactly as the measured ML-100K one does, and reads after
    beauty_cpu.yaml only keys that the README protocol defines."""
    import yaml

    from diger.config import known_keys

    ml = yaml.safe_load((REPO / "configs" / "ml-100k_converged.yaml").read_text())
    beauty = yaml.safe_load((REPO / "configs" / "beauty_converged.yaml").read_text())
    assert beauty == ml == {"backbone": "decoder", "epochs": 100, "eval_step": 1, "stopping_step": 5}
    assert set(beauty) <= known_keys()
