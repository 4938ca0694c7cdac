"""Inference modes of `softthink eval` (discrete, plain Soft Thinking + Cold Stop, Gumbel soft, SofT-GRPO) and
Cold Stop's exact trigger."""
import json

import pytest
import torch

from softthink.evaluate import INFERENCE_MODES, evaluate_model, mode_config, write_eval
from softthink.rollout import SoftRollout
from softthink.testing import EOS, THINK_END, base_config, left_padded_prompts, make_model, make_tokenizer

torch.set_num_threads(1)

PROMPTS = ["w5 w6 w7 w8 w9", "w10 w11", "w12 w13 w14 w15 w16", "w20 w21 w22 w23 w24"]
PEAK = 10  # token made (almost) certain on "low-entropy" steps


def _hook(low_steps_per_row):
    """Logits processor: rows get a +50 logit on PEAK at their low-entropy steps; EOS and the marker are banned."""
    def hook(step, logits):
        logits = logits.clone()
        logits[:, EOS] = -1e4
        logits[:, THINK_END] = -1e4
        for b, steps in enumerate(low_steps_per_row):
            if step in steps:
                logits[b, PEAK] += 50.0
        return logits
    return hook


@pytest.mark.parametrize("soft_noise,soft", [("none", True), ("gumbel", True), ("gumbel", False)])
def test_cold_stop_after_exactly_n_low_entropy_steps(soft_noise, soft):
    N = 3
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(soft_thinking=soft, discrete_think=not soft, soft_noise=soft_noise, cold_stop_entropy=0.01,
                      cold_stop_steps=N, max_completion_length=16, max_think_tokens=None)
    ids, mask = left_padded_prompts(tok, PROMPTS)
    low = [
        {2, 3, 4},              # N low steps from step 2: stop after step 4
        {2, 3, 5, 6, 7},        # N-1 low, one high, then N low: not before step 7
        {1, 2, 4, 5, 7, 8},     # never N in a row: no Cold Stop
        set(range(16)),         # low from the start: stop after step N-1
    ]
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(0),
                                                 logits_hook=_hook(low))
    expect_len = [5, 8, None, N]
    for b, n_think in enumerate(expect_len):
        if n_think is None:
            assert not traj.cold_stopped[b] and not traj.think_ended[b]
            assert int(traj.think_len[b]) == traj.tok.shape[1]
            continue
        assert bool(traj.cold_stopped[b]) and bool(traj.think_ended[b])
        assert int(traj.think_len[b]) == n_think
        # the marker is fed as a forced ordinary token right after the N-th low-entropy step
        assert int(traj.tok[b, n_think]) == THINK_END and bool(traj.forced[b, n_think])
        assert not traj.is_soft[b, n_think:].any() and traj.answer_phase[b, n_think + 1:].all()
        if soft:
            assert traj.is_soft[b, :n_think].all()


def test_cold_stop_off_by_default_and_validated():
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(soft_noise="none", max_completion_length=10, max_think_tokens=None)
    ids, mask = left_padded_prompts(tok, PROMPTS)
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, logits_hook=_hook([set(range(10))] * 4))
    assert not traj.cold_stopped.any() and not traj.think_ended.any()
    with pytest.raises(ValueError, match="cold_stop_steps"):
        base_config(cold_stop_steps=0)
    with pytest.raises(ValueError, match="cold_stop_entropy"):
        base_config(cold_stop_entropy=-1.0)


EXPECTED = {
    "discrete": {"soft_thinking": False},
    "soft": {"soft_thinking": True, "soft_noise": "gumbel", "gumbel_tau": 0.1},
    "soft_thinking": {"soft_thinking": True, "soft_noise": "none", "cold_stop_entropy": 0.01},
    "gumbel_soft": {"soft_thinking": True, "soft_noise": "gumbel", "gumbel_tau": 0.5, "soft_top_k": 30, "top_k": 30,
                    "temperature": 0.6, "cold_stop_entropy": 0.0},
    "softgrpo": {"soft_thinking": True, "soft_noise": "gumbel", "gumbel_tau": 0.1, "soft_top_k": 5, "top_k": 5,
                 "top_p": 0.95, "temperature": 1.0, "cold_stop_entropy": 0.0},
}


@pytest.mark.parametrize("mode", sorted(INFERENCE_MODES))
def test_every_inference_mode_runs_and_records_settings(mode, tmp_path):
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(max_completion_length=10, reward_funcs=["math_verify"], max_think_tokens=None)
    rows = [{"prompt": p, "answer": "7"} for p in PROMPTS[:2]]
    res = evaluate_model(model, tok, cfg, rows, mode=mode, num_samples=4, ks=[1, 2, 4], batch_size=8, seed=0,
                         progress=False)
    path = write_eval(res, tmp_path / "eval.json")
    got = json.loads(path.read_text())
    assert got["mode"] == mode and got["settings"]["mode"] == mode
    for k, v in EXPECTED[mode].items():
        assert got["settings"][k] == v, (mode, k)
    assert got["num_problems"] == 2 and 0.0 <= got["pass@4"] <= 1.0
    assert got["completions/mean_length"] > 0 and "think/cold_stop_rate" in got


