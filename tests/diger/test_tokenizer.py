"""Tokenizer pieces: k-means init, Sinkhorn, quantiser modes, decay strategies, SID table (issues #2, #4)."""
import math

import numpy as np
import pytest
import torch

from diger.decay import FrqUD, SDUD, build_decay
from diger.kmeans import kmeans, residual_kmeans
from diger.quantizer import VectorQuantizer
from diger.sinkhorn import sinkhorn_assign
from diger.tokenizer import (RQTokenizer, SemanticIDCollisionError, add_collision_suffix, build_sid_table,
                             codebook_stats, pretrain_tokenizer)


def _blobs(n=400, d=8, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 5
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * 0.3).astype(np.float32)


def test_faiss_kmeans_matches_assignment_and_residual_levels():
    x = _blobs()
    c, a = kmeans(x, 4, seed=1)
    d = ((x[:, None] - c[None]) ** 2).sum(-1)
    assert np.array_equal(a, d.argmin(1))
    books, codes = residual_kmeans(x, [4, 3], seed=1)
    c0, a0 = kmeans(x, 4, seed=1)
    assert np.allclose(books[0], c0) and np.array_equal(codes[:, 0], a0)
    c1, a1 = kmeans(x - c0[a0], 3, seed=2)
    assert np.allclose(books[1], c1) and np.array_equal(codes[:, 1], a1)
    with pytest.raises(ValueError, match="k <= n"):
        kmeans(x[:3], 4)


def test_tokenizer_kmeans_init_sets_codebooks_to_centroids():
    torch.manual_seed(0)
    x = torch.from_numpy(_blobs(300, 16))
    tok = RQTokenizer(16, [12], 6, [5, 4])
    tok.kmeans_init(x, seed=3)
    z = tok.encoder(x).detach().numpy()
    books, _ = residual_kmeans(z, [5, 4], seed=3)
    for vq, b in zip(tok.quantizers, books):
        assert np.allclose(vq.codebook.detach().numpy(), b, atol=1e-5)


def test_sinkhorn_balances_a_skewed_set_and_is_scale_invariant():
    torch.manual_seed(0)
    # 256 points all closest to code 0: plain argmin collapses, Sinkhorn spreads them.
    r = torch.randn(256, 4) * 0.1
    e = torch.randn(8, 4)
    e[0] = 0.0
    d = torch.cdist(r, e) ** 2
    assert torch.bincount(d.argmin(1), minlength=8).max() == 256
    codes = sinkhorn_assign(d, epsilon=0.003, iters=100)
    counts = torch.bincount(codes, minlength=8)
    assert counts.max() <= 40 and counts.min() >= 24  # near 32 each
    assert torch.equal(codes, sinkhorn_assign(d * 7.5, epsilon=0.003, iters=100))


def test_frqud_mask_example_from_official_tests():
    f = FrqUD(1, 4, rho=1.5)
    f.usage_ema[0] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    s = f.noise_scale(0, torch.tensor([0, 1]), training=True)
    assert s.tolist() == [1.0, 0.0]
    assert f.noise_scale(0, torch.tensor([0, 1]), training=False).tolist() == [0.0, 0.0]
    f.observe(0, torch.tensor([1, 1, 1, 1]))
    assert torch.allclose(f.usage_ema[0], torch.tensor([0.693, 0.109, 0.099, 0.099]))
    with pytest.raises(ValueError, match="rho"):
        FrqUD(1, 4, rho=0.0)


@pytest.mark.parametrize("loss,lam,expected", [(5.48, 1.7, math.sqrt(5.48) - 1.7), (2.0, 1.7, 0.0)])
def test_sdud_stationary_point(loss, lam, expected):
    sig = torch.linspace(0, 5, 50001)
    obj = SDUD.ud_objective(torch.tensor(loss), sig, lam)
    assert sig[obj.argmin()].item() == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("mode", ["ste", "det_softmax_st", "gumbel", "frqud", "sdud", "sdud_frqud"])
def test_eval_mode_assigns_argmin_in_every_mode(mode):
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).eval()
    r = torch.randn(50, 4)
    decay = build_decay(mode, 1, 16, {"frq_rho": 0.1})
    out = vq.assign(r, mode=mode, tau=2.0, decay=decay)
    assert torch.equal(out.index, vq.distances(r).argmin(-1))
    assert torch.allclose(out.q, vq.codebook[out.index])


def test_gumbel_mode_is_noisy_in_training_and_gives_codebook_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).train()
    r = torch.randn(500, 4)
    out = vq.assign(r, mode="gumbel", tau=2.0, decay=build_decay("gumbel", 1, 16),
                    generator=torch.Generator().manual_seed(0))
    assert (out.index != out.c_det).any()
    (out.p_soft * torch.randn(500, 16)).sum().backward()
    assert vq.codebook.grad.abs().sum() > 0


