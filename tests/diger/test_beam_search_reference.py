"""The batched, KV-cached, trie-constrained beam search (``GenRec.beam_search``) against a plain reference.

The reference below decodes one user and one beam at a time, re-running the decoder on the whole prefix
(no cache), and checks prefixes against a Python set of valid semantic-ID prefixes. The optimised search must
return the same top-10 items in the same order, with the same scores (issue #5, hot spots of beam search).
"""
import math

import pytest
import torch

from diger.models.genrec import GenRec
from diger.models.trie import SIDTrie


def _random_table(vocab_sizes, n_items, seed):
    g = torch.Generator().manual_seed(seed)
    rows = set()
    while len(rows) < n_items:
        rows.add(tuple(int(torch.randint(k, (1,), generator=g)) for k in vocab_sizes))
    table = torch.tensor(sorted(rows), dtype=torch.long)
    table = table[torch.randperm(n_items, generator=g)]
    return torch.cat([torch.full((1, len(vocab_sizes)), -1, dtype=torch.long), table])  # row 0 = pad


def _model_and_inputs(vocab_sizes, n_items, users=5, hist=4, seed=0):
    torch.manual_seed(seed)
    model = GenRec(vocab_sizes, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=1, num_decoder_layers=2,
                   dropout=0.1).eval()
    with torch.no_grad():  # larger code embeddings -> well separated scores (no ties)
        for e in model.code_emb:
            e.weight.normal_(0.0, 1.0)
    table = _random_table(vocab_sizes, n_items, seed)
    g = torch.Generator().manual_seed(seed + 1)
    seq = torch.randint(1, n_items + 1, (users, hist), generator=g)
    seq[0, :2] = 0  # a padded history
    emb = model.embed_codes(table[seq])
    enc_emb, enc_mask = model.encoder_inputs(emb, seq > 0)
    return model, table, enc_emb, enc_mask


def reference_beam_search(model, table, enc_emb, enc_mask, num_beams, constrained=True):
    """Per user and per beam, full decoder recomputation; returns a list of ``[(item, score), ...]`` per user."""
    sid_to_item = {tuple(table[i].tolist()): i for i in range(1, table.shape[0])}
    prefixes = {sid[:j] for sid in sid_to_item for j in range(len(sid) + 1)}
    c = model.num_positions
    out = []
    with torch.no_grad():
        for u in range(enc_emb.shape[0]):
            enc = model.encode(enc_emb[u: u + 1], enc_mask[u: u + 1])
            beams = [((), 0.0)]
            for j in range(c):
                cands = []
                for prefix, score in beams:
                    steps = [model.bos] + [model.code_emb[i].weight[code] for i, code in enumerate(prefix)]
                    hid, _ = model.decode(torch.stack(steps)[None], enc, enc_mask[u: u + 1])
                    logp = torch.log_softmax(model.position_logits(hid[0, -1], j).float(), -1)
                    for code in range(model.vocab_sizes[j]):
                        if constrained and prefix + (code,) not in prefixes:
                            continue
                        cands.append((prefix + (code,), score + float(logp[code])))
                beams = sorted(cands, key=lambda t: -t[1])[:num_beams]
            out.append([(sid_to_item[p], s) for p, s in beams if p in sid_to_item])
    return out


@pytest.mark.parametrize("vocab_sizes,n_items", [([3, 4, 5, 6], 200), ([8, 8, 2], 100)])
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("constrained", [True, False])
def test_beam_search_matches_reference(vocab_sizes, n_items, use_cache, constrained):
    # [3, 4, 5, 6] with 20 beams: the beam width grows 3 -> 12 -> 20 -> 20, so the per-beam encoder states
    # and cross-attention cache are re-laid out more than once; [8, 8, 2]: width 8 -> 20 -> 20.
    model, table, enc_emb, enc_mask = _model_and_inputs(vocab_sizes, n_items)
    trie = SIDTrie(table, vocab_sizes)
    num_beams = 20
    items, scores = model.beam_search(enc_emb, enc_mask, trie, num_beams, constrained=constrained,
                                      use_cache=use_cache)
    ref = reference_beam_search(model, table, enc_emb, enc_mask, num_beams, constrained=constrained)
    assert items.shape == scores.shape == (enc_emb.shape[0], num_beams)
    for u, expected in enumerate(ref):
        got = [(int(i), float(s)) for i, s in zip(items[u], scores[u]) if i > 0]
        assert [i for i, _ in got][:10] == [i for i, _ in expected][:10]
        assert len(got) == len(expected)
        for (_, s), (_, r) in zip(got, expected):
            assert math.isclose(s, r, rel_tol=1e-5, abs_tol=1e-5)
        if constrained:  # every beam is an item; missing beams pad the end with item -1, score -inf
            assert (items[u, len(got):] == -1).all() and torch.isinf(scores[u, len(got):]).all()


def test_cached_and_uncached_search_agree_exactly_on_items():
    model, table, enc_emb, enc_mask = _model_and_inputs([4, 4, 4, 8], 150, users=7)
    trie = SIDTrie(table, [4, 4, 4, 8])
    a_items, a_scores = model.beam_search(enc_emb, enc_mask, trie, 20, use_cache=True)
    b_items, b_scores = model.beam_search(enc_emb, enc_mask, trie, 20, use_cache=False)
    assert torch.equal(a_items, b_items)
    torch.testing.assert_close(a_scores, b_scores, rtol=1e-5, atol=1e-5)
