"""Semantic-ID artifacts: build once, reuse by content hash, load explicitly, refuse what does not fit (issue 15)."""
import csv
import json

import numpy as np
import pytest
import torch

from diger.testing import small_config


def _run(root, name, model="TIGER", **extra):
    from diger.quick_start import run

    out = root / name
    return run(model, "toy", None, small_config(root, output_dir=str(out), checkpoint_dir=str(out),
                                                show_progress=False, **extra))


def test_auto_artifact_is_built_once_and_reused(toy_root, monkeypatch):
    import diger.tokenizer as tokenizer

    plain = _run(toy_root, "plain", sid_artifact=None)  # computed in the run, nothing cached
    assert not (toy_root / "cache" / "sid").exists()
    first = _run(toy_root, "auto1")  # auto is the default
    cached = list((toy_root / "cache" / "sid").iterdir())
    assert len(cached) == 1 and first["semantic_ids"]["tokenizer_pretraining"]["sid_artifact"] == str(cached[0])
    assert first["test_result"] == plain["test_result"]  # building it changes nothing

    def no_pretraining(*a, **k):
        raise AssertionError("pre-trained although the artifact matches")

    with monkeypatch.context() as m:
        m.setattr(tokenizer, "pretrain_tokenizer", no_pretraining)
        again = _run(toy_root, "auto2", sid_artifact="auto")
        # DIGER reuses it too (same stage-0 settings) and trains its codebooks from there
        diger_run = _run(toy_root, "auto3", model="DIGER", sid_artifact="auto")
    assert again["test_result"] == plain["test_result"]  # same IDs, same tokenizer, same T5 training
    assert diger_run["semantic_ids"]["tokenizer_pretraining"]["sid_artifact"] == str(cached[0])
    table = torch.load(again["checkpoint"], weights_only=True)["state_dict"]["sid_table"]
    assert torch.equal(table, torch.load(plain["checkpoint"], weights_only=True)["state_dict"]["sid_table"])

    # other stage-0 inputs, other key: a changed setting and changed item embeddings pre-train again
    _run(toy_root, "auto4", sid_artifact="auto", rqvae_epochs=10)
    emb = np.load(toy_root / "toy" / "emb.npz")
    np.savez(toy_root / "other.npz", item_id=emb["item_id"], embedding=emb["embedding"] + 0.5)
    _run(toy_root, "auto5", sid_artifact="auto", item_emb_file=str(toy_root / "other.npz"))
    assert len(list((toy_root / "cache" / "sid").iterdir())) == 3


def test_every_seed_shares_one_pretraining_unless_sid_seed_is_unset(toy_root, monkeypatch):
    import diger.tokenizer as tokenizer

    base = _run(toy_root, "s2020", seed=2020)  # default sid_seed 2020: builds the one shared artifact
    with monkeypatch.context() as m:
        m.setattr(tokenizer, "pretrain_tokenizer", lambda *a, **k: pytest.fail("pre-trained for another seed"))
        other = _run(toy_root, "s2021", seed=2021)  # another run seed: same stage 0, another T5
    assert other["semantic_ids"]["tokenizer_pretraining"]["sid_artifact"] == \
        base["semantic_ids"]["tokenizer_pretraining"]["sid_artifact"]
    t = [torch.load(r["checkpoint"], weights_only=True)["state_dict"]["sid_table"] for r in (base, other)]
    assert torch.equal(t[0], t[1])
    # sid_seed ~ ties stage 0 to the run seed: seed 2021 pre-trains its own tokenizer (a second artifact),
    # and seed 2020 with sid_seed ~ is the run above exactly
    own = _run(toy_root, "own2021", seed=2021, sid_seed=None, sid_artifact=None)
    assert not torch.equal(t[0], torch.load(own["checkpoint"], weights_only=True)["state_dict"]["sid_table"])
    assert _run(toy_root, "own2020", seed=2020, sid_seed=None)["test_result"] == base["test_result"]
    for bad in (-1, 1.5, "x", True):
        with pytest.raises(ValueError, match="sid_seed"):
            _run(toy_root, f"bad{bad}", sid_seed=bad)


def test_sid_build_cli_and_explicit_artifact(toy_root, capsys):
    from diger.artifact import ArtifactError, load_artifact
    from diger.cli import main
    from diger.quick_start import make_config

    art = toy_root / "art"
    cfg = small_config(toy_root)
    overrides = [f"--{k}={json.dumps(v)}" for k, v in cfg.items()]
    assert main(["sid", "build", "--model", "TIGER", "--dataset", "toy", "--out", str(art), *overrides]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_items"] == 24 and len(printed["key"]) == 64
    loaded = load_artifact(art)
    assert loaded.sid_table.shape == (24, 3) and len({tuple(r) for r in loaded.sid_table.tolist()}) == 24
    assert loaded.item_emb.shape == (24, 16)

    plain = _run(toy_root, "plain")
    used = _run(toy_root, "explicit", sid_artifact=str(art))
    assert used["test_result"] == plain["test_result"]
    # the run's table is the artifact's, row for row by raw item id
    rows = list(csv.reader(open(art / "sid_table.csv")))
    assert rows[0] == ["item_id", "code_1", "code_2", "suffix"]
    table = torch.load(used["checkpoint"], weights_only=True)["state_dict"]["sid_table"]
    import diger

    rec = diger.load_recommender(used["checkpoint"])
    by_id = {r[0]: [int(v) for v in r[1:]] for r in rows[1:]}
    assert [by_id[i] for i in rec.item_ids] == table[1:].tolist()
    # export of the artifact equals its table
    assert main(["sid", "export", str(art), "--out", str(toy_root / "a.csv")]) == 0
    assert list(csv.reader(open(toy_root / "a.csv"))) == rows

    # what does not fit is refused by name
    with pytest.raises(ArtifactError, match=r"other model shapes \(code_num: run 8, artifact 4\)"):
        _run(toy_root, "bad", sid_artifact=str(art), code_num=8)
    with pytest.raises(ArtifactError, match=r"no semantic ID for item 'zzz' \(1 of the dataset's 25"):
        loaded.aligned(["[PAD]", *loaded.item_ids, "zzz"])
    with pytest.raises(ArtifactError, match="no such folder"):
        load_artifact(toy_root / "nope")
    text = (art / "sid_table.csv").read_text().splitlines()
    head, first = text[0], text[1].split(",")
    first[1] = str((int(first[1]) + 1) % 4)
    (art / "sid_table.csv").write_text("\n".join([head, ",".join(first), *text[2:]]) + "\n")
    with pytest.raises(ArtifactError, match="sid_table.csv: content changed"):
        load_artifact(art)
    (art / "sid_table.csv").write_text("\n".join(text) + "\n")  # restored
    load_artifact(art)
    meta = json.loads((art / "artifact.json").read_text())
    meta["settings"]["code_num"] = 8
    (art / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="artifact.json: content changed"):
        load_artifact(art)
    meta["settings"]["code_num"] = 4
    (art / "artifact.json").write_text(json.dumps(meta))
    good = (art / "tokenizer.pt").read_bytes()
    (art / "tokenizer.pt").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="tokenizer.pt: content changed"):
        load_artifact(art)
    (art / "tokenizer.pt").write_bytes(good)
    load_artifact(art)
    (art / "tokenizer.pt").unlink()
    with pytest.raises(ArtifactError, match=r"missing \['tokenizer.pt'\]"):
        load_artifact(art)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sid_artifact is a known key: no "unknown key" warning
        make_config("TIGER", "toy", config_dict={**cfg, "sid_artifact": "auto"})