def test_noise_mult_scales_the_gumbel_noise_against_the_distance_gaps():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).train()
    r = torch.randn(500, 4)
    d = vq.distances(r).sort(-1).values
    gap = (d[:, 1] - d[:, 0]).min().item()

    def sampled(mult):
        return vq.assign(r, mode="gumbel", decay=build_decay("gumbel", 1, 16), noise_mult=mult,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled(0.0).index, sampled(0.0).c_det)
    assert (sampled(0.0).noise_scale == 0).all()
    # Gumbel noise differences stay below ~20 with these 8000 draws: 20 * mult < gap keeps every argmin.
    assert torch.equal(sampled(gap / 40).index, sampled(gap / 40).c_det)
    assert sampled(gap / 40).noise_scale.max().item() == pytest.approx(gap / 40)
    assert (sampled(1.0).index != sampled(1.0).c_det).float().mean() > 0.3


def test_ste_mode_codebook_learns_from_vq_loss_only():
    vq = VectorQuantizer(8, 3).train()
    r = torch.randn(20, 3, requires_grad=True)
    out = vq.assign(r, mode="ste")
    out.q.sum().backward(retain_graph=True)
    assert vq.codebook.grad is None or vq.codebook.grad.abs().sum() == 0
    assert torch.allclose(r.grad, torch.ones_like(r))
    out.vq_loss.sum().backward()
    assert vq.codebook.grad.abs().sum() > 0


def test_collision_suffix_unique_and_in_item_order():
    prefix = torch.tensor([[0, 1], [2, 2], [0, 1], [0, 1], [2, 2], [1, 0]])
    full = add_collision_suffix(prefix, 4)
    assert full[:, 2].tolist() == [0, 0, 1, 2, 1, 0]
    assert torch.unique(full, dim=0).shape[0] == 6
    table = build_sid_table(prefix, 4)
    assert table.shape == (7, 3) and (table[0] == -1).all()
    with pytest.raises(SemanticIDCollisionError, match="3 items share"):
        add_collision_suffix(prefix, 2)


def test_codebook_stats_values():
    sids = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    st = codebook_stats(sids, [2, 2], previous=sids.clone())
    l1 = st["levels"][0]
    assert l1["used"] == 2 and l1["dead"] == 0
    assert l1["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert l1["balance"] == pytest.approx(0.75)
    assert st["collision_rate"] == pytest.approx(0.25) and st["max_collision_group"] == 2
    assert st["changed_frac"] == 0.0


def test_pretrain_then_unique_sids_survive_save_load(tmp_path):
    torch.manual_seed(0)
    x = torch.from_numpy(_blobs(200, 16, k=3))
    # duplicate items on purpose: identical embeddings must still get distinct SIDs
    x = torch.cat([x, x[:10]])
    tok = RQTokenizer(16, [16], 8, [8, 8])
    info = pretrain_tokenizer(tok, x, epochs=20, eval_every=10, seed=0)
    assert 0 <= info["collision_rate"] < 1
    table = build_sid_table(tok.get_codes(x), 64)
    assert torch.unique(table[1:], dim=0).shape[0] == x.shape[0]
    assert table[1:, -1].max() < 64
    torch.save({"sid_table": table}, tmp_path / "t.pth")
    assert torch.equal(torch.load(tmp_path / "t.pth", weights_only=True)["sid_table"], table)
    # deterministic: same catalogue -> same table
    assert torch.equal(build_sid_table(tok.get_codes(x), 64), table)


def test_rqkmeans_tokenizer_reproduces_faiss_residual_kmeans():
    x = _blobs(300, 12, k=6, seed=4)
    tok = RQTokenizer(12, [], 0, [6, 4], kind="rqkmeans")
    tok.kmeans_init(torch.from_numpy(x), seed=7)
    _, codes = residual_kmeans(x, [6, 4], seed=7)
    assert torch.equal(tok.get_codes(torch.from_numpy(x), sinkhorn=False), torch.from_numpy(codes))
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        RQTokenizer(12, [], 0, [6], kind="pq")


def test_decay_state_survives_state_dict_round_trip():
    a = build_decay("sdud_frqud", 2, 8, {"sdud_sigma0": 1.3})
    a.observe(0, torch.tensor([1, 1, 2]))
    b = build_decay("sdud_frqud", 2, 8, {})
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.usage_ema, b.usage_ema) and torch.equal(a.sdud.sigma, b.sdud.sigma)
    g = build_decay("gumbel", 1, 8, {"noise_schedule": {"type": "linear", "v0": 1.0, "v_end": 0.0, "total": 10}})
    for _ in range(4):
        g.step()
    h = build_decay("gumbel", 1, 8, {"noise_schedule": {"type": "linear", "v0": 1.0, "v_end": 0.0, "total": 10}})
    h.load_state_dict(g.state_dict())
    assert h.noise_scale(0, torch.zeros(3, dtype=torch.long))[0].item() == pytest.approx(0.6)
