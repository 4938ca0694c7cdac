"""``backbone: fast`` (diger/models/fast_t5.py) against HF ``T5Model`` with the same weights (issue 14)."""
import pytest
import torch
from transformers import T5Config, T5Model

from diger.models.fast_t5 import FastT5Model
from diger.models.genrec import GenRec
from diger.models.trie import SIDTrie

from tests.diger.test_beam_search_reference import _random_table


def _pair(dropout=0.0, layers=2, dec_layers=3):
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=1, d_model=32, d_ff=48, num_heads=4, d_kv=16, num_layers=layers,
                   num_decoder_layers=dec_layers, dropout_rate=dropout, feed_forward_proj="relu", use_cache=False)
    hf = T5Model(cfg)
    with torch.no_grad():  # HF initialises the position tables small; make the bias matter
        for stack in (hf.encoder, hf.decoder):
            stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0.0, 1.0)
        for n, p in hf.named_parameters():
            if n.endswith("layer_norm.weight"):
                p.uniform_(0.5, 1.5)
    fast = FastT5Model(cfg)
    fast.load_state_dict(hf.state_dict())
    return hf, fast


def _inputs(b=5, n=150, t=4, d=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, n, d, generator=g)
    y = torch.randn(b, t, d, generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[0, : n // 4] = 0  # padded histories (left padding, as RecBole's)
    mask[b - 1, : n - 1] = 0
    return x, y, mask


def test_state_dict_keys_and_shapes_are_hf():
    hf, fast = _pair()
    a, b = hf.state_dict(), fast.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    back = T5Model(hf.config)
    back.load_state_dict(fast.state_dict())  # strict, both ways
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in a.items())


def test_outputs_and_gradients_match_hf_fp32():
    hf, fast = _pair()
    x, y, mask = _inputs()  # 150 encoder tokens: distances beyond max_exact use the log buckets
    hf.eval(), fast.eval()
    out_h = hf(inputs_embeds=x, attention_mask=mask, decoder_inputs_embeds=y)
    enc_f = fast.encode(x, mask)
    out_f = fast.decode(y, enc_f, mask)
    keep = mask.bool()
    assert (out_h.encoder_last_hidden_state - enc_f)[keep].abs().max() < 1e-5
    assert (out_h.last_hidden_state - out_f).abs().max() < 1e-5
    # gradients with dropout 0 in training mode (the attention goes through the explicit softmax path)
    hf.train(), fast.train()
    w = torch.randn_like(out_f)
    (hf(inputs_embeds=x, attention_mask=mask, decoder_inputs_embeds=y).last_hidden_state * w).sum().backward()
    (fast(x, mask, y) * w).sum().backward()
    gh = dict(hf.named_parameters())
    for name, p in fast.named_parameters():
        ref = gh[name].grad
        if ref is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        assert (p.grad - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item()), name


def test_decode_step_matches_teacher_forcing():
    _, fast = _pair()
    fast.eval()
    x, y, mask = _inputs(b=3, n=12, t=5)
    enc = fast.encode(x, mask)
    full = fast.decode(y, enc, mask)  # [B, T, d]
    cross, cache = fast.cross_kv(enc), None
    for pos in range(y.shape[1]):
        h, cache = fast.decode_step(y[:, pos: pos + 1], pos, cross, mask, cache)
        assert (h[:, 0] - full[:, pos]).abs().max() < 1e-5


def test_dropout_in_training_and_none_in_eval():
    _, fast = _pair(dropout=0.3)
    x, y, mask = _inputs(b=2, n=8, t=3)
    fast.eval()
    assert torch.equal(fast(x, mask, y), fast(x, mask, y))
    fast.train()
    assert not torch.equal(fast(x, mask, y), fast(x, mask, y))


def test_gated_feed_forward_is_refused():
    cfg = T5Config(vocab_size=1, d_model=8, d_ff=8, num_heads=2, d_kv=4, num_layers=1, feed_forward_proj="gated-gelu")
    with pytest.raises(ValueError, match="backbone: hf_t5"):
        FastT5Model(cfg)


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="backbone must be one of"):
        GenRec([4, 4], backbone="t5x")


