"""Answer extraction policy, math-verify reward, reasoning-gym scorer, pass@k."""
import json
import math

import pytest

from softthink.evaluate import pass_at_k, pass_at_k_binomial
from softthink.rewards import extract_boxed, last_boxed_answer, math_verify_reward, task_scorer_reward


def test_extract_nested_braces_and_forms():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == [r"\frac{1}{2}"]
    assert extract_boxed(r"\boxed{\sqrt{\frac{a}{b}}+{c}}") == [r"\sqrt{\frac{a}{b}}+{c}"]
    assert extract_boxed(r"answer \boxed 5.") == ["5"]
    assert extract_boxed(r"\fbox{7}") == ["7"]
    assert extract_boxed(r"unclosed \boxed{3") == []


def test_several_boxes_last_complete_one_counts():
    assert last_boxed_answer(r"\boxed{1} then \boxed{2}") == "2"
    assert last_boxed_answer(r"\boxed{1} then \boxed{2") == "1"  # unclosed trailing box ignored
    # boxes inside the thinking part do not count
    assert last_boxed_answer(r"maybe \boxed{9}</think> so \boxed{4}") == "4"
    assert last_boxed_answer(r"maybe \boxed{9}</think> so 4") is None


def test_no_box_gives_zero_reward():
    assert last_boxed_answer("The answer is 10") is None
    assert math_verify_reward(None, ["The answer is 10"], answer=["10"]) == [0.0]


def test_math_verify_reward_values():
    comps = [r"x</think> \boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{3} no wait \boxed{4}", r"\boxed{-4}",
             [{"role": "assistant", "content": r"\boxed{12}"}]]
    gold = ["1/2", "\\frac{1}{2}", "3", "-4", "12"]
    assert math_verify_reward(None, comps, answer=gold) == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert math_verify_reward(None, [r"\boxed{5}"], solution=["5"]) == [1.0]  # TRL's column name
    with pytest.raises(ValueError, match="answer"):
        math_verify_reward(None, [r"\boxed{5}"])


def test_task_scorer_reward_uses_reasoning_gym():
    import reasoning_gym

    ds = reasoning_gym.create_dataset("basic_arithmetic", size=2, seed=1, min_terms=2, max_terms=2,
                                      min_digits=1, max_digits=1)
    entries = [json.dumps(ds[i], default=list) for i in range(2)]
    comps = [f"</think>The final answer is \\boxed{{{ds[0]['answer']}}}", "</think>\\boxed{12345}"]
    got = task_scorer_reward(None, comps, entry=entries)
    assert got[0] == 1.0 and got[1] < 1.0
    assert got[1] == ds.score_answer("12345", ds[1])  # exactly the task's own scorer on the boxed answer
    # no box -> 0 even though the text contains the right answer (the scorer alone would give partial credit)
    assert task_scorer_reward(None, [f"</think>so {ds[0]['answer']}"], entry=entries[:1]) == [0.0]


def test_pass_at_k_known_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_binomial(n, c, k), abs=1e-12)
                assert pass_at_k_binomial(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    with pytest.raises(ValueError, match="k=6 > n=5"):
        pass_at_k(5, 2, 6)
