"""Trainer tests: a toy task learnable only through the soft-token (Gumbel density) term, metrics, saving,
non-finite gradient skip, discrete GRPO in the same trainer."""
import json

import pytest
import torch

from softthink.trainer import SoftGRPOTrainer
from softthink.testing import EOS, base_config, make_model, make_tokenizer
from tests.softthink.helpers import frac_low_ids_reward

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


def _grads_after_one_step(tmp_path, micro, acc, loss_type, reward=None, **kw):
    tok, model = make_tokenizer(), make_model(seed=0)
    model.generation_config.eos_token_id = [EOS] + list(range(10, 30))  # frequent stops: unequal lengths
    cfg = base_config(num_generations=2, generation_batch_size=4, per_device_train_batch_size=micro,
                      gradient_accumulation_steps=acc, max_completion_length=8, learning_rate=0.0, beta=0.0,
                      loss_type=loss_type, max_grad_norm=1e9, seed=1, output_dir=str(tmp_path / "run"),
                      save_model=False, save_steps=0, **kw)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS[:2]],
                         reward_funcs=[reward or frac_low_ids_reward])
    m = tr.step()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, m


@pytest.mark.parametrize("loss_type", ["token_mean", "sequence_mean", "dr_grpo"])
def test_gradient_does_not_depend_on_the_micro_batch_size(tmp_path, loss_type):
    """Issue 13.1: per_device_train_batch_size=4 x 1, 2 x 2 and 1 x 4 micro-batches give the same loss and
    gradient on completions of unequal length (before the fix the 1 x 4 gradient differed from the 4 x 1 one by
    up to 46% of its largest entry for token_mean; sequence_mean was already split-invariant here)."""
    runs = {(micro, acc): _grads_after_one_step(tmp_path / f"{micro}x{acc}", micro, acc, loss_type)
            for micro, acc in ((4, 1), (2, 2), (1, 4))}
    ref, m_ref = runs[(4, 1)]
    assert m_ref["completions/min_length"] < m_ref["completions/max_length"]  # the premise: unequal lengths
    assert max(g.abs().max().item() for g in ref.values()) > 1e-3  # the gradient is not trivially 0
    for key, (grads, m) in runs.items():
        assert grads.keys() == ref.keys()
        for n, g in grads.items():
            torch.testing.assert_close(g, ref[n], atol=1e-6, rtol=1e-5, msg=lambda s, n=n: f"{key} {n}: {s}")
        for k in ("loss", "policy_loss", "entropy", "clip_ratio/region_mean"):
            assert abs(m[k] - m_ref[k]) < 1e-6, (key, k)


def test_unscorable_completion_is_left_out_of_advantages_and_loss(tmp_path):
    """Issue 13.7: reward None (TRL's "not applicable") for every function: NaN reward, advantage 0, no loss."""
    from softthink.distributed import prompt_seed
    from softthink.rollout import GroupGenerators
    from softthink.trainer import tokenize_prompts

    def reward(prompts, completions, **kw):
        return [None, 1.0, 0.0, 1.0]

    tok, model = make_tokenizer(), make_model(seed=0)
    model.generation_config.eos_token_id = [EOS] + list(range(10, 30))  # unequal lengths
    cfg = base_config(num_generations=4, generation_batch_size=4, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, max_completion_length=8, learning_rate=0.0, beta=0.0, seed=1,
                      output_dir=str(tmp_path / "run"), save_model=False, save_steps=0)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": PROMPTS[0]}], reward_funcs=[reward])
    # the rollout the step makes (the same per-prompt generator), to know each completion's loss tokens
    pids, pmask = tokenize_prompts(tok, [PROMPTS[0]] * 4, 64)
    traj = tr.rollout.generate(pids, pmask, generator=GroupGenerators(
        [torch.Generator().manual_seed(prompt_seed(cfg.seed, 0, 0))], [4]))
    with pytest.warns(UserWarning, match=r"every reward function returned None for 1 completion\(s\) \(dataset rows "
                                         r"\[0\]\); they are left out of their group's advantage and of the loss"):
        m = tr.step()
    rewards, adv = tr.last_batch["rewards"], tr.last_batch["advantages"]
    assert torch.isnan(rewards[0]) and rewards[1:].tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.57735, -1.1547, 0.57735]), atol=1e-4, rtol=0)
    assert abs(m["reward"] - 2 / 3) < 1e-6
    n = traj.loss_mask.sum(1).double()
    assert n.tolist() == [2, 4, 8, 5]  # loss tokens per completion (seed 1)
    a = adv.double()
    kept = float(-(a[1:] * n[1:]).sum() / n[1:].sum())  # on-policy: ratio 1, pg = -A per token
    assert abs(m["policy_loss"] - kept) < 1e-6
    assert abs(kept - float(-(a * n).sum() / n.sum())) > 1e-3  # counting the None row's tokens would differ