def test_mode_errors_and_cold_stop_override():
    cfg = base_config()
    with pytest.raises(ValueError, match="mode must be one of"):
        mode_config(cfg, "beam")
    m = mode_config(cfg, "soft_thinking", cold_stop_entropy=0.2, cold_stop_steps=7)
    assert (m.cold_stop_entropy, m.cold_stop_steps, m.soft_noise) == (0.2, 7, "none")
    assert mode_config(cfg, "discrete").discrete_think is True


def test_cli_eval_modes_write_settings(tmp_path):
    from softthink.cli import main
    from softthink.testing import save_tiny_model

    save_tiny_model(tmp_path / "tiny")
    import yaml

    cfg = dict(model_name_or_path=str(tmp_path / "tiny"), num_generations=2, generation_batch_size=4,
               per_device_train_batch_size=4, gradient_accumulation_steps=1, max_completion_length=8,
               max_think_tokens=3, dataset_size=16, eval_dataset_size=2, torch_num_threads=1,
               dataset_kwargs=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1), reward_funcs=["task_scorer"])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    for mode in ("soft_thinking", "gumbel_soft"):
        out = tmp_path / f"eval_{mode}.json"
        assert main(["eval", "--model", str(tmp_path / "tiny"), "--config", str(tmp_path / "c.yaml"), "--mode", mode,
                     "--num-samples", "2", "--k", "1,2", "--cold-stop-steps", "2", "--output", str(out)]) == 0
        s = json.loads(out.read_text())["settings"]
        assert s["mode"] == mode and s["cold_stop_steps"] == 2
        assert s["soft_noise"] == ("none" if mode == "soft_thinking" else "gumbel")


def test_cold_stop_measures_entropy_before_top_p():
    """Issue 13.5: Cold Stop measured the entropy after top-k/top-p, which is 0 whenever the top token alone
    reaches top_p, so thinking stopped early. It now uses the full softmax(logits / T), as Soft Thinking does."""
    import math

    c = math.log(0.96 * 61 / 0.04)  # the top token gets p = 0.96 of the 62 allowed tokens: full entropy 0.332 nats

    def hook(step, logits):
        lg = torch.zeros_like(logits)
        lg[:, [EOS, THINK_END]] = -1e4
        lg[:, PEAK] = c
        return lg

    p = torch.softmax(hook(0, torch.zeros(1, 64)), -1)
    full = float(-(p * p.clamp_min(1e-30).log()).sum())
    assert abs(full - 0.332) < 1e-3  # after top-k 5 / top-p 0.95 only PEAK survives: entropy 0
    tok, model = make_tokenizer(), make_model(seed=0)
    ids, mask = left_padded_prompts(tok, PROMPTS)
    for threshold, stops in ((0.01, False), (0.5, True)):
        cfg = base_config(soft_noise="none", cold_stop_entropy=threshold, cold_stop_steps=3, max_completion_length=8,
                          max_think_tokens=None, top_k=5, top_p=0.95)
        traj = SoftRollout(model, tok, cfg).generate(ids, mask, logits_hook=hook)
        assert bool(traj.cold_stopped.all()) is stops and bool(traj.cold_stopped.any()) is stops, threshold
        if stops:
            assert (traj.think_len == 3).all()


def _eval(model, tok, cfg, rows, **kw):
    d = dict(mode="soft", num_samples=4, ks=[1, 2, 4], batch_size=8, seed=0, progress=False)
    d.update(kw)
    return evaluate_model(model, tok, cfg, rows, **d)


def test_eval_results_do_not_depend_on_the_batch_size():
    """Issue 13.2: pass@1 changed with --batch-size under the same seed (one generator consumed batch after batch);
    now sample j of problem i is drawn with prompt_seed(seed, i, j), as training seeds each prompt."""
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(max_completion_length=6, max_think_tokens=3,
                      reward_funcs=["tests.softthink.helpers.first_id_low_reward"])
    rows = [{"prompt": p} for p in PROMPTS]  # prompts of different lengths: left padding differs between batches
    for mode in ("soft", "discrete"):
        res = [_eval(model, tok, cfg, rows, mode=mode, batch_size=b) for b in (4, 16)]
        for k in ("correct_counts", "pass@1", "pass@2", "pass@4", "completions/mean_length", "think/distinct_traces",
                  "examples"):
            assert res[0][k] == res[1][k], (mode, k)
        assert 0 < sum(res[0]["correct_counts"]) < 16, mode  # not trivially all wrong / all right


