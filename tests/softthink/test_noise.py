"""Noise variants (softthink/noise.py): densities equal torch.distributions; rollout inputs == replay inputs."""
import pytest
import torch

from softthink.noise import NOISE_VARIANTS, make_noise
from softthink.replay import build_replay_inputs, replay_loglik
from softthink.rollout import SoftRollout
from softthink.testing import base_config, left_padded_prompts, make_model, make_tokenizer

torch.set_num_threads(1)

PROMPTS = ["w5 w6 w7 w8 w9", "w10 w11", "w12 w13 w14 w15 w16", "w20 w21 w22 w23 w24"]
DENSITY_VARIANTS = ["gumbel", "dirichlet", "gaussian", "embedding_gaussian"]


def _lk(seed=0, shape=(6, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 1.5


def test_gumbel_density_equals_torch_gumbel():
    cfg = base_config(gumbel_clamp=None, density_mask_threshold=-1e9, logp_eps=0.0, noise_scale=0.7)
    noise = make_noise(cfg)
    lk = _lk()
    lp = torch.log_softmax(lk, -1)
    y = lp + 0.7 * torch.distributions.Gumbel(0.0, 1.0).sample(lp.shape)
    ref = torch.distributions.Gumbel(lp, 0.7).log_prob(y).mean(-1)
    got = noise.loglik(lk, y, torch.ones_like(y, dtype=torch.bool))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_dirichlet_density_equals_torch_dirichlet_on_the_support():
    cfg = base_config(soft_noise="dirichlet", dirichlet_alpha=2.5)
    noise = make_noise(cfg)
    lk = _lk(1)
    support = torch.ones(6, 5, dtype=torch.bool)
    support[0, 3:] = False  # a row whose top-p support is 3 ids
    probs = torch.softmax(lk, -1) * support
    probs = probs / probs.sum(-1, keepdim=True)
    st = noise.sample(probs, 5, torch.Generator().manual_seed(3))  # ids sorted by weight
    lk_sorted = lk.gather(-1, st.ids)
    got = noise.loglik(lk_sorted, st.y, st.support)
    for b in range(6):
        s = st.support[b]
        conc = 2.5 * torch.softmax(lk_sorted[b][s], -1)
        ref = torch.distributions.Dirichlet(conc).log_prob(st.w[b][s] / st.w[b][s].sum())
        torch.testing.assert_close(got[b], ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(st.w, noise.weights(st.y))
    assert (st.w[~st.support] == 0).all() and torch.allclose(st.w.sum(-1), torch.ones(6))


def test_gaussian_topk_density_equals_torch_normal():
    cfg = base_config(soft_noise="gaussian", gaussian_sigma=0.05, density_mask_threshold=-1e9)
    noise = make_noise(cfg)
    lk = _lk(2)
    probs = torch.softmax(lk, -1)
    st = noise.sample(probs, 5, torch.Generator().manual_seed(4))
    lk_sorted = lk.gather(-1, st.ids)
    p = torch.softmax(lk_sorted, -1)
    ref = torch.distributions.Normal(p, 0.05).log_prob(st.y).mean(-1)
    torch.testing.assert_close(noise.loglik(lk_sorted, st.y, st.support), ref, atol=1e-5, rtol=1e-5)
    # the mask keeps only ids with log p > threshold
    cfg2 = base_config(soft_noise="gaussian", gaussian_sigma=0.05, density_mask_threshold=-1.5, density_reduce="sum")
    m = torch.log(p + cfg2.logp_eps) > -1.5
    ref2 = (torch.distributions.Normal(p, 0.05).log_prob(st.y) * m).sum(-1)
    torch.testing.assert_close(make_noise(cfg2).loglik(lk_sorted, st.y, st.support), ref2, atol=1e-5, rtol=1e-5)
    assert torch.equal(st.w, noise.weights(st.y))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_embedding_gaussian_density_equals_torch_normal(reduce):
    cfg = base_config(soft_noise="embedding_gaussian", density_reduce=reduce)
    noise = make_noise(cfg)
    g = torch.Generator().manual_seed(5)
    lk_roll, lk_new = _lk(3), _lk(4)  # rollout-time and current logits of the same ids
    E = torch.randn(6, 5, 8, generator=g)  # embeddings of the K ids, D = 8
    p_roll = torch.softmax(lk_roll, -1)
    sigma = 0.3
    n = sigma * torch.randn(6, 8, generator=g)
    h = (p_roll[..., None] * E).sum(-2) + n  # the fed input
    mu = (torch.softmax(lk_new, -1)[..., None] * E).sum(-2)
    ref = torch.distributions.Normal(mu, sigma).log_prob(h).sum(-1)
    if reduce == "mean":
        ref = ref / 8
    got = noise.loglik(lk_new, p_roll, torch.ones(6, 5, dtype=torch.bool), e_ids=E, emb_noise=n,
                       sigma=torch.full((6,), sigma))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


def test_none_variant_has_no_density_and_bad_name_is_rejected():
    with pytest.raises(ValueError, match="no density"):
        make_noise(base_config(soft_noise="none")).loglik(_lk(), _lk(), torch.ones(6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="soft_noise='poisson'"):
        base_config(soft_noise="poisson")
    with pytest.raises(ValueError, match="gaussian_sigma"):
        base_config(gaussian_sigma=0.0)
    assert set(NOISE_VARIANTS) == {"gumbel", "dirichlet", "gaussian", "embedding_gaussian", "none"}


def _capture_rollout_inputs(model):
    """Record the embeddings the rollout feeds at each decoding step (forward pre-hook)."""
    fed = []

    def hook(mod, args, kwargs):
        x = kwargs.get("inputs_embeds")
        if x is not None:
            fed.append(x.detach().clone())

    return fed, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("variant", NOISE_VARIANTS)
def test_rollout_inputs_equal_replay_inputs(variant):
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(soft_noise=variant, max_completion_length=16, top_k=8, top_p=0.9, soft_top_k=4,
                      gumbel_tau=0.5)
    ids, mask = left_padded_prompts(tok, PROMPTS)
    fed, handle = _capture_rollout_inputs(model)
    try:
        traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(7))
    finally:
        handle.remove()
    L = traj.tok.shape[1]
    assert traj.is_soft.sum() >= 8
    assert len(fed) == L - 1  # one decoding forward per fed response position
    x, _, _ = build_replay_inputs(model, ids, mask, traj, cfg)
    resp = x[:, ids.shape[1]:]
    for t in range(L - 1):
        live = traj.resp_mask[:, t]
        assert torch.equal(fed[t][live, 0], resp[live, t]), (variant, t)
    if variant == "embedding_gaussian":
        assert traj.emb_noise.shape[-1] == 32 and (traj.emb_noise[traj.is_soft].abs().sum(-1) > 0).all()
        assert (traj.emb_noise[~traj.is_soft] == 0).all()
    if make_noise(cfg).has_density:
        ell, _ = replay_loglik(model, ids, mask, traj, cfg)
        diff = (ell - traj.rollout_ell).abs()[traj.resp_mask]
        assert torch.isfinite(ell[traj.resp_mask]).all()
        assert diff.max().item() < 1e-4, (variant, diff.max().item())
    else:
        with pytest.raises(ValueError, match="density"):
            replay_loglik(model, ids, mask, traj, cfg)


@pytest.mark.parametrize("variant", DENSITY_VARIANTS)
def test_each_density_variant_trains_one_step(variant, tmp_path):
    from softthink.trainer import SoftGRPOTrainer

    tok, model = make_tokenizer(), make_model(seed=1)
    cfg = base_config(soft_noise=variant, max_steps=1, output_dir=str(tmp_path), save_model=False,
                      learning_rate=1e-3, max_completion_length=10, beta=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    rew = lambda prompts, completions, completion_ids, **kw: [float(i % 2) for i in range(len(prompts))]  # noqa
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS * 2], reward_funcs=[rew])
    m = tr.step()
    assert m["soft/frac_soft_steps"] > 0 and torch.isfinite(torch.tensor(m["loss"]))
    assert m["soft/rollout_replay_abs_diff"] < 1e-4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
