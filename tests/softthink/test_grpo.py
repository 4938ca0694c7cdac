"""GRPO pieces: group advantages (NaN-aware), PPO clip / dual clip, k3 KL, token-mean loss normalised per step."""
import pytest
import torch

from softthink.grpo import group_advantages, k3_kl, loss_normalizer, policy_loss


def test_advantages_zero_mean_unit_std_and_equal_groups_zero():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3, 0.0, 0.5, 1.0, 0.25])
    a = group_advantages(r, 4).view(3, 4)
    torch.testing.assert_close(a.mean(-1), torch.zeros(3), atol=1e-6, rtol=0)
    assert (a[1] == 0).all()  # all-equal group: exactly zero
    torch.testing.assert_close(a[0].std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (0.5773503 + 1e-6), atol=1e-4, rtol=0)
    assert (group_advantages(r, 4, scale="none").view(3, 4)[0] == torch.tensor([0.5, -0.5, -0.5, 0.5])).all()


def test_advantage_errors():
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(torch.zeros(6), 1)


def test_loss_with_ratio_one_is_minus_token_mean_advantage_and_gradient():
    A = torch.tensor([1.5, -0.5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    ell = torch.randn(2, 4, requires_grad=True)
    loss, m = policy_loss(ell, ell.detach(), A, mask, beta=0.0)
    expected = -(1.5 * 3 - 0.5 * 2) / 5
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    # d/d ell of -A * exp(ell - ell_old) at ratio 1 = -A / n_tokens on masked positions
    g = torch.tensor([[-1.5, -1.5, -1.5, 0.0], [0.5, 0.5, 0.0, 0.0]]) / 5
    torch.testing.assert_close(ell.grad, g)
    assert m["clip_ratio/region_mean"] == 0.0


def test_clip_and_dual_clip_branches():
    mask = torch.ones(1, 1, dtype=torch.bool)
    old = torch.zeros(1, 1)

    def pg(r, a):
        loss, m = policy_loss(torch.log(torch.tensor([[r]])), old, torch.tensor([a]), mask, epsilon=0.2,
                              epsilon_high=0.28, dual_clip_c=3.0)
        return loss.item(), m

    v, m = pg(1.5, 1.0)       # A > 0, ratio above 1 + eps_high: clipped at 1.28
    assert abs(v + 1.28) < 1e-6 and m["clip_ratio/high_mean"] == 1.0
    v, m = pg(0.5, -1.0)      # A < 0, ratio below 1 - eps: max(0.5, 0.8) = 0.8
    assert abs(v - 0.8) < 1e-6 and m["clip_ratio/low_mean"] == 1.0
    v, _ = pg(10.0, -1.0)     # A < 0, huge ratio: dual clip caps the loss at -c*A = 3
    assert abs(v - 3.0) < 1e-5
    v, _ = pg(2.0, -1.0)      # between: max(2, 1.2) = 2 < 3
    assert abs(v - 2.0) < 1e-6
    v, _ = pg(0.5, 1.0)       # A > 0, low ratio: unclipped -0.5
    assert abs(v + 0.5) < 1e-6


def test_k3_kl_and_beta_term():
    ell = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.0, -1.0, -3.0]])
    kl = k3_kl(ell, ref)
    assert (kl >= 0).all() and kl[0, 0] == 0
    d = ref - ell
    torch.testing.assert_close(kl, torch.exp(d) - d - 1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, m = policy_loss(ell, ell, torch.tensor([0.0]), mask, beta=0.1, ell_ref=ref)
    assert abs(loss.item() - 0.1 * kl.mean().item()) < 1e-6 and abs(m["kl"] - kl.mean().item()) < 1e-6
    with pytest.raises(ValueError, match="ell_ref"):
        policy_loss(ell, ell, torch.tensor([1.0]), mask, beta=0.1)


def test_sequence_mean_and_normalizer():
    A = torch.tensor([1.0, 2.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    ell = torch.zeros(2, 4)
    assert loss_normalizer(mask, "token_mean") == 5.0 and loss_normalizer(mask, "sequence_mean") == 2.0
    tok, m = policy_loss(ell, ell, A, mask, loss_type="token_mean", normalizer=10.0)
    assert abs(tok.item() - (-(4 * 1 + 2) / 10)) < 1e-6  # sum over the batch / the step's total
    assert abs(m["policy_loss"] - (-(4 * 1 + 2) / 5)) < 1e-6  # metrics: the batch's own mean
    seq, _ = policy_loss(ell, ell, A, mask, loss_type="sequence_mean")
    assert abs(seq.item() - (-(1 + 2) / 2)) < 1e-6
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        policy_loss(ell, ell, A, mask, normalizer=0.0)


@pytest.mark.parametrize("loss_type", ["token_mean", "sequence_mean", "grpo", "bnpo", "dr_grpo"])
def test_loss_and_gradient_do_not_depend_on_the_micro_batch_split(loss_type):
    """Issue 13.1: completions of 1 and 3 tokens with advantages +1 / -1 gave loss and gradient 0.5 as one
    micro-batch and 0.0 as two (each micro-batch's own token mean / 2). With the step's total as the normaliser
    the micro-batch losses add up to the step's mean: 0.5 both ways (token mean), 0.0 (sequence mean)."""
    A = torch.tensor([1.0, -1.0, 0.5])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    ell0 = torch.randn(3, 3)

    def run(parts):
        ell = ell0.clone().requires_grad_(True)
        total = sum(loss_normalizer(mask[p], loss_type, max_completion_length=4) for p in parts)
        loss = sum(policy_loss(ell[p], ell[p].detach(), A[p], mask[p], loss_type=loss_type, normalizer=total,
                               max_completion_length=4)[0] for p in parts)
        loss.backward()
        return float(loss.detach()), ell.grad

    whole, g_whole = run([slice(0, 3)])
    split, g_split = run([slice(0, 1), slice(1, 3)])
    assert abs(whole - split) < 1e-6
    torch.testing.assert_close(g_whole, g_split, atol=1e-7, rtol=0)
    two, _ = run([slice(0, 2)])
    two_split, _ = run([slice(0, 1), slice(1, 2)])
    # (-1*1 + 1*3) / 4 tokens; (-1 + 1) / 2 completions; (-1*1 + 1*3) / (2 completions x 4 positions)
    expected = {"token_mean": 0.5, "bnpo": 0.5, "sequence_mean": 0.0, "grpo": 0.0, "dr_grpo": 0.25}[loss_type]
    assert abs(two - expected) < 1e-6 and abs(two_split - expected) < 1e-6
    if loss_type == "dr_grpo":  # a constant normaliser: every token's gradient is -A / (N x L_max)
        assert abs(whole - (-1 + 3 - 0.5 * 2) / 12) < 1e-6
    if loss_type == "token_mean":
        assert abs(whole - (-1 + 3 - 0.5 * 2) / 6) < 1e-6


def test_unscorable_rewards_are_left_out_of_their_group():
    """Issue 13.7: a None reward (NaN) was scored 0; group [None, 1, 0, 1] gave the None row advantage -0.866.
    Now it is left out of the group's mean and std (TRL's nanmean / nanstd) and gets advantage 0."""
    nan = float("nan")
    a = group_advantages(torch.tensor([nan, 1.0, 0.0, 1.0]), 4)
    std = torch.tensor([1.0, 0.0, 1.0]).std()  # unbiased std of the scorable rewards: 0.57735
    expected = torch.tensor([0.0, 1 / 3, -2 / 3, 1 / 3]) / (std + 1e-6)
    torch.testing.assert_close(a, expected, atol=1e-6, rtol=0)
    assert abs(a[1].item() - 0.57735) < 1e-4 and abs(a[2].item() + 1.1547) < 1e-4
    # one scorable completion, or none: no signal; an all-None group does not disturb the others
    b = group_advantages(torch.tensor([nan, 1.0, nan, nan, nan, nan, nan, nan, 1.0, 0.0, 0.0, 1.0]), 4)
    assert (b[:8] == 0).all() and torch.isfinite(b).all()
    torch.testing.assert_close(b[8:], group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4))
    c = group_advantages(torch.tensor([nan, 1.0, 0.0, 1.0, 2.0, 2.0, 0.0, 0.0]), 4, scale="batch")
    torch.testing.assert_close(c[1:4], (torch.tensor([1.0, 0.0, 1.0]) - 2 / 3) /
                               (torch.tensor([1.0, 0.0, 1.0, 2.0, 2.0, 0.0, 0.0]).std() + 1e-6))
    assert c[0] == 0


def test_dr_grpo_needs_the_completion_budget_and_unknown_loss_types_are_refused():
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_completion_length"):
        loss_normalizer(mask, "dr_grpo")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        loss_normalizer(mask, "dapo_plus")