def test_nan_logits_error_names_step_row_and_generation(tmp_path):
    """Issue 13.8: NaN logits crashed inside torch.multinomial; now a one-line error names the step, the dataset
    row and the generation index."""
    import re

    from softthink.rollout import NonFiniteLogitsError

    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(num_generations=4, generation_batch_size=8, per_device_train_batch_size=8,
                      max_completion_length=6, output_dir=str(tmp_path / "run"), save_model=False, save_steps=0)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS], reward_funcs=[frac_low_ids_reward])
    calls = []

    def poison(module, inputs, out):
        calls.append(1)
        if len(calls) == 3:  # prefill, position 0, position 1: the logits that choose completion position 2
            out = out.clone()
            out[5, -1, 7] = float("nan")  # batch row 5 = prompt 1 of the step, generation 1
            return out

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(NonFiniteLogitsError, match=r"^step 1: NaN logits at completion position 2 of dataset row "
                                                   r"\d+ \(prompt '[^']+'\), generation 1 of 4$") as err:
        tr.step()
    row, prompt = re.search(r"dataset row (\d+) \(prompt '([^']+)'\)", str(err.value)).groups()
    assert PROMPTS[int(row)] == prompt and err.value.position == 2 and err.value.rows == [5]


def test_warns_when_every_completion_is_truncated_and_every_reward_is_zero(tmp_path):
    """Issue 13.9: a budget too short for the answer trained on nothing with no word."""
    import warnings

    zero = lambda prompts, completions, **kw: [0.0] * len(completions)  # noqa: E731
    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                      max_completion_length=2, output_dir=str(tmp_path / "run"), save_model=False, save_steps=0)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS], reward_funcs=[zero])
    with pytest.warns(UserWarning, match=r"step 1: every completion was cut at max_completion_length=2 "
                                         r"\(completions/clipped_ratio=1\.00\) and every reward is 0, so the step "
                                         r"trains on nothing; raise max_completion_length$"):
        m = tr.step()
    assert m["completions/clipped_ratio"] == 1.0 and m["reward"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        tr.step()
    tr2 = SoftGRPOTrainer(make_model(seed=0), tok, cfg, [{"prompt": p} for p in PROMPTS],
                          reward_funcs=[frac_low_ids_reward])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # some reward > 0: no warning
        assert tr2.step()["reward"] > 0


def test_missing_reward_columns_are_errors_at_construction_and_call(tmp_path):
    """Issue 13.11: a column a reward reads is checked at construction (built-in rewards declare theirs); a
    column missing at call time names the column, the reward, the row and the columns present."""
    from softthink.trainer import RewardFunctionError

    tok, model = make_tokenizer(), make_model(seed=0)
    cfg = base_config(num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                      max_completion_length=3, output_dir=str(tmp_path / "run"), save_model=False, save_steps=0)
    data = [{"prompt": p, "question": p} for p in PROMPTS]
    with pytest.raises(ValueError, match=r"^reward 'math_verify' reads the dataset column 'answer' or 'solution', "
                                         r"which train_dataset does not have \(its columns: \['prompt', "
                                         r"'question'\]\)$"):
        SoftGRPOTrainer(model, tok, cfg, data, reward_funcs=["math_verify"])
    with pytest.raises(ValueError, match=r"^reward 'task_scorer' reads the dataset column 'entry'"):
        SoftGRPOTrainer(model, tok, cfg, data, reward_funcs=["task_scorer"])

    def gold_reward(prompts, completions, gold, **kw):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match=r"^reward 'gold_reward' reads the dataset column 'gold'"):
        SoftGRPOTrainer(model, tok, cfg, data, reward_funcs=[gold_reward])
    some = [{"prompt": p, "answer": "7"} for p in PROMPTS]
    del some[3]["answer"]  # only some rows lack it (was a bare KeyError at the step that drew row 3)
    with pytest.raises(ValueError, match=r"^train_dataset row 3 has columns \['prompt'\] but row 0 has \['answer', "
                                         r"'prompt'\] \(row 3 lacks \['answer'\]\); every row needs the same columns$"):
        SoftGRPOTrainer(model, tok, cfg, some, reward_funcs=["math_verify"])

    def kwargs_reward(prompts, completions, **kw):  # reads a column it does not declare
        return [float(g == "7") for g in kw["gold"]]

    tr = SoftGRPOTrainer(model, tok, cfg, data, reward_funcs=[kwargs_reward])
    with pytest.raises(RewardFunctionError, match=r"^reward function 'kwargs_reward' raised KeyError: 'gold' on "
                                                  r"dataset row \d+: the dataset has no column 'gold' \(the row's "
                                                  r"columns: \['prompt', 'question'\]\)$"):
        tr.step()


