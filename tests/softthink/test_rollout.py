"""Rollout tests: cache == replay, greedy parity with model.generate, think-end switching, EOS masking."""
import pytest
import torch

from softthink.replay import replay_loglik
from softthink.rollout import SoftRollout, resolve_think_end
from softthink.testing import EOS, THINK_END, base_config, left_padded_prompts, make_model, make_tokenizer

torch.set_num_threads(1)

PROMPTS = ["w5 w6 w7 w8 w9", "w10 w11", "w12 w13 w14 w15 w16", "w20 w21 w22 w23 w24"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model():
    return make_model(seed=0)


def _prompts(tok):
    ids, mask = left_padded_prompts(tok, PROMPTS)
    assert (mask == 0).any(), "one prompt must be left-padded"
    return ids, mask


@pytest.mark.parametrize("soft", [True, False])
def test_cached_rollout_equals_replay(tok, model, soft):
    cfg = base_config(soft_thinking=soft, max_completion_length=24, max_think_tokens=None)
    ids, mask = _prompts(tok)
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(1))
    assert traj.tok.shape == (4, traj.tok.shape[1]) and traj.tok.shape[1] >= 10
    if soft:
        assert traj.is_soft.sum() >= 10  # the soft path is really exercised
    ell, _ = replay_loglik(model, ids, mask, traj, cfg)
    diff = (ell - traj.rollout_ell).abs()[traj.resp_mask]
    assert torch.isfinite(ell[traj.resp_mask]).all()
    assert diff.max().item() < 1e-5


def test_greedy_discrete_matches_generate(tok, model):
    cfg = base_config(soft_thinking=False, after_thinking_top_k=1, max_completion_length=16)
    ids, mask = _prompts(tok)
    traj = SoftRollout(model, tok, cfg, eos_token_ids=[EOS]).generate(ids, mask)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                         eos_token_id=EOS, pad_token_id=0)[:, ids.shape[1]:]
    for b in range(4):
        n = int(traj.resp_mask[b].sum())
        assert traj.tok[b, :n].tolist() == ref[b, :n].tolist()
    assert not traj.is_soft.any()


def _force(step_tok):
    """logits hook: at step s force token step_tok[s] (a large logit), and forbid EOS otherwise."""
    def hook(step, logits):
        logits = logits.clone()
        logits[:, EOS] = -1e4
        if step in step_tok:
            t, rows = step_tok[step]
            logits[rows, t] = 1e4
        return logits
    return hook


def test_think_end_switches_to_discrete(tok, model):
    s = 5
    cfg = base_config(max_completion_length=12)
    ids, mask = _prompts(tok)
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(0),
                                                 logits_hook=_force({s: (THINK_END, slice(None))}))
    assert traj.is_soft[:, :s].all()
    assert not traj.is_soft[:, s].any()
    assert (traj.tok[:, s] == THINK_END).all() and (traj.ids[:, s, 0] == THINK_END).all()
    assert traj.support[:, s, 0].all() and not traj.support[:, s, 1:].any()
    assert not traj.is_soft[:, s + 1:].any()
    assert traj.answer_phase[:, s + 1:].all() and not traj.answer_phase[:, : s + 1].any()
    assert traj.think_ended.all() and (traj.think_len == s + 1).all()
    assert not traj.forced.any()


def test_eos_during_thinking_masks_the_rest(tok, model):
    e = 3

    def hook(step, logits):
        logits = logits.clone()
        logits[:, EOS] = -1e4
        if step == e:
            logits[0, EOS] = 1e4
        return logits

    cfg = base_config(max_completion_length=10)
    ids, mask = _prompts(tok)
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(0),
                                                 logits_hook=hook)
    assert traj.tok[0, e] == EOS
    assert traj.resp_mask[0, : e + 1].all() and not traj.resp_mask[0, e + 1:].any()
    assert not traj.is_soft[0, e + 1:].any() and not traj.loss_mask[0, e + 1:].any()
    assert traj.eos[0] and not traj.eos[1:].any()
    assert traj.resp_mask[1:].all()  # the other rows run to max length
    ell, _ = replay_loglik(model, ids, mask, traj, cfg)
    assert (ell[0, e + 1:] == 0).all()


def test_multi_token_marker_needs_budget(tok):
    with pytest.raises(ValueError, match="max_think_tokens"):
        resolve_think_end(tok, base_config(think_end="w7 w8"))
    te = resolve_think_end(tok, base_config(think_end="w7 w8", max_think_tokens=4, answer_prefix=" w9"))
    assert te.mode == "string" and te.marker_ids == [7, 8, 9] and te.prefix_ids == [9]


def test_budget_feeds_marker_as_forced_tokens(tok, model):
    budget = 4
    cfg = base_config(think_end="w7 w8", max_think_tokens=budget, answer_prefix=" w9", max_completion_length=12)
    ids, mask = _prompts(tok)
    # keep the soft tokens away from the marker ids so only the budget can end thinking
    def hook(step, logits):
        logits = logits.clone()
        logits[:, [EOS, 7, 8]] = -1e4
        return logits
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(0),
                                                 logits_hook=hook)
    assert traj.is_soft[:, :budget].all()
    assert traj.tok[:, budget: budget + 3].tolist() == [[7, 8, 9]] * 4
    assert traj.forced[:, budget: budget + 3].all() and not traj.forced[:, budget + 3:].any()
    assert not traj.is_soft[:, budget:].any()
    assert not traj.loss_mask[:, budget: budget + 3].any() and traj.loss_mask[:, budget + 3:].all()
    assert traj.budget_hit.all() and traj.think_ended.all()
    # soft steps never include the hooked ids, so their density is unaffected by the hook
    ell, _ = replay_loglik(model, ids, mask, traj, cfg)
    assert (ell - traj.rollout_ell).abs()[traj.is_soft].max() < 1e-5


