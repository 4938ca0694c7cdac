"""Worker of tests/softthink/test_distributed.py: two SofT-GRPO steps on a tiny random Qwen2, once per loss type.

``python -m tests.softthink.dist_worker OUT GRAD_ACC`` from the repository root (or under
``accelerate launch -m``, with the root on ``PYTHONPATH``) writes, from the main process,
``OUT`` = torch.save of ``{loss_type: per-step gathered advantages/rewards, metrics and weights}`` for
``token_mean`` and ``sequence_mean``; and ``OUT.started`` once the trainer knows its process layout (so the test
can tell "2 processes could not start" from a failure of the code under test). Extra stop ids make the
completions end at different lengths, so each process holds a different number of loss tokens.
"""
import sys
from pathlib import Path

import torch

from softthink.testing import EOS, base_config, make_model, make_tokenizer
from softthink.trainer import SoftGRPOTrainer
from tests.softthink.helpers import frac_low_ids_reward

# 8 prompts of equal length (3 tokens): no left padding, so the batch composition cannot change the logits
PROMPTS = [f"w{5 + i} w{20 + i} w{40 + i}" for i in range(8)]


LOSS_TYPES = ("token_mean", "sequence_mean")


def config(out_dir: str, grad_acc: int, loss_type: str = "token_mean"):
    """2 steps; 8 prompts x 4 generations per step; micro-batch 4; with 2 processes and grad_acc 2 the global
    mini-batch is 16 completions, i.e. 2 optimiser steps per step (as with 1 process and grad_acc 4), the second
    one off-policy.

    ``gumbel_clamp=None``: with the paper's clamp, about 6% of the recorded noise values sit exactly on a clamp
    boundary, where the recovered noise is clamped (zero gradient) or not depending on float rounding; the
    all-reduce sums gradients in another order than one process does (differences ~1e-9), and after one
    update such boundary decisions can flip, changing the second step's gradients by O(1e-3). Without the
    clamp the loss is continuous and the two layouts agree to rounding.
    """
    return base_config(num_generations=4, generation_batch_size=32, per_device_train_batch_size=4,
                       gradient_accumulation_steps=grad_acc, max_completion_length=6, learning_rate=1e-2,
                       beta=0.01, max_steps=2, seed=3, gumbel_clamp=None, output_dir=out_dir, save_model=False,
                       save_steps=0, loss_type=loss_type)


def run_one(out: str, grad_acc: int, loss_type: str):
    tok, model = make_tokenizer(), make_model(seed=0)
    model.generation_config.eos_token_id = [EOS] + list(range(10, 30))  # frequent stops: unequal lengths
    tr = SoftGRPOTrainer(model, tok, config(str(Path(out).parent / "run"), grad_acc, loss_type),
                         [{"prompt": p} for p in PROMPTS], reward_funcs=[frac_low_ids_reward])
    if tr.is_main_process:
        Path(out + ".started").write_text(str(tr.dist.world))
    adv, rew, hist, weights = [], [], [], []
    for _ in range(2):
        hist.append(tr.step())
        weights.append({k: v.detach().clone() for k, v in model.named_parameters()})
        adv.append(tr.last_batch["advantages"].clone())
        rew.append(tr.last_batch["rewards"].clone())
    return tr, {"world": tr.dist.world, "advantages": adv, "rewards": rew, "metrics": hist, "weights": weights}


def run(out: str, grad_acc: int) -> None:
    torch.set_num_threads(1)
    res = {}
    for loss_type in LOSS_TYPES:
        tr, res[loss_type] = run_one(out, grad_acc, loss_type)
    if tr.is_main_process:
        torch.save(res, out)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
