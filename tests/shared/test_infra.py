"""diger.infra: atomic writes, plain-data checkpoints, key=value overrides shared by diger and softthink."""
import subprocess
import sys

import pytest
import torch


class Pickled:
    """Any user class: torch.save pickles it, weights_only loading refuses it."""


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    from diger.infra import atomic_write, atomic_write_json, atomic_write_text

    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]  # no temp left
    atomic_write_json(tmp_path / "r.json", {"x": 1})
    assert (tmp_path / "r.json").read_text() == '{\n  "x": 1\n}\n'
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "bad.json", {"x": float("nan")})
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(p, "a"):
            pass


def test_plain_checkpoints_round_trip_and_refuse_pickles(tmp_path):
    from diger.infra import CheckpointError, atomic_torch_save, load_plain_checkpoint

    atomic_torch_save({"state_dict": {"w": torch.arange(3)}}, tmp_path / "c.pth")
    ok = load_plain_checkpoint(tmp_path / "c.pth", owner="diger")
    assert torch.equal(ok["state_dict"]["w"], torch.arange(3))
    torch.save({"obj": Pickled()}, tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match="pickled objects, not plain data \\(not written by diger"):
        load_plain_checkpoint(tmp_path / "p.pth", owner="diger")
    (tmp_path / "t.pth").write_bytes((tmp_path / "c.pth").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="cannot load checkpoint .*t.pth"):
        load_plain_checkpoint(tmp_path / "t.pth", owner="diger")
    with pytest.raises(CheckpointError, match="is not a softthink checkpoint \\(no format\\)"):
        load_plain_checkpoint(tmp_path / "c.pth", owner="softthink", check=lambda c: "no format")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_plain_checkpoint(tmp_path / "none.pth", owner="diger")


def test_key_values_for_both_command_lines():
    from diger.config import ConfigError, parse_overrides
    from diger.infra import parse_key_values

    got = parse_key_values(["--epochs=3", "--lr=1e-3", "--topk=[5,10]", "--name=[1,", "--x="])
    assert got == {"epochs": 3, "lr": 0.001, "topk": [5, 10], "name": "[1,", "x": ""}  # YAML that does not parse stays text
    assert parse_key_values(["lr=2E-5", "loss_type=sequence_mean"], prefix="") == \
        {"lr": 2e-05, "loss_type": "sequence_mean"}
    with pytest.raises(ConfigError, match="unrecognised argument 'epochs=3'; overrides are written --key=value"):
        parse_overrides(["epochs=3"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["--=3"])


def test_infra_imports_neither_recbole_nor_transformers():
    code = "import sys, diger.infra; print(any(m in sys.modules for m in ('recbole', 'transformers')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_softthink_set_reads_exponents_as_numbers_like_diger_run():
    from softthink.cli import _parse_overrides

    assert _parse_overrides(["learning_rate=1e-6", "num_generations=4"]) == {"learning_rate": 1e-06, "num_generations": 4}
    with pytest.raises(SystemExit, match="--set expects key=value"):
        _parse_overrides(["learning_rate"])


def test_atomic_dir_replaces_keeps_and_rolls_back(tmp_path):
    from diger.infra import atomic_dir

    d = tmp_path / "model"
    with atomic_dir(d) as tmp:
        (tmp / "w.txt").write_text("v1")
    assert (d / "w.txt").read_text() == "v1"
    with pytest.raises(RuntimeError):  # an error inside the block leaves the old folder untouched
        with atomic_dir(d) as tmp:
            (tmp / "w.txt").write_text("half")
            raise RuntimeError("killed")
    assert (d / "w.txt").read_text() == "v1"
    with atomic_dir(d) as tmp:  # replace: the new folder, nothing of the old one
        (tmp / "x.txt").write_text("v2")
    assert sorted(p.name for p in d.iterdir()) == ["x.txt"]
    with atomic_dir(d, if_exists="keep") as tmp:  # keep: someone else's finished folder wins
        (tmp / "y.txt").write_text("v3")
    assert sorted(p.name for p in d.iterdir()) == ["x.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or .old folder left
    with pytest.raises(ValueError, match="if_exists"):
        with atomic_dir(d, if_exists="merge"):
            pass


def test_rng_state_survives_a_plain_checkpoint(tmp_path):
    import random

    import numpy as np

    from diger.infra import atomic_torch_save, load_plain_checkpoint, rng_state, set_rng_state

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    atomic_torch_save({"rng": rng_state()}, tmp_path / "last.pth")
    want = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(load_plain_checkpoint(tmp_path / "last.pth", owner="test")["rng"])  # weights_only load
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