def test_marker_string_produced_ends_thinking(tok, model):
    cfg = base_config(think_end="w7 w8", max_think_tokens=50, max_completion_length=10)
    ids, mask = _prompts(tok)
    hook = _force({2: (7, slice(None)), 3: (8, slice(None))})
    traj = SoftRollout(model, tok, cfg).generate(ids, mask, generator=torch.Generator().manual_seed(0),
                                                 logits_hook=hook)
    assert traj.is_soft[:, :3].all()  # the first marker sub-token is still a soft step
    assert not traj.is_soft[:, 3].any() and (traj.tok[:, 3] == 8).all()
    assert traj.answer_phase[:, 4:].all() and not traj.forced.any()
    assert traj.think_ended.all() and not traj.budget_hit.any()


def test_plain_string_prompts_get_exactly_one_bos():
    """Issue 13.10: a plain-string prompt on a tokenizer that adds a BOS got none; now exactly one (never two),
    while chat prompts keep what their template writes and tokenizers that add no BOS add none."""
    from softthink.trainer import SoftGRPOTrainer, tokenize_prompts
    from softthink.testing import BOS, PAD

    tok = make_tokenizer(add_bos=True)
    assert tok("w5 w6")["input_ids"] == [BOS, 5, 6]  # the premise: this tokenizer puts BOS before plain text
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}"
    ids, mask = tokenize_prompts(tok, ["w5 w6", "<s> w7", [{"role": "user", "content": "w8"}]], 16)
    assert ids.tolist() == [[BOS, 5, 6], [PAD, BOS, 7], [PAD, BOS, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1], [0, 1, 1]]
    plain, _ = tokenize_prompts(make_tokenizer(), ["w5 w6"], 16)  # defines <s> but does not add it: none added
    assert plain.tolist() == [[5, 6]]
    with pytest.raises(ValueError, match=r"row 0: prompt has 3 tokens > max_prompt_length=2"):  # BOS counts
        SoftGRPOTrainer(make_model(), tok, base_config(max_prompt_length=2), [{"prompt": "w5 w6"}] * 2,
                        reward_funcs=[lambda prompts, **kw: [0.0] * len(prompts)])


def test_rollout_and_eval_stop_at_the_chat_templates_end_of_turn():
    """Issue 13.12: with a Qwen2.5-base layout (EOS <|endoftext|>, turns end with <|im_end|>) completions ran past
    <|im_end|> to the length limit; the chat template's end-of-turn token now stops them too."""
    from softthink.evaluate import evaluate_model
    from softthink.rollout import chat_end_of_turn_id
    from softthink.testing import IM_END, make_chat_tokenizer

    tok, model = make_chat_tokenizer(), make_model(seed=0)
    assert tok.eos_token_id == EOS and chat_end_of_turn_id(tok) == IM_END
    assert chat_end_of_turn_id(make_tokenizer()) is None  # no chat template
    cfg = base_config(soft_thinking=False, max_completion_length=10)
    roll = SoftRollout(model, tok, cfg)
    assert roll.eos_token_ids == [EOS, IM_END]
    from softthink.trainer import tokenize_prompts

    chats = [[{"role": "user", "content": f"w{5 + i} w{6 + i}"}] for i in range(4)]
    ids, mask = tokenize_prompts(tok, chats, 32)
    def hook(step, logits):  # rows 0 and 2 close their turn at position 3; rows 1 and 3 never stop
        logits = logits.clone()
        logits[:, [EOS, IM_END]] = -1e4
        if step == 3:
            logits[[0, 2], IM_END] = 1e4
        return logits

    traj = roll.generate(ids, mask, generator=torch.Generator().manual_seed(0), logits_hook=hook)
    assert traj.tok[0, 3] == IM_END and traj.resp_mask[[0, 2]].sum(1).tolist() == [4, 4]
    assert traj.eos.tolist() == [True, False, True, False] and traj.resp_mask[[1, 3]].all()

    def turn_end_first(module, inputs, out):  # the model closes its turn at once
        out = out.clone()
        out[..., IM_END] += 100.0
        return out

    model.lm_head.register_forward_hook(turn_end_first)
    res = evaluate_model(model, tok, base_config(soft_thinking=False, max_completion_length=10,
                                                 reward_funcs=["math_verify"]),
                         [{"prompt": c, "answer": "7"} for c in chats[:2]], mode="discrete", num_samples=2, ks=[1],
                         progress=False)
    assert res["completions/mean_length"] == 1.0  # was 10 (the length limit)


def test_soft_top_k_wider_than_the_vocabulary_mixes_the_whole_vocabulary(tok, model):
    """``soft_top_k`` above the vocabulary size (the paper's K = 30 on a 64-token model) is clamped to it, as
    transformers clamps ``top_k``; replay still reproduces the rollout."""
    V = model.get_input_embeddings().weight.shape[0]
    cfg = base_config(soft_thinking=True, soft_top_k=V + 10, top_k=V + 10, max_completion_length=8,
                      max_think_tokens=None)
    ids, mask = _prompts(tok)
    roll = SoftRollout(model, tok, cfg)
    assert roll.soft_k == V
    traj = roll.generate(ids, mask, generator=torch.Generator().manual_seed(1))
    assert traj.ids.shape[-1] == V and traj.is_soft.any()
    ell, _ = replay_loglik(model, ids, mask, traj, cfg)
    assert (ell - traj.rollout_ell).abs()[traj.resp_mask].max().item() < 1e-5
