"""`diger.load_recommender` / `diger recommend`: rankings from a trained run equal evaluation's (issue 15)."""
import json

import pytest
import torch

from diger.testing import small_config


def _train(root, model, **extra):
    from diger.quick_start import run

    out = root / f"run-{model}"
    if model == "SASRec":
        extra = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "loss_type": "CE",
                 "train_neg_sample_args": None, **extra}
    cfg = small_config(root, output_dir=str(out), checkpoint_dir=str(out), show_progress=False, **extra)
    run(model, "toy", None, cfg)
    return out


def _eval_rankings(rec, k):
    """(raw history, top-k raw items by evaluation's scores) of every test row, as full-ranking evaluation sees them."""
    from diger.quick_start import rebuild_from_checkpoint

    ckpt, config, ds, (_, _, test_data), net = rebuild_from_checkpoint(rec.checkpoint, {"state": "WARNING"})
    net.load_state_dict(ckpt["state_dict"])
    net.load_other_parameter(ckpt.get("other_parameter"))
    net.eval()
    tokens = ds.field2id_token[ds.iid_field]
    users_tok = ds.field2id_token[ds.uid_field]
    rows = []
    with torch.no_grad():
        for batch in test_data:
            inter, _, _, pos_i = batch
            scores = net.full_sort_predict(inter).view(len(inter), -1)
            scores[:, 0] = float("-inf")
            top, idx = torch.topk(scores, k, dim=1)
            for r in range(len(inter)):
                n = int(inter[net.ITEM_SEQ_LEN][r])
                hist = [str(tokens[i]) for i in inter[net.ITEM_SEQ][r, :n].tolist()]
                ranked = [str(tokens[i]) for s, i in zip(top[r].tolist(), idx[r].tolist()) if s != float("-inf")]
                rows.append((str(users_tok[int(inter[ds.uid_field][r])]), hist, ranked))
    return rows


@pytest.mark.parametrize("model", ["TIGER", "SASRec", "TIGER-decoder"])
def test_recommend_equals_evaluation_ranking(toy_root, model):
    import diger

    if model == "TIGER-decoder":  # the decoder-only backbone serves through the same beam search
        model, extra = "TIGER", {"backbone": "decoder"}
    else:
        extra = {}
    out = _train(toy_root, model, **extra)
    rec = diger.load_recommender(out)
    rows = _eval_rankings(rec, 5)
    assert len(rows) == 40  # every toy user has a test row
    got = rec.recommend([h for _, h, _ in rows], k=5)
    for (user, hist, ranked), lst in zip(rows, got):
        assert [i for i, _ in lst] == ranked, user
        scores = [s for _, s in lst]
        assert scores == sorted(scores, reverse=True)
        # the whole known history minus its last item, truncated as in training, is evaluation's test history
        full = rec.user_history(user)
        assert full[:-1][-rec.max_history:] == hist
    # a user's recommendation reads the whole history (the test item included)
    one = rec.recommend_users([rows[0][0]], k=5)[0]
    assert one == rec.recommend([rec.user_history(rows[0][0])], k=5)[0]
    # excluding the history removes exactly the history's items
    hist = rows[0][1]
    excl = rec.recommend([hist], k=24, exclude_history=True)[0]
    assert not {i for i, _ in excl} & set(hist)
    if model == "SASRec":  # dense scores: every non-history item is ranked
        assert len(excl) == 24 - len(set(hist))
    else:  # beam search: never more than the beams, never an item outside them (no -inf filler)
        assert 0 < len(excl) <= rec.model.num_beams and all(s > float("-inf") for _, s in excl)


def test_recommend_bad_input_and_cli(toy_root, capsys):
    import diger
    from diger.cli import main

    out = _train(toy_root, "SASRec")
    rec = diger.load_recommender(out, device="cpu")
    assert rec.item_ids == [f"i{i}" for i in range(24)] or sorted(rec.item_ids) == sorted(f"i{i}" for i in range(24))
    with pytest.raises(KeyError, match=r"history 1, position 1: unknown item id 'nope'"):
        rec.recommend([["i1"], ["i2", "nope"]])
    assert rec.recommend([["i2", "nope"]], skip_unknown=True) == rec.recommend([["i2"]])
    with pytest.raises(ValueError, match="history 0 is empty after dropping unknown"):
        rec.recommend([["nope"]], skip_unknown=True)
    with pytest.raises(TypeError, match="list of histories"):
        rec.recommend(["i1", "i2"])
    with pytest.raises(KeyError, match="unknown user id 'u999'"):
        rec.recommend_users(["u999"])
    for bad in (0, 2.5, None, True):
        with pytest.raises(ValueError, match=f"k must be a positive integer .*got {bad!r}"):
            rec.recommend([["i1"]], k=bad)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rec.recommend_users(["u1"], k="10")
    # a history longer than the model's is truncated to the most recent items, as in training
    long = [f"i{i % 24}" for i in range(3 * rec.max_history)]
    assert rec.recommend([long]) == rec.recommend([long[-rec.max_history:]])
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        diger.load_recommender(toy_root / "missing")

    capsys.readouterr()
    assert main(["recommend", str(out), "--history", "i1,i2,i3", "--topk", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = rec.recommend([["i1", "i2", "i3"]], k=3)[0]
    assert printed[0]["history"] == ["i1", "i2", "i3"]
    assert [(r["item_id"], r["score"]) for r in printed[0]["items"]] == [(i, pytest.approx(s)) for i, s in want]
    assert main(["recommend", str(out), "--user", "u3", "--topk", "2"]) == 0
    text = capsys.readouterr().out
    assert "user u3" in text and len([ln for ln in text.splitlines() if ln.strip().startswith(("1 ", "2 "))]) == 2
    assert main(["recommend", str(out), "--history", "i1,zzz"]) == 2
    assert "unknown item id 'zzz'" in capsys.readouterr().err
    assert main(["recommend", str(out)]) == 2  # neither --user nor --history


def test_sid_export_round_trip(toy_root, capsys):
    """`diger sid export`: raw item ids and codes equal the checkpoint's SID table; unknown formats refused."""
    import csv

    from diger.cli import main
    from diger.serving import export_semantic_ids, resolve_checkpoint
    from diger.trainer import load_checkpoint

    out = _train(toy_root, "TIGER")
    table = load_checkpoint(resolve_checkpoint(out))["state_dict"]["sid_table"]
    assert main(["sid", "export", str(out), "--out", str(toy_root / "ids.csv")]) == 0
    assert "24 items written" in capsys.readouterr().out
    rows = list(csv.reader(open(toy_root / "ids.csv")))
    assert rows[0] == ["item_id", "code_1", "code_2", "suffix"]
    import diger

    rec = diger.load_recommender(out)
    assert [r[0] for r in rows[1:]] == rec.item_ids
    assert torch.equal(torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]]), table[1:])
    assert len({tuple(r[1:]) for r in rows[1:]}) == 24  # unique semantic IDs
    assert export_semantic_ids(out, toy_root / "ids.jsonl") == 24
    first = json.loads(open(toy_root / "ids.jsonl").readline())
    assert first == dict(zip(rows[0], [rows[1][0]] + [int(v) for v in rows[1][1:]]))
    with pytest.raises(ValueError, match="unknown export format '.txt'"):
        export_semantic_ids(out, toy_root / "ids.txt")
    sas = _train(toy_root, "SASRec")
    assert main(["sid", "export", str(sas), "--out", str(toy_root / "s.csv")]) == 2
    assert "SASRec has no semantic IDs" in capsys.readouterr().err
    assert not list(toy_root.glob(".tmp-*")) and not (toy_root / "s.csv").exists()
