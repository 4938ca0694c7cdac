"""Inference modes of `softthink eval` (discrete, plain Soft Thinking + Cold Stop, Gumbel soft, SofT-GRPO) and
Cold Stop's exact trigger."""
import json

import pytest
import torch

from softthink.evaluate import INFERENCE_MODES, evaluate_model, mode_config, write_eval
from softthink.rollout import SoftRollout
from softthink_helpers import EOS, THINK_END, base_config, left_padded_prompts, make_model, make_tokenizer

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
    from softthink_helpers import save_tiny_model

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
