"""backbone: decoder (issue 19): a causal transformer over the flattened semantic-ID tokens, every next item of a
window in one pass; beam search, KV cache, leakage, gradient reachability, a learnable toy task."""
import pytest
import torch
import torch.nn.functional as F

from diger.models.genrec import GenRec
from diger.models.trie import SIDTrie
from diger.testing import N_ITEMS
from tests.diger.test_beam_search_reference import _random_table
from tests.diger.test_models import _batch, _build, _codebook_grads, _exhaustive_logprob, USES


@pytest.mark.parametrize("use_cache", [True, False])
def test_decoder_beam_search_equals_exhaustive_scoring(toy_root, use_cache):
    cfg, net, _, test = _build("TIGER", toy_root, num_beams=N_ITEMS, backbone="decoder")
    net.eval()
    inter = _batch(test)[0]
    enc_emb, enc_mask = net.encoder_embeddings(inter[net.ITEM_SEQ])
    items, scores = net.genrec.beam_search(enc_emb, enc_mask, net.trie, N_ITEMS, use_cache=use_cache)
    ref_scores, ref_items = _exhaustive_logprob(net, inter).sort(dim=1, descending=True)
    assert torch.allclose(scores, ref_scores, atol=1e-4)
    assert torch.equal(items, ref_items + 1)


def test_decoder_kv_cache_equals_no_cache_and_free_decoding(toy_root):
    cfg, net, _, test = _build("TIGER", toy_root, num_beams=10, backbone="decoder")
    net.eval()
    inter = _batch(test)[0]
    enc_emb, enc_mask = net.encoder_embeddings(inter[net.ITEM_SEQ])
    for constrained in (True, False):
        a = net.genrec.beam_search(enc_emb, enc_mask, net.trie, 10, constrained=constrained, use_cache=True)
        b = net.genrec.beam_search(enc_emb, enc_mask, net.trie, 10, constrained=constrained, use_cache=False)
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-5)


def test_sequence_logits_equal_teacher_forcing_of_each_prefix(toy_root):
    """One causal pass over [history + target] gives, at item k, the logits that teacher forcing of the
    row (history = items < k, target = item k) gives: exactly the targets of RecBole's prefix rows."""
    cfg, net, train, _ = _build("TIGER", toy_root, backbone="decoder")
    net.eval()
    g = net.genrec
    seq = torch.tensor([[3, 7, 1, 9, 0, 0], [5, 2, 8, 4, 6, 11]])
    codes = net.sid_table[seq]
    seq_logits = g.sequence_logits(g.embed_codes(codes), seq > 0)
    for r, n in ((0, 4), (1, 6)):
        for k in range(1, n):
            hist = seq[r:r + 1, :k]
            enc_emb, enc_mask = net.encoder_embeddings(hist)
            dec = g.decoder_inputs(g.embed_codes(codes[r:r + 1, k]))
            tf = g(enc_emb, enc_mask, dec)
            for j in range(codes.shape[-1]):
                torch.testing.assert_close(seq_logits[j][r, k], tf[j][0], atol=1e-5, rtol=1e-4)


def test_window_rows_cover_each_training_target_once_and_no_held_out_item(toy_root):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from diger.quick_start import make_config, resolve_model
    from diger.testing import small_config

    cfg = make_config("TIGER", "toy", None, small_config(toy_root, backbone="decoder", MAX_ITEM_LIST_LENGTH=3))
    init_seed(cfg["seed"], True)
    train, valid, test = data_preparation(cfg, create_dataset(cfg))
    net = resolve_model("TIGER")(cfg, train._dataset)
    ds = train._dataset
    inter = ds.inter_feat
    uid, target = inter[ds.uid_field].tolist(), inter[net.POS_ITEM_ID].tolist()
    seqs, lens = inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN]
    train_seq = {}  # each user's training sequence: the first row's history, then every row's target in order
    for r, u in enumerate(uid):
        train_seq.setdefault(u, seqs[r][:lens[r]].tolist() if lens[r] == 1 else [])
        train_seq[u].append(target[r])
    covered = {u: [] for u in train_seq}
    for r in inter[net.WINDOW_END].nonzero().flatten().tolist():
        window = seqs[r][:lens[r]].tolist() + [target[r]]
        full, n = train_seq[uid[r]], len(window)
        assert any(full[s:s + n] == window for s in range(len(full) - n + 1))  # a slice of training interactions
        covered[uid[r]].extend(window[1:])  # items 1..len are the predicted targets
    for u, full in train_seq.items():
        assert covered[u] == [] or sorted(covered[u]) == sorted(full[1:])  # every training target exactly once
    assert sum(map(len, covered.values())) == len(target)
    for batch in valid:  # the validation history is the end of the training sequence: held-out items come after
        inter_v = batch[0]
        for u, h, n in zip(inter_v[ds.uid_field].tolist(), inter_v[net.ITEM_SEQ], inter_v[net.ITEM_SEQ_LEN]):
            assert h[:n].tolist() == train_seq[u][-int(n):]
    loss = net.calculate_loss(_batch(train))
    assert torch.isfinite(loss) and loss.requires_grad


