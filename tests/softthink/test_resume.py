"""``softthink train --resume RUN_DIR``: a run SIGKILLed mid-step and resumed ends exactly as an uninterrupted
run with the same seed; a finished run is left as it is; a truncated checkpoint gives a one-line error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from softthink.checkpoint import CheckpointError, load_checkpoint
from softthink.cli import main
from softthink.testing import make_model, save_tiny_model

ROOT = Path(__file__).resolve().parents[2]  # on PYTHONPATH: the reward is "tests.softthink.helpers...."
TIMING = ("step_time", "rollout_time")


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    """A tiny random Qwen2 + byte-level BPE saved to disk, and a YAML config on reasoning-gym problems with a
    graded reward given by import path (4 steps, a checkpoint after every step)."""
    d = tmp_path_factory.mktemp("resume")
    save_tiny_model(d / "model")
    cfg = dict(model_name_or_path=str(d / "model"), dataset_name="basic_arithmetic", dataset_size=12,
               eval_dataset_size=0, num_generations=4, generation_batch_size=8, per_device_train_batch_size=4,
               gradient_accumulation_steps=1, max_completion_length=6, max_think_tokens=3, learning_rate=1e-2,
               beta=0.01, max_steps=4, save_steps=1, seed=1, torch_num_threads=1, logging_steps=100,
               reward_funcs=["tests.softthink.helpers.frac_low_ids_reward"], max_prompt_length=200)
    path = d / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return d, path


def _weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def _metrics(run_dir: Path):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_killed_run_resumes_to_the_uninterrupted_result(run_config, capsys):
    d, cfg = run_config
    full, killed = d / "full", d / "killed"
    assert main(["train", "--config", str(cfg), "--set", f"output_dir={full}"]) == 0

    env = {**os.environ, "SOFTTHINK_TEST_KILL_AT": "3", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "softthink", "train", "--config", str(cfg), "--set",
                           f"output_dir={killed}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILLed inside step 3's reward call
    assert load_checkpoint(killed / "last.pth")["global_step"] == 2
    assert len(_metrics(killed)) == 2 and not (killed / "model").exists()
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".tmp-") or p.suffix == ".tmp"]

    assert main(["train", "--resume", str(killed)]) == 0
    assert _metrics(killed) == _metrics(full)
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from"].endswith("last.pth")

    # resuming the finished run trains nothing and leaves its metrics and weights as they are
    assert main(["train", "--resume", str(full)]) == 0
    assert _metrics(full) == _metrics(killed)
    assert all(torch.equal(a[k], v) for k, v in _weights(full).items())


def test_resume_errors_name_the_file(run_config, tmp_path, capsys):
    d, cfg = run_config
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--set", f"output_dir={run_dir}", "max_steps=1",
                 "save_model=false"]) == 0
    last = run_dir / "last.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint .*last\.pth") as ei:
        load_checkpoint(last)
    assert "\n" not in str(ei.value)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softthink: error: cannot load checkpoint") and str(last) in err and "\n" not in err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "run.json not found" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--config", str(cfg)]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_lora_resume_restores_adapter_optimizer_rng_and_prompt_order(tmp_path):
    """In-process: 1 step + checkpoint, then a fresh trainer loads it and runs 2 more steps (a different prompt
    order per step: 4 prompts, 2 per step) == 3 uninterrupted steps, for a LoRA adapter (only the adapter is in
    the checkpoint)."""
    from softthink.trainer import SoftGRPOTrainer
    from softthink.testing import base_config, make_tokenizer
    from tests.softthink.helpers import frac_low_ids_reward

    prompts = [f"w{5 + i} w{20 + i} w{40 + i}" for i in range(4)]

    def trainer(out, max_steps):
        cfg = base_config(max_steps=max_steps, output_dir=str(out), learning_rate=1e-2, beta=0.01, use_peft=True,
                          lora_r=4, lora_alpha=8, max_completion_length=6, save_steps=1, save_model=False)
        return SoftGRPOTrainer(make_model(seed=0), make_tokenizer(), cfg, [{"prompt": p} for p in prompts],
                               reward_funcs=[frac_low_ids_reward])

    full = trainer(tmp_path / "full", 3)
    hist = full.train()
    part = trainer(tmp_path / "part", 1)
    part.train()
    ck = load_checkpoint(tmp_path / "part" / "last.pth")
    assert ck["model"] and all("lora_" in k for k in ck["model"])  # only the adapter
    rest = trainer(tmp_path / "part", 3)
    rest.load_checkpoint(tmp_path / "part" / "last.pth")
    hist2 = rest.train()
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]  # noqa: E731
    assert strip(hist2) == strip(hist)
    a = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in rest.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
