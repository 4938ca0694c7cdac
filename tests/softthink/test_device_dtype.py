"""Device, dtype, attention and gradient checkpointing keys reach the model (issue 18); CPU only here."""
import dataclasses

import pytest
import torch

from softthink.models import load_policy, resolve_device
from softthink.replay import replay_loglik
from softthink.testing import base_config, save_tiny_model
from softthink.trainer import SoftGRPOTrainer
from tests.softthink.helpers import frac_low_ids_reward

torch.set_num_threads(1)
PROMPTS = [f"Calculate {a} + {b}." for a in range(4) for b in range(2)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def _cfg(tiny, tmp_path, **kw):
    return base_config(model_name_or_path=tiny, output_dir=str(tmp_path), max_completion_length=8,
                       max_think_tokens=3, num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                       gradient_accumulation_steps=1, save_model=False, learning_rate=1e-2, seed=0, **kw)


def _one_step(cfg):
    model, tok = load_policy(cfg)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS], reward_funcs=[frac_low_ids_reward])
    return model, tr, tr.step()


def test_bfloat16_parameters_with_float32_likelihoods(tiny, tmp_path):
    model, tr, m = _one_step(_cfg(tiny, tmp_path, torch_dtype="bfloat16", beta=0.01))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tr.ref_model.parameters()} == {torch.bfloat16}  # the reference in the same dtype
    assert all(v == v for k, v in m.items() if isinstance(v, float) and k != "kl")  # finite metrics
    batch = tr.generate_and_score()
    mb = batch.micro_batches[0]
    ell, _ = replay_loglik(model, mb.prompt_ids, mb.prompt_mask, mb.traj, tr.args)
    assert ell.dtype == torch.float32 and torch.isfinite(ell).all()


def test_checkpointing_gives_the_same_update(tiny, tmp_path):
    plain, _, _ = _one_step(_cfg(tiny, tmp_path / "a"))
    ckpt, _, _ = _one_step(_cfg(tiny, tmp_path / "b", gradient_checkpointing=True))
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=n)


def test_attention_implementation_and_cpu_fallbacks(tiny, tmp_path):
    model, _ = load_policy(_cfg(tiny, tmp_path, attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).device == resolve_device("auto")
    with pytest.warns(UserWarning, match="float16.*float32"):
        model, _ = load_policy(_cfg(tiny, tmp_path, torch_dtype="float16", device="cpu"))
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="flash_attention_2.*CUDA"):
        load_policy(_cfg(tiny, tmp_path, attn_implementation="flash_attention_2", device="cpu"))
    with pytest.raises(ValueError, match="torch_dtype"):
        _cfg(tiny, tmp_path, torch_dtype="int8")
    with pytest.raises(ValueError, match="device"):
        _cfg(tiny, tmp_path, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_a_cuda_device_on_a_cpu_only_machine_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(ValueError, match="device='cuda'.*no CUDA device"):
        load_policy(dataclasses.replace(_cfg(tiny, tmp_path), device="cuda"))
