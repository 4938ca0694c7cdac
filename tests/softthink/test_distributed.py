"""Data parallelism: ``accelerate launch`` with 2 CPU processes (gloo) vs one process on the same seed.

Groups are whole on one process, rewards are gathered, advantages are computed in global prompt order and
gradients are all-reduced; sampling is per prompt (seeded by (seed, step, prompt index)), so both layouts
must produce the same rollouts, advantages, losses and weights (softthink/distributed.py).
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softthink.distributed import ProcessLayout, prompt_seed
from softthink.rollout import GroupGenerators, SoftRollout
from softthink.testing import base_config, left_padded_prompts, make_model, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_layout_deals_whole_groups_in_mini_batch_chunks():
    cfg = base_config(num_generations=4, generation_batch_size=32, per_device_train_batch_size=4,
                      gradient_accumulation_steps=2)
    p0 = ProcessLayout(cfg, torch.device("cpu"), world=2, rank=0)
    p1 = ProcessLayout(cfg, torch.device("cpu"), world=2, rank=1)
    # chunk = one local mini-batch = 2 prompts; chunks alternate between the processes
    assert p0.local_positions == [0, 1, 4, 5] and p1.local_positions == [2, 3, 6, 7]
    assert p0.local_rows.tolist() == list(range(0, 8)) + list(range(16, 24))
    one = ProcessLayout(cfg, torch.device("cpu"), world=1, rank=0)
    assert one.local_positions == list(range(8)) and one.local_rows.tolist() == list(range(32))
    with pytest.raises(ValueError, match=r"per_device_train_batch_size\*gradient_accumulation_steps=6 must be a "
                                         r"multiple of num_generations=4"):
        ProcessLayout(base_config(num_generations=4, generation_batch_size=24, per_device_train_batch_size=3,
                                  gradient_accumulation_steps=2), torch.device("cpu"), world=2, rank=0)
    with pytest.raises(ValueError, match=r"generation_batch_size=8 must be divisible by .*num_processes=16"):
        ProcessLayout(base_config(num_generations=4, generation_batch_size=8, per_device_train_batch_size=8,
                                  gradient_accumulation_steps=1), torch.device("cpu"), world=2, rank=0)
    assert prompt_seed(0, 1, 2) == prompt_seed(0, 1, 2) != prompt_seed(0, 2, 1)


@pytest.mark.parametrize("noise", ["gumbel", "embedding_gaussian"])
def test_group_generators_make_a_group_independent_of_its_batch(noise):
    """A group's rollout depends only on its own generator: alone or next to another group, same samples."""
    tok, model = make_tokenizer(), make_model(seed=0)
    roll = SoftRollout(model, tok, base_config(max_completion_length=8, soft_noise=noise))
    ids, mask = left_padded_prompts(tok, ["w5 w6 w7"] * 2 + ["w9 w10 w11"] * 2)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    both = roll.generate(ids, mask, generator=GroupGenerators([gen(1), gen(2)], [2, 2]))
    alone = roll.generate(ids[2:], mask[2:], generator=GroupGenerators([gen(2)], [2]))
    L = alone.tok.shape[1]
    live = alone.resp_mask
    assert torch.equal(both.resp_mask[2:, :L], live) and not both.resp_mask[2:, L:].any()
    for name in ("tok", "ids", "y", "emb_noise"):
        a, b = getattr(both, name)[2:, :L][live], getattr(alone, name)[live]
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    with pytest.raises(ValueError, match="cover 2 rows, the batch has 4"):
        roll.generate(ids, mask, generator=GroupGenerators([gen(2)], [2]))


