"""`diger sid assign`: new items get semantic IDs from the frozen tokenizer; old rows stay bitwise (issue 15)."""
import json

import numpy as np
import pytest
import torch

from diger.testing import small_config


def _build(root, name="art", **extra):
    from diger.artifact import build_artifact

    return build_artifact(root / name, model="TIGER", dataset="toy", config_dict=small_config(root, **extra))


def _new_vectors(root, n=5, *, copies_of=None, known=()):
    rng = np.random.default_rng(7)
    emb = np.load(root / "toy" / "emb.npz")
    vecs = rng.normal(size=(n, 16)).astype(np.float32) if copies_of is None else \
        np.repeat(emb["embedding"][copies_of][None], n, 0)
    ids = [f"new{i}" for i in range(n)]
    for k in known:  # items the artifact already has: skipped, their rows untouched
        ids.append(k)
        vecs = np.concatenate([vecs, rng.normal(size=(1, 16)).astype(np.float32)])
    path = root / "new.npz"
    np.savez(path, item_id=np.array(ids), embedding=vecs)
    return path, ids[:n], vecs[:n]


def test_assign_keeps_old_rows_and_gives_valid_unique_ids(toy_root, capsys):
    from diger.artifact import load_artifact
    from diger.cli import main
    from diger.tokenizer import RQTokenizer

    art = _build(toy_root)
    path, new_ids, vecs = _new_vectors(toy_root, known=["i3"])
    out = toy_root / "assigned"
    assert main(["sid", "assign", str(art), "--embeddings", str(path), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["new_items"] == 5 and summary["known_items_skipped"] == 1 and summary["n_items"] == 29
    before, after = load_artifact(art), load_artifact(out)  # both verify their hashes
    assert after.item_ids == before.item_ids + new_ids
    assert torch.equal(after.sid_table[:24], before.sid_table)  # bitwise: codes and suffixes
    assert after.item_emb[:24].tobytes() == before.item_emb.tobytes()
    assert (out / "tokenizer.pt").read_bytes() == (art / "tokenizer.pt").read_bytes()
    np.testing.assert_array_equal(after.item_emb[24:], vecs)
    table = after.sid_table
    assert len({tuple(r) for r in table.tolist()}) == 29  # unique semantic IDs
    assert int(table[:, :2].max()) < 4 and int(table[:, 2].max()) < 16 and int(table.min()) >= 0
    # codes: the table's rule (Sinkhorn) over the whole catalogue with the frozen codebooks; suffix: next free one
    tok = RQTokenizer.from_state_dict(before.tokenizer_state)
    everything = torch.from_numpy(np.concatenate([before.item_emb, vecs]))
    assert summary["rule"] == "sinkhorn"
    assert torch.equal(table[24:, :2], tok.get_codes(everything, sinkhorn=True)[24:])
    assert summary["rule_agreement_known"] == pytest.approx(
        float((tok.get_codes(everything, sinkhorn=True)[:24] == before.sid_table[:, :2]).all(1).float().mean()), abs=1e-4)
    for r in range(24, 29):
        same = (table[:r, :2] == table[r, :2]).all(1)
        assert int(table[r, 2]) == (int(table[:r][same, 2].max()) + 1 if same.any() else 0)
    assert after.meta["assigned"]["new_items"] == 5 and after.meta["assigned"]["source"]["artifact"] == str(art)
    # the nearest-code rule, on request
    assert main(["sid", "assign", str(art), "--embeddings", str(path), "--out", str(toy_root / "am"),
                 "--rule", "argmin"]) == 0
    capsys.readouterr()
    near = load_artifact(toy_root / "am").sid_table
    assert torch.equal(near[:24], before.sid_table)
    assert torch.equal(near[24:, :2], tok.get_codes(torch.from_numpy(vecs), sinkhorn=False))


def test_assign_refuses_bad_input_by_name(toy_root):
    from diger.artifact import ArtifactError, assign_semantic_ids
    from diger.tokenizer import SemanticIDCollisionError

    art = _build(toy_root, suffix_size=8)
    # 9 copies of one vector share a prefix: a group of 8 suffixes overflows, naming the first item that does not fit
    path, ids, _ = _new_vectors(toy_root, n=9, copies_of=0)
    with pytest.raises(SemanticIDCollisionError, match=r"item 'new\d' gets the prefix \[\d, \d\], whose collision "
                                                        r"group is full \(all 8 suffixes"):
        assign_semantic_ids(art, toy_root / "o1", embeddings_file=path)
    assert not (toy_root / "o1").exists()  # nothing half-written
    np.savez(toy_root / "d8.npz", item_id=np.array(["x"]), embedding=np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="8 dimensions, the artifact's 16"):
        assign_semantic_ids(art, toy_root / "o2", embeddings_file=toy_root / "d8.npz")
    np.savez(toy_root / "dup.npz", item_id=np.array(["x", "x"]), embedding=np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match=r"item id 'x' appears twice \(rows 0 and 1\)"):
        assign_semantic_ids(art, toy_root / "o3", embeddings_file=toy_root / "dup.npz")
    np.savez(toy_root / "old.npz", item_id=np.array(["i1"]), embedding=np.zeros((1, 16), np.float32))
    with pytest.raises(ValueError, match="already has a semantic ID"):
        assign_semantic_ids(art, toy_root / "o4", embeddings_file=toy_root / "old.npz")
    with pytest.raises(ValueError, match="came from item_emb_file"):  # vectors, not text, made this artifact
        assign_semantic_ids(art, toy_root / "o5", items_file=toy_root / "toy" / "toy.item")
    (toy_root / "full").mkdir()
    (toy_root / "full" / "x").write_text("keep")
    with pytest.raises(ArtifactError, match="exists and is not an empty folder"):
        assign_semantic_ids(art, toy_root / "full", embeddings_file=path)
    with pytest.raises(ValueError, match="exactly one of --items"):
        assign_semantic_ids(art, toy_root / "o6")
    with pytest.raises(ArtifactError, match="sid build: output .* exists and is not an empty folder"):
        _build(toy_root)  # the artifact is never rebuilt in place


def test_new_items_are_served_from_a_trained_run(toy_root, capsys):
    """TIGER trained on an artifact, then served with an assigned artifact: beam search can generate new items."""
    from diger.artifact import ArtifactError, assign_semantic_ids
    from diger.cli import main
    from diger.quick_start import run
    from diger.serving import load_recommender

    art = _build(toy_root)
    res = run("TIGER", "toy", None, small_config(toy_root, output_dir=str(toy_root / "r"), sid_artifact=str(art),
                                                  checkpoint_dir=str(toy_root / "r")))
    path, new_ids, _ = _new_vectors(toy_root)
    assign_semantic_ids(art, toy_root / "a2", embeddings_file=path)
    plain = load_recommender(res["checkpoint"])
    every = {"num_beams": 40}  # more beams than items: constrained decoding enumerates the whole catalogue
    rec = load_recommender(res["checkpoint"], sid_artifact=toy_root / "a2", overrides=every)
    assert rec.item_ids == plain.item_ids + new_ids
    new_internal = [rec.item_index[i] for i in new_ids]
    assert new_internal == list(range(25, 30))
    assert rec.model.trie.lookup(rec.model.sid_table[new_internal]).tolist() == new_internal
    lists = rec.recommend([["i1", "i2"], ["new0", "i5"]], k=29)
    assert all(len(lst) == 29 and {i for i, _ in lst} == set(rec.item_ids) for lst in lists)
    # without new items the old ranking is as before: same model, same items
    assert load_recommender(res["checkpoint"], sid_artifact=art).recommend([["i1", "i2"]], k=5) == \
        plain.recommend([["i1", "i2"]], k=5)
    assert main(["recommend", res["checkpoint"], "--history", "new1,new2", "--topk", "3", "--json",
                 "--sid-artifact", str(toy_root / "a2")]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["items"]) == 3

    # a DIGER run trains its codebooks: new items are assigned from the run itself, not from the pre-training
    dres = run("DIGER", "toy", None, small_config(toy_root, output_dir=str(toy_root / "d"), sid_artifact=str(art),
                                                   checkpoint_dir=str(toy_root / "d")))
    dplain = load_recommender(dres["checkpoint"])
    summary = assign_semantic_ids(toy_root / "d", toy_root / "a3", embeddings_file=path)
    assert summary["new_items"] == 5
    drec = load_recommender(dres["checkpoint"], sid_artifact=toy_root / "a3")
    assert torch.equal(drec.model.sid_table[:25], dplain.model.sid_table)
    assert len(drec.item_ids) == 29
    if not torch.equal(dplain.model.sid_table[1:], load_artifact_table(art)):
        with pytest.raises(ArtifactError, match="gives another semantic ID to item"):
            drec.add_items(toy_root / "a2")
    with pytest.raises(ValueError, match="has no semantic IDs"):
        sas = run("SASRec", "toy", None, small_config(toy_root, output_dir=str(toy_root / "s"),
                                                      checkpoint_dir=str(toy_root / "s")))
        load_recommender(sas["checkpoint"]).add_items(toy_root / "a2")


def load_artifact_table(folder):
    from diger.artifact import load_artifact

    return load_artifact(folder).sid_table


def test_published_letter_ids_become_an_artifact(toy_root):
    """LETTER's *.index.json as an artifact: the published table (+ our collision suffix), no tokenizer."""
    from diger.artifact import ArtifactError, assign_semantic_ids, build_artifact, load_artifact
    from diger.quick_start import run
    from diger.testing import N_ITEMS

    index = {f"i{i}": [f"<a_{i % 3}>", f"<b_{(i // 3) % 2}>"] for i in range(N_ITEMS)}
    path = toy_root / "toy.index.json"
    path.write_text(json.dumps(index))
    cfg = small_config(toy_root, sid_table_file=str(path), item_emb_file=None, text_fields=["nope"], code_num=3)
    out = build_artifact(toy_root / "letter", model="TIGER", dataset="toy", config_dict=cfg)
    art = load_artifact(out)
    assert art.published and art.item_emb.shape == (N_ITEMS, 1)
    for item, row in zip(art.item_ids, art.sid_table.tolist()):
        raw = int(item[1:])
        assert row[:2] == [raw % 3, (raw // 3) % 2]
    assert len({tuple(r) for r in art.sid_table.tolist()}) == N_ITEMS  # the suffix separates shared IDs
    assert len(art.meta["pretrain_info"]["sid_table_file_sha256"]) == 64
    # training on the artifact equals training on the index file
    direct = run("TIGER", "toy", None, {**cfg, "output_dir": str(toy_root / "r1"), "checkpoint_dir": str(toy_root / "r1")})
    via = run("TIGER", "toy", None, small_config(toy_root, sid_artifact=str(out), code_num=3, text_fields=["nope"],
                                                 item_emb_file=None, output_dir=str(toy_root / "r2"),
                                                 checkpoint_dir=str(toy_root / "r2")))
    assert via["test_result"] == direct["test_result"]
    with pytest.raises(ValueError, match="published semantic IDs .* DIGER learns its own codebooks"):
        run("DIGER", "toy", None, small_config(toy_root, sid_artifact=str(out), code_num=3,
                                               output_dir=str(toy_root / "r3"), checkpoint_dir=str(toy_root / "r3")))
    np.savez(toy_root / "n.npz", item_id=np.array(["x"]), embedding=np.zeros((1, 1), np.float32))
    with pytest.raises(ArtifactError, match="without the tokenizer that made them"):
        assign_semantic_ids(out, toy_root / "o", embeddings_file=toy_root / "n.npz")
