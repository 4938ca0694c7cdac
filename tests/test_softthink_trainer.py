"""Trainer tests: a toy task learnable only through the soft-token (Gumbel density) term, metrics, saving,
non-finite gradient skip, discrete GRPO in the same trainer."""
import json

import pytest
import torch

from softthink.trainer import SoftGRPOTrainer
from softthink_helpers import EOS, base_config, make_model, make_tokenizer

torch.set_num_threads(1)

PROMPTS = [f"w{5 + i} w{20 + i} w{40 + i}" for i in range(8)]


def last_soft_token_reward(prompts, completions, completion_ids, **kw):
    """1 if the readable (top-1) id of the last soft token is in {10..19}."""
    return [1.0 if ids and 10 <= ids[-1] <= 19 else 0.0 for ids in completion_ids]


def _toy_cfg(tmp_path, **kw):
    d = dict(num_generations=8, generation_batch_size=64, per_device_train_batch_size=32,
             gradient_accumulation_steps=1,  # 2 mini-batches per step
             max_completion_length=4, max_think_tokens=None, learning_rate=3e-3, beta=0.0, max_steps=60,
             seed=0, output_dir=str(tmp_path / "run"), save_model=False, top_k=5, top_p=0.95)
    d.update(kw)
    return base_config(**d)


def test_toy_task_learned_only_through_soft_token_likelihood(tmp_path):
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = _toy_cfg(tmp_path)
    data = [{"prompt": p} for p in PROMPTS]
    tr = SoftGRPOTrainer(model, tok, cfg, data, reward_funcs=[last_soft_token_reward])
    rewards, fracs = [], []
    for _ in range(cfg.max_steps):
        m = tr.step()
        rewards.append(m["reward"])
        fracs.append(m["soft/frac_soft_steps"])
        if len(rewards) >= 8 and sum(rewards[-5:]) / 5 > 0.9:
            break
    # (almost) every loss-carrying position is a soft step (a rare top-1 </think> gives a one-hot step), so the
    # reward can only be learned through the Gumbel-density term
    assert sum(fracs) / len(fracs) > 0.95
    print("toy rewards", [round(r, 2) for r in rewards])
    assert sum(rewards[:2]) / 2 < 0.3
    assert sum(rewards[-5:]) / 5 > 0.9, rewards


def test_metrics_file_save_and_discrete_mode(tmp_path):
    tok, model = make_tokenizer(), make_model(seed=1)
    cfg = _toy_cfg(tmp_path, soft_thinking=False, max_steps=2, save_model=True, beta=0.01,
                   generation_batch_size=16, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS], reward_funcs=[last_soft_token_reward])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = tr.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows == hist
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                "completions/clipped_ratio", "kl", "entropy", "clip_ratio/region_mean", "soft/frac_soft_steps",
                "soft/weight_entropy", "soft/think_end_rate", "rewards/last_soft_token_reward/mean", "grad_norm"):
        assert key in rows[0], key
    assert rows[0]["soft/frac_soft_steps"] == 0.0 and rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0.0
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "lm_head.weight" in changed and len(changed) >= len(before) - 2
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "model"))
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert (tmp_path / "run" / "model" / "softthink_config.yaml").is_file()


def test_non_finite_grad_norm_skips_step(tmp_path):
    tok, model = make_tokenizer(), make_model(seed=2)
    cfg = _toy_cfg(tmp_path, max_steps=1, generation_batch_size=16, per_device_train_batch_size=16)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS],
                         reward_funcs=[lambda prompts, completions, completion_ids, **kw:
                                       [float(i % 2) for i in range(len(completions))]])
    model.lm_head.weight.register_hook(lambda g: g * float("inf"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.warns(UserWarning, match="non-finite gradient norm"):
        m = tr.step()
    assert m["skipped_steps"] == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_trainer_input_errors(tmp_path):
    tok, model = make_tokenizer(), make_model()
    cfg = _toy_cfg(tmp_path)
    with pytest.raises(ValueError, match="'prompt' column"):
        SoftGRPOTrainer(model, tok, cfg, [{"question": "w5"}] * 8, reward_funcs=[last_soft_token_reward])
    with pytest.raises(ValueError, match="prompts per step"):
        SoftGRPOTrainer(model, tok, cfg, [{"prompt": "w5"}] * 3, reward_funcs=[last_soft_token_reward])
    with pytest.raises(ValueError, match="unknown reward"):
        SoftGRPOTrainer(model, tok, cfg, [{"prompt": "w5"}] * 8, reward_funcs=["nope"])