def _launch_two(folder: Path, *worker_args: str) -> dict:
    """Run tests/softthink/dist_worker.py under ``accelerate launch`` with 2 CPU processes; its output (skips when
    the processes cannot start or the machine is too loaded)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    folder.mkdir()
    out = str(folder / "out.pt")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "tests.softthink.dist_worker", out, *worker_args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("2 processes did not finish within 240 s (machine too loaded to start them)")
    if proc.returncode != 0 and not Path(out + ".started").exists():
        pytest.skip("2 processes could not start (accelerate launch / gloo): " + proc.stderr.strip()[-500:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_two_processes_match_one_process(tmp_path):
    """2 steps (2 optimiser steps each, the second off-policy, KL on) on a tiny random Qwen2 with completions of
    unequal length, for loss_type token_mean and sequence_mean: the 2-process run gives the same gathered
    advantages (atol 1e-6), losses (atol 1e-6) and weights (atol 5e-5) as 1 process with twice the gradient
    accumulation (the loss is normalised by the step's all-reduced token / sequence count, issue 13.1).
    Measured: advantages equal, losses within 3e-8, weights within 6e-6 (AMD EPYC) and 1.1e-5 (a CI Xeon: the
    all-reduce sums in another order than one process's accumulation); normalising by each process's own token
    count instead moves the token_mean weights by 0.07, 1400x the tolerance."""
    from tests.softthink.dist_worker import LOSS_TYPES, run

    two_all = _launch_two(tmp_path / "two", "2")
    (tmp_path / "one").mkdir()
    out1 = str(tmp_path / "one" / "out.pt")
    run(out1, 4)
    one_all = torch.load(out1, weights_only=False)
    init = dict(make_model(seed=0).named_parameters())
    for lt in LOSS_TYPES:
        one, two = one_all[lt], two_all[lt]
        assert one["world"] == 1 and two["world"] == 2
        for s in range(2):
            assert one["metrics"][s]["completions/min_length"] < one["metrics"][s]["completions/max_length"]
            assert torch.equal(one["rewards"][s], two["rewards"][s])
            torch.testing.assert_close(one["advantages"][s], two["advantages"][s], atol=1e-6, rtol=0)
            assert float(one["advantages"][s].abs().sum()) > 0  # the test has signal
            for k in ("loss", "policy_loss", "kl", "reward", "completions/mean_length", "soft/frac_soft_steps"):
                assert abs(one["metrics"][s][k] - two["metrics"][s][k]) <= 1e-6, (lt, s, k)
            for k, w in one["weights"][s].items():
                torch.testing.assert_close(w, two["weights"][s][k], atol=5e-5, rtol=0,
                                           msg=lambda m, k=k: f"{lt} {k}: {m}")
        moved = max((w - init[k]).abs().max().item() for k, w in one["weights"][1].items())
        assert moved > 1e-3  # the weights did change


def test_fsdp_two_processes_match_one_process(tmp_path):
    """``fsdp: full_shard`` with 2 CPU processes (gloo, torch FSDP2): the same 2 steps as the test above give the same
    advantages and losses (atol 1e-6) and weights (atol 5e-5) as one unsharded process; the blocks really are
    sharded; a checkpoint written after step 1 and loaded into a fresh sharded trainer gives step 2's weights
    again; ``save_model`` writes the whole weights (loadable with ``from_pretrained``). Measured: weights within
    1.3e-6 of one process, the resumed step bitwise equal (AMD EPYC)."""
    from tests.softthink.dist_worker import LOSS_TYPES, run

    two = _launch_two(tmp_path / "two", "2", "fsdp")[LOSS_TYPES[0]]
    (tmp_path / "one").mkdir()
    run(str(tmp_path / "one" / "out.pt"), 4)
    one = torch.load(tmp_path / "one" / "out.pt", weights_only=False)[LOSS_TYPES[0]]
    assert two["world"] == 2 and two["sharded"]
    for s in range(2):
        torch.testing.assert_close(one["advantages"][s], two["advantages"][s], atol=1e-6, rtol=0)
        for k in ("loss", "policy_loss", "kl", "reward", "grad_norm"):
            assert abs(one["metrics"][s][k] - two["metrics"][s][k]) <= 1e-5 * max(1.0, abs(one["metrics"][s][k])), \
                (s, k, one["metrics"][s][k], two["metrics"][s][k])
        assert set(one["weights"][s]) == set(two["weights"][s])
        for k, w in one["weights"][s].items():
            torch.testing.assert_close(two["weights"][s][k], w, atol=5e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    for k, w in two["weights"][1].items():
        torch.testing.assert_close(two["resumed"][k], w, atol=1e-6, rtol=0, msg=lambda m, k=k: f"resumed {k}: {m}")
        torch.testing.assert_close(two["saved"][k].detach(), w, atol=0, rtol=0, msg=lambda m, k=k: f"saved {k}: {m}")


def test_fsdp_through_accelerates_config_file(tmp_path):
    """The documented launch: ``accelerate launch --config_file configs/accelerate_fsdp.yaml -m softthink train`` on a
    saved tiny model and a JSONL file; the run shards (``summary.json`` says ``fsdp: true``), trains 2 steps and
    saves a model that loads. One process with the same flag only warns (nothing to shard)."""
    from softthink.testing import make_chat_tokenizer

    model, tok = make_model(seed=0), make_chat_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    (tmp_path / "d.jsonl").write_text("".join(
        f'{{"prompt": "w{5 + i} w{20 + i} w{40 + i}", "answer": "w{5 + i}"}}\n' for i in range(12)))
    (tmp_path / "c.yaml").write_text(
        "model_name_or_path: tiny\nnum_generations: 4\ngeneration_batch_size: 16\nper_device_train_batch_size: 4\n"
        "gradient_accumulation_steps: 2\nmax_completion_length: 6\nmax_steps: 2\nsave_steps: 1\noutput_dir: run\n"
        "reward_funcs: [math_verify]\neval_dataset_size: 4\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" /
           "accelerate_fsdp.yaml"), "--main_process_port", str(_free_port()), "-m", "softthink", "train",
           "--config", "c.yaml", "--dataset", "d.jsonl"]
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("2 processes did not finish within 240 s (machine too loaded to start them)")
    if proc.returncode != 0 and "softthink" not in proc.stderr:
        pytest.skip("2 processes could not start (accelerate launch / gloo): " + proc.stderr.strip()[-500:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["fsdp"] is True and summary["steps"] == 2
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert set(dict(saved.named_parameters())) == set(dict(model.named_parameters()))
    with pytest.warns(UserWarning, match="one process, nothing to shard"):
        from softthink.trainer import SoftGRPOTrainer

        tr = SoftGRPOTrainer(make_model(seed=0), make_tokenizer(), base_config(fsdp="full_shard",
                             output_dir=str(tmp_path / "one")), [{"prompt": "w5 w6"}] * 8,
                             reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])
    assert not tr.dist.sharded
