"""LoRA through peft: only adapter weights change, base weights stay bitwise equal, only the adapter is saved."""
import pytest
import torch

from softthink.trainer import SoftGRPOTrainer
from softthink.testing import base_config, make_model, make_tokenizer

torch.set_num_threads(1)

PROMPTS = ["w5 w6 w7 w8 w9", "w10 w11", "w12 w13 w14 w15 w16", "w20 w21 w22 w23 w24"]


def _reward(prompts, completions, completion_ids, **kw):
    return [float(i % 2) for i in range(len(prompts))]


@pytest.mark.parametrize("how", ["config_fields", "peft_config_argument"])
def test_lora_run_changes_only_adapter_weights(tmp_path, how):
    from peft import LoraConfig

    tok, model = make_tokenizer(), make_model(seed=0)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kw = dict(use_peft=True, lora_r=4, lora_alpha=8) if how == "config_fields" else {}
    cfg = base_config(max_steps=2, output_dir=str(tmp_path / "run"), learning_rate=1e-2, beta=0.01,
                      max_completion_length=10, **kw)
    peft_config = None if how == "config_fields" else LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                  task_type="CAUSAL_LM")
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS * 2], reward_funcs=[_reward],
                         peft_config=peft_config)
    assert tr.is_peft and tr.ref_model is None  # reference = adapter disabled
    lora_before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before)
    hist = tr.train()
    assert len(hist) == 2 and hist[-1]["kl"] >= 0.0
    # base weights: bitwise equal (the peft wrapper shares the original modules)
    for name, p in tr.model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, base_state[key]), name
    changed = [n for n, p in tr.model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert changed, "no adapter weight changed"
    # only the adapter is saved, and it loads back on top of its base model
    saved = tmp_path / "run" / "model"
    files = {p.name for p in saved.iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert "model.safetensors" not in files and "pytorch_model.bin" not in files


def test_saved_adapter_loads_on_its_base(tmp_path):
    from peft import LoraConfig

    from softthink.models import load_model_and_tokenizer

    tok, model = make_tokenizer(), make_model(seed=0)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    model = load_model_and_tokenizer(str(tmp_path / "base"))[0]
    cfg = base_config(max_steps=1, output_dir=str(tmp_path / "run"), learning_rate=1e-2, max_completion_length=8)
    tr = SoftGRPOTrainer(model, tok, cfg, [{"prompt": p} for p in PROMPTS * 2], reward_funcs=[_reward],
                         peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    tr.train()
    loaded, _ = load_model_and_tokenizer(str(tmp_path / "run" / "model"))
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, tr.model(input_ids=x).logits)


def test_cli_lora_train_then_eval_run_dir(tmp_path):
    import json

    import yaml

    from softthink.cli import main
    from softthink.testing import save_tiny_model

    save_tiny_model(tmp_path / "tiny")
    cfg = dict(model_name_or_path=str(tmp_path / "tiny"), output_dir=str(tmp_path / "run"), max_steps=1,
               num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
               gradient_accumulation_steps=1, max_completion_length=8, max_think_tokens=3, dataset_size=16,
               eval_dataset_size=2, torch_num_threads=1, learning_rate=1e-3, use_peft=True, lora_r=2,
               dataset_kwargs=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1), reward_funcs=["task_scorer"])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    assert (tmp_path / "run" / "model" / "adapter_config.json").is_file()
    assert not (tmp_path / "run" / "model" / "model.safetensors").exists()
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "run"), "--mode", "softgrpo", "--num-samples", "2", "--k", "1,2",
                 "--output", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["mode"] == "softgrpo"