@pytest.mark.parametrize("keep", USES)
def test_decoder_true_e2e_each_use_alone_reaches_every_codebook_level(toy_root, keep):
    cfg, net, train, _ = _build("DIGER", toy_root, assign_mode="det_softmax_st", gumbel_tau=50.0, backbone="decoder",
                                decoder_train="target")
    batch = _batch(train)
    grads = _codebook_grads(net, batch, detach=set(USES) - {keep})
    for g in grads:
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for g in _codebook_grads(net, batch, detach=set(USES)))


def test_decoder_learns_a_deterministic_successor_task():
    """Every user's sequence walks the catalogue in a fixed cyclic order: after 150 sequence-loss steps, the
    beam search's top item is the true next item for at least 90% of held-out histories (Recall@1)."""
    torch.manual_seed(0)
    vocab = [6, 6, 4]
    n = 40
    table = _random_table(vocab, n, 0)
    trie = SIDTrie(table, vocab)
    model = GenRec(vocab, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=1, num_decoder_layers=1,
                   dropout=0.0, backbone="decoder")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    nxt = lambda x: x % n + 1  # noqa: E731
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        start = torch.randint(1, n + 1, (32, 1), generator=g)
        seq = start
        for _ in range(5):
            seq = torch.cat([seq, nxt(seq[:, -1:])], 1)
        codes = table[seq]
        logits = model.sequence_logits(model.embed_codes(codes), seq > 0)
        loss = torch.stack([F.cross_entropy(lg[:, 1:].reshape(-1, lg.shape[-1]), codes[:, 1:, j].reshape(-1))
                            for j, lg in enumerate(logits)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hist = torch.arange(1, n + 1)[:, None] + torch.arange(3)[None]
    hist = (hist - 1) % n + 1
    emb = model.embed_codes(table[hist])
    enc_emb, enc_mask = model.encoder_inputs(emb, hist > 0)
    items, _ = model.beam_search(enc_emb, enc_mask, trie, 5)
    recall1 = (items[:, 0] == nxt(hist[:, -1])).float().mean().item()
    assert recall1 >= 0.9, recall1


@pytest.mark.parametrize("keep", USES)
def test_decoder_sequence_training_of_diger_reaches_every_codebook_level(toy_root, keep):
    cfg, net, train, _ = _build("DIGER", toy_root, assign_mode="det_softmax_st", gumbel_tau=50.0, backbone="decoder",
                                MAX_ITEM_LIST_LENGTH=3)
    batch = _batch(train)
    assert net.WINDOW_END in batch.interaction and batch[net.WINDOW_END].any()
    grads = _codebook_grads(net, batch, detach=set(USES) - {keep})
    for g in grads:
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for g in _codebook_grads(net, batch, detach=set(USES)))
    rec, recon, vq = net.calculate_loss(batch)
    assert all(torch.isfinite(x) for x in (rec, recon, vq))


def test_decoder_layers_sets_the_depth_and_bad_values_name_the_key(toy_root):
    """``decoder_layers`` (default ~): the causal transformer is t5_layers + t5_decoder_layers deep unless set."""
    cfg, net, train, _ = _build("TIGER", toy_root, backbone="decoder")
    assert len(net.genrec.lm.layers) == cfg["t5_layers"] + cfg["t5_decoder_layers"]
    cfg, net, train, _ = _build("TIGER", toy_root, backbone="decoder", decoder_layers=1)
    assert len(net.genrec.lm.layers) == 1
    assert torch.isfinite(net.calculate_loss(_batch(train)))
    for bad in (0, 1.5, "two"):
        with pytest.raises(ValueError, match="decoder_layers"):
            _build("TIGER", toy_root, backbone="decoder", decoder_layers=bad)
    with pytest.raises(ValueError, match="decoder_layers: 2 needs backbone: decoder, got backbone: fast"):
        _build("TIGER", toy_root, backbone="fast", decoder_layers=2)  # not silently ignored
