"""Worker of tests/softthink/test_distributed.py: two SofT-GRPO steps on a tiny random Qwen2, once per loss type.

``python -m tests.softthink.dist_worker OUT GRAD_ACC [fsdp]`` from the repository root (or under
``accelerate launch -m``, with the root on ``PYTHONPATH``) writes, from the main process,
``OUT`` = torch.save of ``{loss_type: per-step gathered advantages/rewards, metrics and weights}`` for
``token_mean`` and ``sequence_mean``; and ``OUT.started`` once the trainer knows its process layout (so the test
can tell "2 processes could not start" from a failure of the code under test). With ``fsdp`` the transformer blocks
are sharded (``fsdp: full_shard``), only ``token_mean`` runs, and the worker also checks a resume: a checkpoint
written after step 1, loaded into a fresh sharded trainer, must give step 2's weights again (``resumed``), and
``save_model`` must write the whole weights (``saved``). Extra stop ids make the
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


def config(out_dir: str, grad_acc: int, loss_type: str = "token_mean", fsdp: str = ""):
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
                       save_steps=0, loss_type=loss_type, fsdp=fsdp)


def _weights(tr):
    """Whole weights (gathered on the main process under FSDP; a collective there)."""
    if tr.dist.sharded:
        return {k: v.clone() for k, v in tr.dist.full_state_dicts(tr.model)[0].items()}
    return {k: v.detach().clone() for k, v in tr.model.named_parameters()}


def _trainer(out: str, grad_acc: int, loss_type: str, fsdp: str = ""):
    tok, model = make_tokenizer(), make_model(seed=0)
    model.generation_config.eos_token_id = [EOS] + list(range(10, 30))  # frequent stops: unequal lengths
    return SoftGRPOTrainer(model, tok, config(str(Path(out).parent / "run"), grad_acc, loss_type, fsdp),
                           [{"prompt": p} for p in PROMPTS], reward_funcs=[frac_low_ids_reward])


def run_one(out: str, grad_acc: int, loss_type: str, fsdp: str = ""):
    tr = _trainer(out, grad_acc, loss_type, fsdp)
    if tr.is_main_process:
        Path(out + ".started").write_text(str(tr.dist.world))
    adv, rew, hist, weights = [], [], [], []
    extra = {}
    for s in range(2):
        hist.append(tr.step())
        weights.append(_weights(tr))
        adv.append(tr.last_batch["advantages"].clone())
        rew.append(tr.last_batch["rewards"].clone())
        if fsdp and s == 0:
            ck = tr.save_checkpoint(Path(out).parent / "step1.pth")
    if fsdp:
        tr.dist.barrier()
        again = _trainer(out, grad_acc, loss_type, fsdp)
        again.load_checkpoint(Path(out).parent / "step1.pth")
        again.step()
        extra["resumed"] = _weights(again)
        saved = tr.save_model(Path(out).parent / "model")
        if tr.is_main_process:
            from transformers import AutoModelForCausalLM

            extra["saved"] = dict(AutoModelForCausalLM.from_pretrained(saved).named_parameters())
            extra["sharded"] = tr.dist.sharded
            extra["checkpoint"] = str(ck)
    return tr, {"world": tr.dist.world, "advantages": adv, "rewards": rew, "metrics": hist, "weights": weights,
                **extra}


def run(out: str, grad_acc: int, fsdp: bool = False) -> None:
    torch.set_num_threads(1)
    res = {}
    for loss_type in (LOSS_TYPES[:1] if fsdp else LOSS_TYPES):
        tr, res[loss_type] = run_one(out, grad_acc, loss_type, "full_shard" if fsdp else "")
    if tr.is_main_process:
        torch.save(res, out)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), fsdp=len(sys.argv) > 3 and sys.argv[3] == "fsdp")