def test_mask_truncated_completions_carry_no_loss(tmp_path):
    tok, model = make_tokenizer(), make_model(seed=1)
    cfg = _toy_cfg(tmp_path, max_completion_length=6, max_steps=1, generation_batch_size=16,
                   per_device_train_batch_size=8, mask_truncated_completions=True)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS], reward_funcs=[frac_low_ids_reward])
    batch = tr.generate_and_score()
    eos = torch.cat([mb.traj.eos for mb in batch.micro_batches])
    masks = [mb.loss_mask for mb in batch.micro_batches]
    assert bool((~eos).any()) and bool(eos.any())  # the premise: some completions were cut, some ended
    for mb, m in zip(batch.micro_batches, masks):
        assert not m[~mb.traj.eos].any()  # cut completions: no loss token
        assert torch.equal(m[mb.traj.eos], mb.traj.loss_mask[mb.traj.eos])  # the others keep theirs


def test_validation_during_training_writes_pass_at_k_and_leaves_training_unchanged(tmp_path):
    from softthink.plot import plot_run

    def reward(prompts, completions, completion_ids, answer, **kw):  # correct = first id below 34
        return [1.0 if ids and ids[0] < 34 else 0.0 for ids in completion_ids]

    data = [{"prompt": p, "answer": "x"} for p in PROMPTS]
    runs = {}
    for eval_steps in (0, 2):
        cfg = _toy_cfg(tmp_path / str(eval_steps), max_steps=3, generation_batch_size=16,
                       per_device_train_batch_size=8, eval_steps=eval_steps, eval_num_samples=4,
                       correctness_reward="tests.softthink.helpers.first_id_low_reward")
        model = make_model(seed=1)
        tr = SoftGRPOTrainer(model, make_tokenizer(), cfg, data, reward_funcs=[reward], eval_dataset=data[:3])
        hist = tr.train()
        runs[eval_steps] = (hist, {n: p.detach().clone() for n, p in model.named_parameters()})
    (plain, w0), (val, w2) = runs[0], runs[2]
    assert all(torch.equal(w0[n], w2[n]) for n in w0)  # validation draws from its own generators
    rows = [json.loads(line) for line in (tmp_path / "2" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k.startswith("eval/")) for r in rows] == \
        [[], ["eval/mean_length", "eval/pass@1", "eval/pass@2", "eval/pass@4"]] * 1 + \
        [["eval/mean_length", "eval/pass@1", "eval/pass@2", "eval/pass@4"]]
    assert 0.0 <= rows[1]["eval/pass@1"] <= rows[1]["eval/pass@4"] <= 1.0
    for a, b in zip(plain, val):
        assert {k: v for k, v in b.items() if not k.startswith("eval/") and "time" not in k} == \
            {k: v for k, v in a.items() if "time" not in k}
    assert (tmp_path / "2" / "run" / "eval_pass_at_k.png") in plot_run(tmp_path / "2" / "run")
    with pytest.raises(ValueError, match="eval_steps=2 needs an eval_dataset"):
        SoftGRPOTrainer(make_model(seed=1), make_tokenizer(), _toy_cfg(tmp_path, eval_steps=2), data,
                        reward_funcs=[reward])


def test_dynamic_sampling_trains_only_on_groups_with_reward_spread_and_keeps_the_batch_size(tmp_path):
    def half_constant(prompts, completions, completion_ids, **kw):  # even prompts: all 1.0 (no spread)
        return [1.0 if int(p.split()[0][1:]) % 2 == 1 else sum(i < 34 for i in ids) / max(1, len(ids))
                for p, ids in zip(prompts, completion_ids)]

    cfg = _toy_cfg(tmp_path, max_steps=2, generation_batch_size=32, per_device_train_batch_size=16,
                   dynamic_sampling=True, max_num_gen_batches=6)
    tr = SoftGRPOTrainer(make_model(seed=2), make_tokenizer(), cfg, [{"prompt": p} for p in PROMPTS],
                         reward_funcs=[half_constant])
    batch = tr.generate_and_score()
    r = batch.rewards.view(cfg.prompts_per_step, cfg.num_generations)
    assert r.shape == (4, 8)  # the batch keeps its size
    assert bool(((r.amax(-1) - r.amin(-1)) > 0).all())  # and holds only groups with a reward spread
    assert tr._dyn_stats["dynamic_sampling/rounds"] >= 2 and tr._dyn_stats["dynamic_sampling/filler_groups"] == 0
    m = tr.step()
    assert m["dynamic_sampling/filler_groups"] == 0 and m["num_tokens"] > 0

    def constant(prompts, completions, **kw):
        return [1.0] * len(completions)

    tr = SoftGRPOTrainer(make_model(seed=2), make_tokenizer(), cfg, [{"prompt": p} for p in PROMPTS],
                         reward_funcs=[constant])
    batch = tr.generate_and_score()
    assert len(batch.rewards) == 32 and tr._dyn_stats == {"dynamic_sampling/rounds": 6.0,
                                                          "dynamic_sampling/filler_groups": 4.0}
    assert not any(bool(mb.loss_mask.any()) for mb in batch.micro_batches)  # filler groups never train
    with pytest.raises(ValueError, match="max_num_gen_batches"):
        _toy_cfg(tmp_path, dynamic_sampling=True, max_num_gen_batches=0)
