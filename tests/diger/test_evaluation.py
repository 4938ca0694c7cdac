"""Reported numbers are right (issue #13): ranked lists shorter than K, chunked full-sort evaluation,
exact time order, thread-count-independent semantic-ID pipeline."""
import numpy as np
import pytest
import torch

from diger.testing import small_config


def _trainer(model, root, **extra):
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from diger.quick_start import load_dataset, make_config, resolve_model, trainer_class

    cfg = make_config(model, "toy", None, small_config(root, **extra))
    init_seed(cfg["seed"], True)
    train, valid, test = data_preparation(cfg, load_dataset(cfg))
    net = resolve_model(model)(cfg, train._dataset)
    return trainer_class(type(net))(cfg, net), test


def test_collector_counts_minus_inf_ranks_as_misses():
    """3 users, 6 items, top-3: only finitely scored ranks can be hits."""
    from diger.evaluation import RankedListCollector

    collector = RankedListCollector({"metrics": ["Recall", "NDCG"], "topk": [3], "eval_args": {"mode": "full"},
                                     "device": "cpu"})
    ninf = float("-inf")
    scores = torch.tensor([
        [ninf, ninf, 0.5, ninf, ninf, ninf],   # list [2]; target 1 sits among the tied -inf items
        [ninf, 0.1, 0.9, ninf, ninf, ninf],    # list [2, 1]; target 1 at rank 2: a hit
        [ninf, ninf, ninf, ninf, ninf, ninf],  # empty list (every beam invalid); target 1
    ])
    positive_u, positive_i = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 1])
    collector.eval_batch_collect(scores, None, positive_u, positive_i)
    topk = collector.data_struct["rec.topk"]
    assert topk[:, :3].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert topk[:, 3].tolist() == [1, 1, 1]  # positives per user


def test_all_invalid_beams_give_zero_metrics(toy_root, monkeypatch):
    """Free decoding whose every beam is an invalid semantic ID: every metric is exactly 0."""
    trainer, test = _trainer("TIGER", toy_root, constrained_decoding=False)
    net = trainer.model

    def invalid_beams(interaction):
        b = interaction[net.ITEM_SEQ].shape[0]
        return torch.full((b, net.num_beams), -1), torch.full((b, net.num_beams), float("-inf"))

    monkeypatch.setattr(net, "beam_search", invalid_beams)
    result = trainer.evaluate(test, load_best_model=False)
    assert result and all(v == 0 for v in result.values()), result


def test_short_ranked_lists_count_only_their_items(toy_root, monkeypatch):
    """Beams that name only the target's neighbours: hits only where the list holds the target."""
    trainer, test = _trainer("TIGER", toy_root)
    net = trainer.model
    batches = list(test)
    targets = torch.cat([b[3] for b in batches])  # positive_i, one per user in order
    n_users = targets.shape[0]
    calls = {"row": 0}

    def one_beam(interaction):
        # user r's list is [target] for even r, [target + 1 (another item)] for odd r; other beams invalid
        b = interaction[net.ITEM_SEQ].shape[0]
        rows = torch.arange(calls["row"], calls["row"] + b)
        calls["row"] += b
        first = torch.where(rows % 2 == 0, targets[rows], targets[rows] % (net.n_items - 1) + 1)
        items = torch.full((b, net.num_beams), -1)
        scores = torch.full((b, net.num_beams), float("-inf"))
        items[:, 0], scores[:, 0] = first, 0.0
        return items, scores

    monkeypatch.setattr(net, "beam_search", one_beam)
    result = trainer.evaluate(test, load_best_model=False)
    expected = ((torch.arange(n_users) % 2) == 0).float().mean().item()
    assert result["recall@10"] == pytest.approx(expected, abs=1e-4)
    assert result["ndcg@10"] == pytest.approx(expected, abs=1e-4)  # a hit at rank 1 has NDCG 1


