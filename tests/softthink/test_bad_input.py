"""Bad input to the softthink trainer: a clear error naming the function / dataset row / value, and nothing
half-written in the run folder (issue #7)."""
import warnings

import pytest
import torch

from softthink.config import SoftGRPOConfig
from softthink.trainer import RewardFunctionError, SoftGRPOTrainer
from softthink.testing import base_config, make_model, make_tokenizer

torch.set_num_threads(1)

PROMPTS = [f"w{5 + i} w{20 + i} w{40 + i}" for i in range(8)]


def _cfg(tmp_path, **kw):
    d = dict(num_generations=2, generation_batch_size=16, per_device_train_batch_size=8, max_completion_length=4,
             max_steps=2, output_dir=str(tmp_path / "run"), save_steps=1)
    d.update(kw)
    return base_config(**d)


def picky_reward(prompts, completions, completion_ids, **kw):
    """Fails on the prompt of dataset row 5."""
    out = []
    for p in prompts:
        if p == PROMPTS[5]:
            raise KeyError("no gold answer")
        out.append(float(len(p) % 3))
    return out


def test_reward_function_error_names_function_and_row(tmp_path):
    tr = SoftGRPOTrainer(make_model(), make_tokenizer(), _cfg(tmp_path), [{"prompt": p} for p in PROMPTS],
                         reward_funcs=[picky_reward])
    with pytest.raises(RewardFunctionError, match=r"reward function 'picky_reward' raised KeyError: 'no gold "
                                                  r"answer' on dataset row 5 \(prompt 'w10 w25 w45'"):
        tr.train()
    run = tmp_path / "run"
    assert not run.exists() or not any(run.iterdir())  # no metrics.jsonl, no last.pth, no model
    assert tr.state["global_step"] == 0


def test_reward_function_bad_value_names_row(tmp_path):
    def text_reward(prompts, completions, completion_ids, **kw):
        return ["high" if p == PROMPTS[2] else 1.0 for p in prompts]

    tr = SoftGRPOTrainer(make_model(), make_tokenizer(), _cfg(tmp_path), [{"prompt": p} for p in PROMPTS],
                         reward_funcs=[text_reward])
    with pytest.raises(RewardFunctionError, match=r"'text_reward' returned 'high' \(not a number or None\) for "
                                                  r"dataset row 2"):
        tr.step()


def test_tokenizer_without_pad_token_pads_with_eos_and_warns(tmp_path):
    tok = make_tokenizer()
    tok.pad_token = None
    assert tok.pad_token is None
    with pytest.warns(UserWarning, match=r"no pad token; padding with its EOS token '</s>'"):
        tr = SoftGRPOTrainer(make_model(), tok, _cfg(tmp_path, max_steps=1), [{"prompt": p} for p in PROMPTS],
                             reward_funcs=[lambda prompts, **kw: [1.0] * len(prompts)])
    assert tok.pad_token == tok.eos_token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tr.step()["step"] == 1


def test_prompt_longer_than_max_prompt_length_names_row(tmp_path):
    data = [{"prompt": p} for p in PROMPTS]
    data[3] = {"prompt": " ".join(f"w{5 + i % 50}" for i in range(40))}
    with pytest.raises(ValueError, match=r"train_dataset row 3: prompt has 40 tokens > max_prompt_length=16 "
                                         r"\('w5 w6"):
        SoftGRPOTrainer(make_model(), make_tokenizer(), _cfg(tmp_path, max_prompt_length=16), data,
                        reward_funcs=[picky_reward])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kw,match", [
    (dict(num_generations=1, generation_batch_size=4), r"SoftGRPOConfig\.num_generations=1: must be >= 2"),
    (dict(num_generations=3, generation_batch_size=8, per_device_train_batch_size=8),
     r"SoftGRPOConfig\.generation_batch_size=8: must be divisible by num_generations=3"),
    (dict(num_generations=2, generation_batch_size=8, per_device_train_batch_size=8, gradient_accumulation_steps=1,
          save_steps=-1), r"SoftGRPOConfig\.save_steps=-1"),
])
def test_batch_config_errors_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        SoftGRPOConfig(**kw)
