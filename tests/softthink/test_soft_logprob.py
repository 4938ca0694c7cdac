"""soft_logprob (issue 17): how a soft step is scored in the loss; every rule keeps replay = rollout at step 0."""
import pytest
import torch
import torch.nn.functional as F

from softthink.noise import make_noise, position_loglik
from softthink.testing import base_config, make_model, make_tokenizer
from softthink.trainer import SoftGRPOTrainer
from tests.softthink.helpers import frac_low_ids_reward

torch.set_num_threads(1)
PROMPTS = [f"w{5 + i} w{20 + i} w{40 + i}" for i in range(8)]


def _inputs():
    g = torch.Generator().manual_seed(0)
    scaled = torch.randn(6, 40, generator=g, requires_grad=True)
    ids = torch.stack([torch.randperm(40, generator=g)[:5] for _ in range(6)])
    support = torch.ones(6, 5, dtype=torch.bool)
    support[0, 3:] = False  # ids the filters dropped at rollout
    y = torch.sort(torch.randn(6, 5, generator=g), dim=-1, descending=True).values  # sorted like the record
    y[1] = torch.tensor([9.0, -9.0, -9.0, -9.0, -9.0])  # a nearly one-hot mixture
    is_soft = torch.tensor([True, True, True, True, False, True])
    return scaled, ids[:, 0].clone(), ids, y, support, is_soft


def test_token_rule_is_the_top_id_log_prob_over_the_kept_support():
    scaled, tok, ids, y, support, is_soft = _inputs()
    noise = make_noise(base_config(soft_logprob="token"))
    ell = position_loglik(noise, scaled, tok, ids, y, support, is_soft)
    lk = scaled.gather(-1, ids).masked_fill(~support, float("-inf"))
    want = torch.where(is_soft, lk[:, 0] - lk.logsumexp(-1), scaled.log_softmax(-1).gather(-1, tok[:, None])[:, 0])
    torch.testing.assert_close(ell, want)
    ell.sum().backward()
    assert scaled.grad[0, ids[0, 3:]].abs().sum() == 0  # dropped ids get no gradient
    assert (scaled.grad[4] != 0).sum() == 40  # the discrete row: full log-softmax


def test_hybrid_uses_the_density_only_where_the_mixture_is_mixed():
    scaled, tok, ids, y, support, is_soft = _inputs()
    cfg = dict(gumbel_tau=1.0, soft_logprob_threshold=0.99)
    dens = position_loglik(make_noise(base_config(soft_logprob="gumbel_density", **cfg)), scaled, tok, ids, y,
                           support, is_soft)
    tokr = position_loglik(make_noise(base_config(soft_logprob="token", **cfg)), scaled, tok, ids, y, support, is_soft)
    hyb = position_loglik(make_noise(base_config(soft_logprob="hybrid", **cfg)), scaled, tok, ids, y, support, is_soft)
    w_max = F.softmax(y / 1.0, -1).amax(-1)
    assert w_max[1] > 0.99 and (w_max[[0, 2, 3, 5]] < 0.99).all()
    torch.testing.assert_close(hyb, torch.where(w_max < 0.99, dens, tokr))
    assert not torch.allclose(dens[1], tokr[1])


@pytest.mark.parametrize("mode", ["gumbel_density", "token", "hybrid"])
@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_every_rule_replays_the_rollout_and_starts_on_policy(tmp_path, mode, noise):
    cfg = base_config(num_generations=4, generation_batch_size=8, per_device_train_batch_size=8,
                      max_completion_length=10, max_think_tokens=6, seed=1, save_model=False, output_dir=str(tmp_path),
                      soft_logprob=mode, soft_noise=noise, gumbel_tau=0.5, learning_rate=1e-2, max_steps=1)
    tr = SoftGRPOTrainer(make_model(seed=0), make_tokenizer(), cfg, [{"prompt": p} for p in PROMPTS],
                         reward_funcs=[frac_low_ids_reward])
    m = tr.step()
    assert m["soft/frac_soft_steps"] > 0.3
    assert m["soft/rollout_replay_abs_diff"] < 1e-5 and m["token/rollout_replay_abs_diff"] < 1e-5
    assert m["clip_ratio/region_mean"] == 0.0  # ratio 1 at step 0: no clipping


def test_bad_soft_logprob_values_are_refused():
    with pytest.raises(ValueError, match="soft_logprob"):
        base_config(soft_logprob="density")
    with pytest.raises(ValueError, match="soft_logprob_threshold"):
        base_config(soft_logprob_threshold=0.0)


def test_soft_logprob_without_soft_thinking_warns():
    cfg = base_config(soft_thinking=False, soft_logprob="token")
    with pytest.warns(UserWarning, match="soft_logprob='token' has no effect with soft_thinking: false"):
        SoftGRPOTrainer(make_model(seed=0), make_tokenizer(), cfg, [{"prompt": p} for p in PROMPTS],
                        reward_funcs=[frac_low_ids_reward])
