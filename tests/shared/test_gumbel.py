"""Shared Gumbel core (issue #2 tests)."""
import math
import subprocess
import sys

import pytest
import torch

from diger import gumbel as G


def test_importing_gumbel_does_not_import_recbole():
    code = "import sys, diger.gumbel; assert 'recbole' not in sys.modules, 'recbole imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sample_mean_is_euler_gamma_and_variance_pi2_over_6():
    g = torch.Generator().manual_seed(0)
    x = G.sample_gumbel((1_000_000,), generator=g, dtype=torch.float64)
    se = math.sqrt(math.pi**2 / 6 / x.numel())
    assert abs(x.mean().item() - G.EULER_GAMMA) < 4 * se
    assert abs(x.var().item() - math.pi**2 / 6) < 0.01


def test_clamp_bounds_and_generator_reproducible():
    a = G.sample_gumbel((10000,), generator=torch.Generator().manual_seed(3), clamp=(-1.5, 3.0))
    b = G.sample_gumbel((10000,), generator=torch.Generator().manual_seed(3), clamp=(-1.5, 3.0))
    assert torch.equal(a, b)
    assert a.min().item() == -1.5 and a.max().item() == 3.0
    with pytest.raises(ValueError, match="lo < hi"):
        G.sample_gumbel((3,), clamp=(1.0, 1.0))


def test_log_density_matches_torch_distributions():
    x = torch.linspace(-3, 6, 50)
    for loc, scale in [(0.0, 1.0), (0.7, 2.5), (-1.0, 0.3)]:
        ref = torch.distributions.Gumbel(torch.tensor(loc), torch.tensor(scale)).log_prob(x)
        assert torch.allclose(G.gumbel_log_density(x, loc, scale), ref, atol=1e-5)


def test_straight_through_forward_hard_backward_soft():
    logits = torch.randn(6, 5, requires_grad=True)
    s = G.gumbel_softmax(logits, tau=0.7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s.y_st.detach(), s.y_hard)
    assert torch.equal(s.y_hard.argmax(-1), s.index)
    w = torch.randn(6, 5)
    (s.y_st * w).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = torch.softmax((ref_logits + s.noise) / 0.7, -1)
    (ref * w).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
    assert logits.grad.abs().sum() > 0


def test_gumbel_max_frequencies_match_softmax():
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0])
    n = 200_000
    s = G.gumbel_softmax(logits.expand(n, 4), tau=1.0, generator=torch.Generator().manual_seed(5))
    freq = torch.bincount(s.index, minlength=4).double() / n
    p = torch.softmax(logits.double(), 0)
    assert torch.all((freq - p).abs() < 3 * torch.sqrt(p * (1 - p) / n) + 1e-9)


def test_zero_noise_rows_take_argmax():
    logits = torch.randn(8, 6)
    scale = torch.tensor([0.0, 1.0] * 4)
    s = G.gumbel_softmax(logits, tau=2.0, noise_scale=scale, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s.index[scale == 0], logits.argmax(-1)[scale == 0])
    with pytest.raises(ValueError, match="tau"):
        G.gumbel_softmax(logits, tau=0.0)


@pytest.mark.parametrize("spec,steps,expected", [
    (0.5, [0, 10], [0.5, 0.5]),
    ({"type": "linear", "v0": 1.0, "v_end": 0.0, "total": 10}, [0, 5, 20], [1.0, 0.5, 0.0]),
    ({"type": "exponential", "v0": 2.0, "rate": 0.1, "vmin": 0.5}, [0, 10, 100], [2.0, 2 * math.exp(-1), 0.5]),
    ({"type": "cosine", "v0": 1.0, "total": 100}, [0, 50, 100, 200], [1.0, 0.5, 0.0, 0.0]),
])
def test_schedules_closed_forms(spec, steps, expected):
    sch = G.make_schedule(spec)
    for t, v in zip(steps, expected):
        assert sch.value(t) == pytest.approx(v, abs=1e-12)


def test_schedule_state_survives_save_load():
    a = G.make_schedule({"type": "cosine", "v0": 1.0, "total": 100})
    for _ in range(37):
        a.step()
    b = G.make_schedule({"type": "cosine", "v0": 1.0, "total": 100})
    b.load_state_dict(a.state_dict())
    assert b.value() == a.value() and b.step() == a.step()
    with pytest.raises(ValueError, match="unknown schedule type"):
        G.make_schedule({"type": "bogus"})
