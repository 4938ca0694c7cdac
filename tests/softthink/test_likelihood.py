"""Soft-token maths: Gumbel density, clamp gradients, mixtures, filtering, discrete replay."""
import math

import pytest
import torch

from softthink.replay import replay_loglik
from softthink.rollout import SoftRollout
from softthink.noise import GumbelNoise
from softthink.sampling import filter_distribution, filter_sparse, gumbel_density_mean, mix_embeddings, soft_token_loglik
from softthink.testing import base_config, left_padded_prompts, make_model, make_tokenizer

torch.set_num_threads(1)
CLAMP = (-1.5, 3.0)


def gumbel_soft_token(probs, k, tau, noise_scale=1.0, clamp=CLAMP, eps=1e-6, generator=None):
    """The rollout's own Gumbel soft token (:meth:`softthink.noise.GumbelNoise.sample`) with these settings."""
    cfg = base_config(gumbel_tau=tau, noise_scale=noise_scale, gumbel_clamp=clamp, logp_eps=eps)
    return GumbelNoise(cfg).sample(probs, k, generator)


def test_density_equals_torch_gumbel_when_clamp_inactive():
    torch.manual_seed(0)
    lk = torch.randn(6, 5)
    lp = torch.log(torch.softmax(lk, -1) + 1e-6)
    g = torch.empty(6, 5).uniform_(-1.0, 2.5)  # inside the clamp range
    y = lp + g
    ell = soft_token_loglik(lk, y, torch.ones(6, 5, dtype=torch.bool), clamp=CLAMP, eps=1e-6,
                            mask_threshold=-3.0)
    ref_all = torch.distributions.Gumbel(lp, torch.ones_like(lp)).log_prob(y)
    m = lp > -3.0
    ref = (ref_all * m).sum(-1) / m.sum(-1)
    assert m.sum() < m.numel()  # the -3 mask really drops some ids here
    torch.testing.assert_close(ell, ref, atol=1e-5, rtol=1e-5)


def test_density_with_noise_scale_uses_the_scale():
    torch.manual_seed(1)
    lp = torch.log_softmax(torch.randn(4, 5), -1)
    y = lp + 0.5 * torch.empty(4, 5).uniform_(-1, 2)
    ell = gumbel_density_mean(lp, y, torch.ones(4, 5, dtype=torch.bool), clamp=CLAMP, noise_scale=0.5)
    ref = torch.distributions.Gumbel(lp, torch.full_like(lp, 0.5)).log_prob(y).mean(-1)
    torch.testing.assert_close(ell, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="noise_scale"):
        gumbel_density_mean(lp, y, torch.ones(4, 5, dtype=torch.bool), clamp=CLAMP, noise_scale=0.0)


def test_density_gradient_inside_and_zero_where_clamped():
    lp = torch.log_softmax(torch.tensor([2.0, 1.0, 0.5, 0.0]), -1).detach().requires_grad_(True)
    g = torch.tensor([0.7, -0.4, -2.5, 4.0])  # last two leave the clamp range [-1.5, 3]
    y = (lp + g).detach()
    mask = torch.ones(4, dtype=torch.bool)
    ell = gumbel_density_mean(lp, y, mask, clamp=CLAMP)
    ell.backward()
    expected = torch.tensor([(1 - math.exp(-0.7)) / 4, (1 - math.exp(0.4)) / 4, 0.0, 0.0])
    torch.testing.assert_close(lp.grad, expected, atol=1e-6, rtol=1e-5)
    # all coordinates clamped -> no gradient reaches the logits at all
    lk = torch.randn(5, requires_grad=True)
    lpk = torch.log(torch.softmax(lk, -1) + 1e-6)
    y2 = (lpk + 5.0).detach()
    soft_token_loglik(lk, y2, torch.ones(5, dtype=torch.bool), clamp=CLAMP, eps=1e-6, mask_threshold=-30).backward()
    assert torch.count_nonzero(lk.grad) == 0


