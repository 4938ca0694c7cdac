"""TIGER / DIGER on a synthetic RecBole dataset: shapes, beam search, gradient paths (issues #2, #4)."""
import pytest
import torch
import torch.nn.functional as F

from diger.testing import N_ITEMS, small_config


def _build(model, root, **extra):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from diger.quick_start import make_config, resolve_model

    cfg = make_config(model, "toy", None, small_config(root, **extra))
    init_seed(cfg["seed"], True)
    ds = create_dataset(cfg)
    train, valid, test = data_preparation(cfg, ds)
    net = resolve_model(model)(cfg, train._dataset)
    return cfg, net, train, test


def _batch(loader):
    return next(iter(loader))


@pytest.mark.parametrize("model", ["TIGER", "DIGER"])
def test_shapes_and_finite_loss(toy_root, model):
    cfg, net, train, test = _build(model, toy_root)
    assert net.sid_table.shape == (N_ITEMS + 1, 3)
    assert torch.unique(net.sid_table[1:], dim=0).shape[0] == N_ITEMS
    loss = net.calculate_loss(_batch(train))
    parts = loss if isinstance(loss, tuple) else (loss,)
    assert all(torch.isfinite(p) for p in parts)
    # untrained model: rec loss close to the uniform cross-entropy over each position's vocabulary
    uniform = sum(torch.log(torch.tensor(float(k))) for k in net.vocab_sizes) / len(net.vocab_sizes)
    assert abs(parts[0].item() - uniform.item()) < 0.5
    interaction = _batch(test)[0]
    scores = net.eval().full_sort_predict(interaction)
    assert scores.shape == (len(interaction), net.n_items)


def _exhaustive_logprob(net, interaction):
    """log p(SID(item) | history) for every item by teacher forcing: [B, n_items-1]."""
    enc_emb, enc_mask = net.encoder_embeddings(interaction[net.ITEM_SEQ])
    b = enc_emb.shape[0]
    out = []
    for item in range(1, net.n_items):
        codes = net.sid_table[item].expand(b, -1)
        dec = net.genrec.decoder_inputs(net.genrec.embed_codes(codes))
        logits = net.genrec(enc_emb, enc_mask, dec)
        out.append(sum(F.log_softmax(lg, -1).gather(1, codes[:, j:j + 1]).squeeze(1) for j, lg in enumerate(logits)))
    return torch.stack(out, 1)


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_equals_exhaustive_scoring(toy_root, use_cache):
    cfg, net, _, test = _build("TIGER", toy_root, num_beams=N_ITEMS)
    net.eval()
    inter = _batch(test)[0]
    enc_emb, enc_mask = net.encoder_embeddings(inter[net.ITEM_SEQ])
    items, scores = net.genrec.beam_search(enc_emb, enc_mask, net.trie, N_ITEMS, use_cache=use_cache)
    ref = _exhaustive_logprob(net, inter)
    ref_scores, ref_items = ref.sort(dim=1, descending=True)
    assert torch.allclose(scores, ref_scores, atol=1e-4)
    assert torch.equal(items, ref_items + 1)