def test_chunked_full_sort_evaluation_equals_one_pass(toy_root):
    """eval_score_chunk_mb so small that every user is scored alone: same metrics as one pass."""
    from diger.evaluation import chunk_rows

    trainer, test = _trainer("SASRec", toy_root, hidden_size=16, inner_size=32, n_layers=1, n_heads=1,
                             loss_type="CE", train_neg_sample_args=None)
    whole = trainer.evaluate(test, load_best_model=False)
    trainer.config["eval_score_chunk_mb"] = 1e-6
    assert chunk_rows(trainer.model.n_items, 1e-6) == 1
    chunked = trainer.evaluate(test, load_best_model=False)
    assert chunked == whole
    assert chunk_rows(200_000, 256) == 335  # 335 users x 200k items x 4 B <= 256 MB
    with pytest.raises(ValueError, match="eval_score_chunk_mb must be > 0"):
        chunk_rows(10, 0)


def test_sequences_follow_exact_timestamps(tmp_path, monkeypatch):
    """Rows 881250970 then 881250920 in file order (equal in float32): the later one (first in the file) is the test target."""
    from recbole.data import create_dataset, data_preparation

    from diger.quick_start import load_dataset, make_config

    folder = tmp_path / "tied"
    folder.mkdir()
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(3):
        for t, item in enumerate(["a", "b", "c", "d"]):
            rows.append(f"u{u}\t{item}{u % 2}\t{881250000 + 100 * t}")
    rows += ["u0\tlate\t881250970", "u0\tearly\t881250920"]
    (folder / "tied.inter").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    assert np.float32(881250970) == np.float32(881250920)  # RecBole's float32 cannot tell them apart
    cfg = make_config("SASRec", "tied", None, {
        "data_path": str(tmp_path), "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": 10, "state": "WARNING", "show_progress": False,
        "train_neg_sample_args": None, "loss_type": "CE"})

    def targets(ds):
        _, valid, test = data_preparation(cfg, ds)
        out = {}
        for split, loader in (("valid", valid), ("test", test)):
            inter = loader._dataset.inter_feat
            uid = ds.field2id_token["user_id"]
            iid = ds.field2id_token["item_id"]
            for u, i in zip(inter["user_id"].tolist(), inter["item_id"].tolist()):
                out[(split, uid[u])] = iid[i]
        return out

    assert targets(create_dataset(cfg))[("test", "u0")] == "early"  # RecBole alone: file order wins
    fixed = targets(load_dataset(cfg))
    assert fixed[("test", "u0")] == "late" and fixed[("valid", "u0")] == "early"


def test_take_rows_backward_is_deterministic_on_two_threads():
    from diger.models.genrec import take_rows

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(64, 64, generator=g)
        idx = torch.randint(0, 64, (2048,), generator=g)
        w = torch.randn(2048, 64, generator=g)
        grads = set()
        for _ in range(8):
            x = x0.clone().requires_grad_(True)
            out = take_rows(x, idx.view(32, 64))
            assert torch.equal(out, x0[idx].view(32, 64, 64))
            (out.reshape(2048, 64) * w).sum().backward()
            grads.add(x.grad.numpy().tobytes())
        assert len(grads) == 1
    finally:
        torch.set_num_threads(threads)


def test_rqvae_pretraining_same_on_one_and_two_threads():
    """k-means init, pre-training and the Sinkhorn SID table: bitwise equal on 1 and 2 threads, run twice."""
    from diger.tokenizer import RQTokenizer, build_sid_table, pretrain_tokenizer

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1500, 48)).astype(np.float32))
    threads = torch.get_num_threads()
    seen = set()
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            torch.manual_seed(2020)
            tok = RQTokenizer(48, [64], 64, [16, 16, 16])
            info = pretrain_tokenizer(tok, x, epochs=6, batch_size=1024, eval_every=3, seed=2020)
            table = build_sid_table(tok.get_codes(x), 16)
            params = torch.cat([p.detach().flatten() for p in tok.parameters()])
            seen.add((params.numpy().tobytes(), table.numpy().tobytes(), info["best_epoch"], info["collision_rate"]))
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 1