def test_eval_correctness_reward_is_named_not_the_first_one(tmp_path):
    """Issue 13.3: eval scored correctness by the first reward; with a format reward listed first, pass@k
    measured formatting. Several rewards need correctness_reward; the one used is recorded in eval.json."""
    tok, model = make_tokenizer(), make_model(seed=0)
    rows = [{"prompt": p} for p in PROMPTS]
    both = ["tests.softthink.helpers.always_one_reward", "tests.softthink.helpers.first_id_low_reward"]
    with pytest.raises(ValueError, match=r"reward_funcs=\['tests\.softthink\.helpers\.always_one_reward', "
                                         r"'tests\.softthink\.helpers\.first_id_low_reward'\] lists several rewards; set "
                                         r"correctness_reward"):
        _eval(model, tok, base_config(max_completion_length=4, reward_funcs=both), rows)
    named = _eval(model, tok, base_config(max_completion_length=4, reward_funcs=both,
                                          correctness_reward="tests.softthink.helpers.first_id_low_reward"), rows)
    alone = _eval(model, tok, base_config(max_completion_length=4, reward_funcs=both[1:]), rows)
    assert named["correct_counts"] == alone["correct_counts"] and named["pass@1"] < 1.0
    assert named["correctness_reward"] == named["settings"]["correctness_reward"] == both[1]
    assert alone["correctness_reward"] == both[1]  # a single reward is unambiguous
    got = json.loads(write_eval(named, tmp_path / "eval.json").read_text())
    assert got["correctness_reward"] == both[1]


def test_eval_calls_rewards_with_the_training_arguments(tmp_path):
    """Issue 13.4: eval called reward functions without completion_ids; they now get exactly what training gives."""
    from softthink.trainer import SoftGRPOTrainer
    from tests.softthink import helpers

    tok, model = make_tokenizer(), make_model(seed=0)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    rows = [{"prompt": [{"role": "user", "content": p}], "answer": str(i)} for i, p in enumerate(PROMPTS)]
    cfg = base_config(num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                      max_completion_length=4, reward_funcs=["tests.softthink.helpers.recording_reward"],
                      output_dir=str(tmp_path / "run"), save_model=False, save_steps=0)
    helpers.recording_reward.calls = []
    SoftGRPOTrainer(model, tok, cfg, rows, reward_funcs=[helpers.recording_reward]).step()
    _eval(model, tok, cfg, rows[:2], num_samples=2, ks=[1])
    train, ev = helpers.recording_reward.calls
    assert sorted(train) == sorted(ev) == ["answer", "completion_ids", "completions", "prompts", "think_end"]
    for kw in (train, ev):
        assert kw["think_end"] == "</think>" and len({len(v) for k, v in kw.items() if k != "think_end"}) == 1
        for p, c, ids, a in zip(kw["prompts"], kw["completions"], kw["completion_ids"], kw["answer"]):
            assert p in [r["prompt"] for r in rows] and a == rows[[r["prompt"] for r in rows].index(p)]["answer"]
            assert isinstance(c, list) and c[0]["role"] == "assistant"
            assert all(isinstance(i, int) for i in ids) and len(ids) >= 1
            assert tok.decode(ids, skip_special_tokens=True) == c[0]["content"]


def test_eval_reports_distinct_thinking_traces_and_warns_when_deterministic():
    """Issue 13.6: plain Soft Thinking shares one thinking trace between all N samples of a problem; eval.json
    reports the distinct traces per problem and eval warns when every problem has one."""
    import warnings

    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(max_completion_length=8, max_think_tokens=3,
                      reward_funcs=["tests.softthink.helpers.first_id_low_reward"])
    rows = [{"prompt": p} for p in PROMPTS[:3]]
    with pytest.warns(UserWarning, match=r"eval soft_thinking: all 4 samples of every problem share one thinking "
                                         r"trace \(plain Soft Thinking thinks deterministically\), so pass@k "
                                         r"measures only the sampling of the answer"):
        plain = _eval(model, tok, cfg, rows, mode="soft_thinking")
    assert plain["think/distinct_traces"] == [1, 1, 1]
    for mode in ("soft", "discrete"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = _eval(model, tok, cfg, rows, mode=mode)
        assert max(res["think/distinct_traces"]) > 1 and all(1 <= d <= 4 for d in res["think/distinct_traces"])
    no_think = _eval(model, tok, base_config(soft_thinking=False, max_completion_length=4,
                                             reward_funcs=["tests.softthink.helpers.first_id_low_reward"]), rows,
                     mode="discrete")
    assert no_think["think/distinct_traces"] is None


def test_eval_errors_name_the_problem(tmp_path):
    """Issues 13.8 and 13.11 in eval: NaN logits name the dataset row and the sample; a missing column is refused
    before anything is generated."""
    from softthink.rollout import NonFiniteLogitsError

    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(max_completion_length=4, reward_funcs=["math_verify"])
    with pytest.raises(ValueError, match=r"^reward 'math_verify' reads the dataset column 'answer' or 'solution', "
                                         r"which the evaluation dataset does not have \(its columns: \['prompt'\]\)$"):
        _eval(model, tok, cfg, [{"prompt": p} for p in PROMPTS])
    calls = []

    def poison(module, inputs, out):
        calls.append(1)
        if len(calls) == 2:
            out = out.clone()
            out[6, -1] = float("inf")  # batch row 6 = problem 1, sample 2 (4 samples per problem)
            return out

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(NonFiniteLogitsError, match=r"^eval soft: \+inf logits at completion position 1 of dataset "
                                                   r"row 1 \(prompt 'w10 w11'\), sample 2 of 4$"):
        _eval(model, tok, cfg, [{"prompt": p, "answer": "7"} for p in PROMPTS])