def test_beam_search_valid_distinct_sorted_and_cache_agrees(toy_root):
    cfg, net, _, test = _build("TIGER", toy_root, num_beams=10)
    net.eval()
    inter = _batch(test)[0]
    enc_emb, enc_mask = net.encoder_embeddings(inter[net.ITEM_SEQ])
    items, scores = net.genrec.beam_search(enc_emb, enc_mask, net.trie, 10, use_cache=True)
    items2, scores2 = net.genrec.beam_search(enc_emb, enc_mask, net.trie, 10, use_cache=False)
    assert torch.equal(items, items2) and torch.allclose(scores, scores2, atol=1e-5)
    assert (items > 0).all() and (items < net.n_items).all()
    assert all(len(set(row.tolist())) == 10 for row in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    # dense scores: exactly the 10 beams are finite
    dense = net.full_sort_predict(inter)
    assert torch.equal(torch.isfinite(dense).sum(1), torch.full((len(inter),), 10))


def test_unconstrained_decoding_drops_invalid_beams(toy_root):
    cfg, net, _, test = _build("TIGER", toy_root, num_beams=12, constrained_decoding=False)
    net.eval()
    inter = _batch(test)[0]
    items, scores = net.beam_search(inter)
    valid = items > 0
    assert torch.isfinite(scores[valid]).all() and torch.isinf(scores[~valid]).all()
    assert (net.trie.lookup(net.sid_table[items.clamp_min(1)])[valid] == items[valid]).all()


def test_num_beams_below_topk_is_a_clear_error(toy_root):
    with pytest.raises(ValueError, match=r"num_beams \(5\) must be >= max\(topk\) \(10\)"):
        _build("TIGER", toy_root, num_beams=5)


def _codebook_grads(net, interaction, detach):
    net.zero_grad(set_to_none=True)
    rec, _, _ = net.loss_terms(interaction, detach_uses=frozenset(detach))
    rec.backward()
    return [q.codebook.grad for q in net.tokenizer.quantizers]


USES = ("history", "decoder", "target")


@pytest.mark.parametrize("keep", USES)
def test_true_e2e_each_use_alone_reaches_every_codebook_level(toy_root, keep):
    cfg, net, train, _ = _build("DIGER", toy_root, assign_mode="det_softmax_st", gumbel_tau=50.0)
    batch = _batch(train)
    grads = _codebook_grads(net, batch, detach=set(USES) - {keep})
    for g in grads:
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    none = _codebook_grads(net, batch, detach=set(USES))
    assert all(g is None or g.abs().sum() == 0 for g in none)


def test_historical_path_and_tiger_give_no_codebook_gradient(toy_root):
    _, net, train, _ = _build("DIGER", toy_root, gradient_path="historical")
    rec, _, _ = net.calculate_loss(_batch(train))
    rec.backward()
    assert all(q.codebook.grad is None or q.codebook.grad.abs().sum() == 0 for q in net.tokenizer.quantizers)
    _, tiger, train, _ = _build("TIGER", toy_root)
    tiger.calculate_loss(_batch(train)).backward()
    assert all(q.codebook.grad is None for q in tiger.tokenizer.quantizers)


def test_true_e2e_forward_equals_historical_cross_entropy(toy_root):
    """With the cached forward, L_sem + L_suf equals the 4-position mean CE on the cached SIDs."""
    _, net, train, _ = _build("DIGER", toy_root, dropout=0.0)
    batch = _batch(train)
    torch.manual_seed(0)
    rec, _, _ = net.calculate_loss(batch)
    ce = super(type(net), net).calculate_loss(batch)
    assert rec.item() == pytest.approx(ce.item(), abs=1e-5)


def test_refresh_semantic_ids_reports_codebook_statistics(toy_root):
    _, net, _, _ = _build("DIGER", toy_root)
    stats = net.refresh_semantic_ids()
    assert [lv["level"] for lv in stats["levels"]] == [1, 2]
    assert stats["changed_frac"] == 0.0  # nothing trained: same table
    assert all(1 <= lv["used"] <= 4 for lv in stats["levels"])


def test_historical_parity_options(toy_root):
    """historical: Sinkhorn-normalised logits, L_UD replaces the CE under SDUD, optional balance loss."""
    from diger.decay import SDUD

    _, net, train, _ = _build("DIGER", toy_root, gradient_path="historical", assign_mode="sdud", w_balance=0.1)
    assert net.assign_kw["logit_source"] == "sinkhorn_normalized"
    batch = _batch(train)
    parts = net.calculate_loss(batch)
    assert len(parts) == 4 and all(torch.isfinite(p) for p in parts)
    ce = super(type(net), net).calculate_loss(batch)
    expected = SDUD.ud_objective(ce, net.decay.sigma.mean(), 1.7)
    assert parts[0].item() == pytest.approx(expected.item(), rel=1e-3)
    parts[0].backward()
    assert net.decay.sigma.grad is not None and net.decay.sigma.grad.abs().sum() > 0


def test_tau_schedule_follows_training_steps(toy_root):
    _, net, _, _ = _build("DIGER", toy_root, gumbel_tau_schedule={"type": "linear", "v0": 2.0, "v_end": 1.0, "total": 10})
    assert net.current_tau() == 2.0
    for _ in range(5):
        net.on_step_end()
    assert net.current_tau() == pytest.approx(1.5)
    assert int(net.state_dict()["train_step"]) == 5


def test_tiger_with_published_semantic_ids(toy_root):
    """LETTER-style index -> fixed SID table (+ collision suffix); no item text needed."""
    import json

    from diger.testing import N_ITEMS

    index = {f"i{i}": [f"<a_{i % 3}>", f"<b_{(i // 3) % 2}>"] for i in range(N_ITEMS)}
    path = toy_root / "toy.index.json"
    path.write_text(json.dumps(index))
    _, net, train, test = _build("TIGER", toy_root, sid_table_file=str(path), item_emb_file=None, text_fields=["nope"],
                                 code_num=3)
    tokens = net.dataset_item_tokens
    for i in (1, 5, N_ITEMS):
        raw = int(tokens[i][1:])
        assert net.sid_table[i, :2].tolist() == [raw % 3, (raw // 3) % 2]
    assert torch.unique(net.sid_table[1:], dim=0).shape[0] == N_ITEMS
    assert torch.isfinite(net.calculate_loss(_batch(train)))
    with pytest.raises(ValueError, match="set code_levels: 2 and code_num > 2"):
        _build("TIGER", toy_root, sid_table_file=str(path), item_emb_file=None, code_num=2)


@pytest.mark.parametrize("model", ["TIGER", "DIGER"])
def test_enable_amp_trains_under_bf16_autocast(toy_root, model):
    # RecBole's enable_amp: the trainer runs the losses under torch.autocast (bf16 on CPU); weights stay fp32.
    import warnings

    from diger.trainer import GenRecTrainer

    cfg, net, train, _ = _build(model, toy_root, enable_amp=True)
    trainer = GenRecTrainer(cfg, net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = trainer._train_epoch(train, 0)
    assert all(torch.isfinite(torch.tensor(x)) for x in (loss if isinstance(loss, tuple) else (loss,)))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert any("no bf16 matrix instructions" in str(w.message) for w in caught)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = net.calculate_loss(_batch(train))
    parts = parts if isinstance(parts, tuple) else (parts,)
    assert all(p.dtype == torch.float32 for p in parts)  # losses computed in fp32 under autocast


def _rec_and_grads(net, interaction):
    torch.manual_seed(0)
    net.zero_grad(set_to_none=True)
    rec = net.loss_terms(interaction)[0]
    rec.backward()
    return rec.detach(), [q.codebook.grad.clone() for q in net.tokenizer.quantizers]


def test_target_use_cuts_or_scales_only_the_soft_label_gradient(toy_root):
    _, net, train, _ = _build("DIGER", toy_root, assign_mode="det_softmax_st", gumbel_tau=50.0)
    net.eval()  # no dropout: the calls below see the same forward pass
    batch = _batch(train)
    rec_full, g_full = _rec_and_grads(net, batch)
    net.target_use = "stop_gradient"
    rec_stop, g_stop = _rec_and_grads(net, batch)
    assert torch.equal(rec_stop, rec_full)  # the loss value is the paper's in every mode
    ref = _codebook_grads(net, batch, detach={"target"})
    assert all(torch.allclose(a, b) for a, b in zip(g_stop, ref))
    assert any(not torch.allclose(a, b) for a, b in zip(g_stop, g_full))
    net.target_use, net.target_use_weight = "weight", 0.25
    rec_w, g_w = _rec_and_grads(net, batch)
    assert torch.equal(rec_w, rec_full)
    for w, s, f in zip(g_w, g_stop, g_full):  # linear in the weight: the other uses' gradient + 0.25 x the target's
        torch.testing.assert_close(w, s + 0.25 * (f - s), rtol=1e-4, atol=1e-9)


def test_lr_id_latent_norm_scales_the_codebook_learning_rate(toy_root):
    cfg, net, _, _ = _build("DIGER", toy_root, lr_id=1e-3, lr_id_scale="latent_norm", lr_id_reference_norm=2.0)
    groups = {g["name"]: g for g in net.param_groups(cfg)}
    mean_norm = float(net._latents()[1:].norm(dim=-1).mean())
    assert groups["codebooks"]["lr"] == pytest.approx(1e-3 * mean_norm / 2.0, rel=1e-6)
    cfg, net, _, _ = _build("DIGER", toy_root, lr_id=1e-3)  # absolute (the paper) is the default
    assert {g["name"]: g for g in net.param_groups(cfg)}["codebooks"]["lr"] == 1e-3


@pytest.mark.parametrize("key,value", [("target_use", "half"), ("target_use_weight", -1.0),
                                       ("lr_id_scale", "relative"), ("lr_id_reference_norm", 0.0)])
def test_target_use_and_lr_id_scale_refuse_bad_values(toy_root, key, value):
    extra = {"target_use": "weight"} if key == "target_use_weight" else (
        {"lr_id_scale": "latent_norm"} if key == "lr_id_reference_norm" else {})
    with pytest.raises(ValueError, match=key):
        _build("DIGER", toy_root, **extra, **{key: value})