@pytest.mark.parametrize("constrained", [True, False])
def test_genrec_backbones_same_init_and_same_beams(constrained):
    vocab = [6, 5, 4]
    models = {}
    for bb in ("hf_t5", "fast"):
        torch.manual_seed(3)
        models[bb] = GenRec(vocab, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=2,
                            num_decoder_layers=2, dropout=0.1, backbone=bb).eval()
    ref, fast = models["hf_t5"], models["fast"]
    sd_r, sd_f = ref.state_dict(), fast.state_dict()
    assert list(sd_r) == list(sd_f) and all(torch.equal(sd_r[k], sd_f[k]) for k in sd_r)
    with torch.no_grad():
        for m in (ref, fast):  # well separated scores (no ties), same values in both
            torch.manual_seed(4)
            for e in m.code_emb:
                e.weight.normal_(0.0, 1.0)
    table = _random_table(vocab, 60, 0)
    trie = SIDTrie(table, vocab)
    g = torch.Generator().manual_seed(5)
    seq = torch.randint(1, 61, (7, 5), generator=g)
    seq[0, :3] = 0
    emb = ref.embed_codes(table[seq])
    enc_emb, enc_mask = ref.encoder_inputs(emb, seq > 0)
    items_r, scores_r = ref.beam_search(enc_emb, enc_mask, trie, 20, constrained=constrained)
    items_f, scores_f = fast.beam_search(enc_emb, enc_mask, trie, 20, constrained=constrained)
    assert torch.equal(items_r[:, :10], items_f[:, :10])
    fin = torch.isfinite(scores_r)
    assert torch.equal(fin, torch.isfinite(scores_f))
    assert (scores_r[fin] - scores_f[fin]).abs().max() < 1e-5


def test_training_with_dropout_is_hf_for_the_same_seed():
    # The dropout masks are drawn in HF's order and shapes, so one seed gives the same training forward
    # pass (and so the same training run up to rounding): quality cannot differ by construction.
    hf, fast = _pair(dropout=0.1)
    x, y, mask = _inputs(b=4, n=20, t=4)
    hf.train(), fast.train()
    torch.manual_seed(7)
    a = hf(inputs_embeds=x, attention_mask=mask, decoder_inputs_embeds=y).last_hidden_state
    torch.manual_seed(7)
    b = fast(x, mask, y)
    assert (a - b).abs().max() < 1e-5


def test_same_seed_same_training_losses_both_backbones():
    # Five AdamW steps with dropout on: the fast backbone follows the reference's trajectory (rounding only).
    vocab, losses = [8, 8, 5], {}
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(k, (16, 6), generator=g) for k in vocab], -1)  # [B, H+1, C]
    for bb in ("hf_t5", "fast"):
        torch.manual_seed(11)
        m = GenRec(vocab, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=2, num_decoder_layers=2,
                   dropout=0.1, backbone=bb).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        out = []
        for _ in range(5):
            enc_emb, enc_mask = m.encoder_inputs(m.embed_codes(codes[:, :-1]), torch.ones(16, 5, dtype=torch.bool))
            logits = m(enc_emb, enc_mask, m.decoder_inputs(m.embed_codes(codes[:, -1])))
            loss = sum(torch.nn.functional.cross_entropy(lg, codes[:, -1, j]) for j, lg in enumerate(logits))
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[bb] = out
    assert losses["hf_t5"][0] != losses["hf_t5"][-1]
    assert max(abs(a - b) for a, b in zip(losses["hf_t5"], losses["fast"])) < 1e-4


def test_bits_dropout_rate_scale_gradient_and_seed():
    from diger.models.fast_t5 import bits_dropout, keep_mask

    torch.manual_seed(0)
    keep = keep_mask((400, 500), 0.1, torch.device("cpu"))
    # 200,000 Bernoulli(0.9) draws: the drop rate is 0.1 within 5 standard errors (0.00067 each)
    assert abs((~keep).float().mean().item() - 0.1) < 5 * (0.1 * 0.9 / keep.numel()) ** 0.5
    # rows and columns carry no pattern (the 16-bit chunks of one word are independent)
    assert (~keep).float().mean(0).std() < 0.03 and (~keep).float().mean(1).std() < 0.03
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(1)
    y = bits_dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75) and torch.equal(x.grad, kept.float() / 0.75)
    torch.manual_seed(1)
    assert torch.equal(bits_dropout(x, 0.25), y)  # same seed, same masks
    assert bits_dropout(x, 0.0) is x
    with pytest.raises(ValueError, match="p must be in"):
        bits_dropout(x, 1.0)


def test_dropout_impl_bits_trains_fast_only():
    hf, fast = _pair(dropout=0.1)
    x, y, mask = _inputs(b=2, n=8, t=3)
    fast.dropout_impl = "bits"
    fast.eval()  # inference: no dropout, the same function as torch's dropout_impl
    ref = fast(x, mask, y)
    fast.dropout_impl = "torch"
    assert torch.equal(ref, fast(x, mask, y))
    fast.dropout_impl = "bits"
    fast.train()
    torch.manual_seed(2)
    a = fast(x, mask, y)
    torch.manual_seed(2)
    assert torch.equal(a, fast(x, mask, y)) and not torch.equal(a, ref)
    with pytest.raises(ValueError, match="needs backbone: fast"):
        GenRec([4, 4], backbone="hf_t5", dropout_impl="bits")
    with pytest.raises(ValueError, match="dropout_impl must be one of"):
        GenRec([4, 4], dropout_impl="fastest")