def test_mixture_tau_to_zero_without_noise_is_top1_embedding():
    emb = torch.nn.Embedding(50, 8)
    probs = torch.softmax(torch.randn(3, 50) * 2, -1)
    st = gumbel_soft_token(probs, 5, tau=1e-4, noise_scale=0.0)
    assert (st.ids[:, 0] == probs.argmax(-1)).all()
    mixed = mix_embeddings(emb, st.ids, st.w)
    torch.testing.assert_close(mixed, emb(st.ids[:, 0]), atol=1e-6, rtol=0)


def test_gumbel_max_top1_frequency_matches_renormalised_probs():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05] + [0.0] * 6]).expand(40000, 10).contiguous()
    st = gumbel_soft_token(probs, 4, tau=0.1, noise_scale=1.0, clamp=None, eps=0.0,
                           generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(st.ids[:, 0], minlength=10)[:4].float() / 40000
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert ((freq - p).abs() <= 3 * (p * (1 - p) / 40000).sqrt() + 1e-3).all()
    assert (st.w.sum(-1) - 1).abs().max() < 1e-5
    assert (st.w[:, :-1] >= st.w[:, 1:]).all()  # sorted by weight


def test_soft_token_records_support_and_clamped_noise():
    probs = filter_distribution(torch.tensor([[5.0, 4.0, 0.0, -1.0, -9.0, -9.0]]), 1.0, top_k=5, top_p=0.95)
    st = gumbel_soft_token(probs.expand(1000, 6), 5, tau=0.1, generator=torch.Generator().manual_seed(0))
    kept = probs[0] > 0
    assert st.support.sum(-1).eq(int(kept.sum())).all()
    pk = probs[0][st.ids]
    pk = pk / pk.sum(-1, keepdim=True)
    g = st.y - torch.log(pk + 1e-6)
    assert g.min() >= -1.5 - 1e-5 and g.max() <= 3.0 + 1e-5


def test_filter_top_k_then_top_p():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]]))
    p = filter_distribution(logits, 1.0, top_k=4, top_p=0.7)
    # top-4 renormalised: .4/.96, .3/.96, .2/.96, .06/.96; mass before the 3rd = .7/.96 = .729 >= .7 -> dropped
    torch.testing.assert_close(p, torch.tensor([[0.4 / 0.7, 0.3 / 0.7, 0.0, 0.0, 0.0]]))
    full = filter_distribution(logits, 1.0, top_k=0, top_p=0.7)
    torch.testing.assert_close(full, p)
    vals, ids = filter_sparse(logits, 1.0, top_k=4, top_p=0.7)
    torch.testing.assert_close(torch.zeros(1, 5).scatter(-1, ids, vals), p)


def test_replay_discrete_positions_are_token_logprobs():
    tok, model = make_tokenizer(), make_model(seed=3)
    ids, mask = left_padded_prompts(tok, ["w5 w6 w7", "w8"])
    cfg = base_config(soft_thinking=False, top_k=0, top_p=1.0, after_thinking_top_k=0, after_thinking_top_p=1.0,
                      temperature=0.7, max_completion_length=8)
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(0))
    ell, ent = replay_loglik(model, ids, mask, traj, cfg, compute_entropy=True)
    full_ids = torch.cat([ids, traj.tok], 1)
    full_mask = torch.cat([mask, traj.resp_mask.long()], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=pos).logits / 0.7
    P = ids.shape[1]
    lsm = torch.log_softmax(logits[:, P - 1:-1], -1)
    ref = lsm.gather(-1, traj.tok[..., None]).squeeze(-1) * traj.resp_mask
    torch.testing.assert_close(ell, ref, atol=1e-5, rtol=1e-5)
    ref_ent = -(lsm.exp() * lsm).sum(-1) * traj.resp_mask
    torch.testing.assert_close(ent, ref_ent, atol=1e-4, rtol=1e-4)
