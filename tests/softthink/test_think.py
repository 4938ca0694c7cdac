"""The think boundary on its own (softthink/think.py): marker, answer prefix, budget, Cold Stop, string rule."""
import torch

from softthink.think import ThinkBoundary, ThinkEnd, resolve_think_end
from softthink.testing import base_config, make_tokenizer

FLAT = torch.zeros(1, 8)  # uniform next-token distribution: entropy log 8 (no Cold Stop)
PEAKED = torch.tensor([[30.0] + [0.0] * 7])  # entropy ~0


def _run(tb, think_toks, answer_tok=7, scaled=FLAT, eos_at=None):
    """Feed candidate tokens step by step; returns the chosen tokens and per-step (in_think, forcing)."""
    out = []
    for i, t in enumerate(think_toks):
        forcing = tb.forcing.clone()
        tok, in_think = tb.select(torch.tensor([t]), torch.tensor([answer_tok]))
        ended = tb.ended_by_marker(tok, in_think, torch.tensor([False]))
        eos = torch.tensor([eos_at == i]) & ~forcing
        tb.update(in_think, ended, eos, torch.tensor([True]), scaled)
        out.append((int(tok), bool(in_think), bool(forcing)))
    return out


def _tb(think, **kw):
    kw.setdefault("cold_stop_entropy", 0.0)
    kw.setdefault("cold_stop_steps", 2)
    return ThinkBoundary(think, None, batch_size=1, device="cpu", **kw)


def test_marker_token_ends_thinking_then_the_answer_prefix_is_forced():
    tb = _tb(ThinkEnd("token", 3, [3, 10, 11], "</think>", None, [10, 11]))
    steps = _run(tb, [5, 3, 5, 5, 5])
    assert steps == [(5, True, False), (3, True, False), (10, False, True), (11, False, True), (7, False, False)]
    assert bool(tb.think_ended) and not bool(tb.thinking) and not bool(tb.budget_hit)
    assert int(tb.think_len) == 2  # the thinking steps, the one that produced the marker included


def test_spent_budget_feeds_the_whole_marker_as_forced_tokens():
    tb = _tb(ThinkEnd("token", 3, [3, 10], "</think>", 2, [10]))
    steps = _run(tb, [5, 6, 5, 5, 5])
    assert [s[0] for s in steps] == [5, 6, 3, 10, 7]
    assert [s[2] for s in steps] == [False, False, True, True, False]  # forced: inputs, not samples
    assert bool(tb.budget_hit) and bool(tb.think_ended) and int(tb.think_len) == 2


def test_cold_stop_after_consecutive_low_entropy_steps_measured_on_the_full_distribution():
    tb = _tb(ThinkEnd("token", 3, [3], "</think>", None, []), cold_stop_entropy=0.1, cold_stop_steps=2)
    steps = _run(tb, [5, 5, 5, 5], scaled=PEAKED)
    assert [s[0] for s in steps] == [5, 5, 3, 7] and steps[2][2]  # the marker is forced after two cold steps
    assert bool(tb.cold_stopped) and not bool(tb.budget_hit)
    tb = _tb(ThinkEnd("token", 3, [3], "</think>", None, []), cold_stop_entropy=0.1, cold_stop_steps=2)
    _run(tb, [5, 5, 5, 5], scaled=FLAT)  # high entropy: thinks on
    assert not bool(tb.cold_stopped) and bool(tb.thinking)


def test_string_marker_is_found_in_the_decoded_thinking_steps():
    tok = make_tokenizer()
    think = resolve_think_end(tok, base_config(think_end="w13 w14", think_end_match="string", max_think_tokens=9))
    tb = ThinkBoundary(think, tok, cold_stop_entropy=0.0, cold_stop_steps=1, batch_size=1, device="cpu")
    ids = tok.convert_tokens_to_ids(["w20", "w13", "w14", "w20"])
    steps = _run(tb, ids)
    assert [s[1] for s in steps] == [True, True, True, False]  # the step completing "w13 w14" ends thinking
    assert bool(tb.think_ended) and steps[3][0] == 7


def test_without_a_thinking_phase_every_token_is_an_answer_token():
    tb = _tb(None)
    assert _run(tb, [5, 3, 5]) == [(7, False, False)] * 3
    assert not bool(tb.think_ended) and int(tb.think_len) == 0
