"""The softthink bench scripts' small-size modes: they run and print their tables. No timing asserted.

bench/speed_soft.py --smoke times the rollouts and one GRPO step on a tiny random Qwen2; bench/softgrpo_compare.py
--smoke trains and evaluates every method on a tiny random model and prints the table.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.shared.bench_run import run_bench

ROOT = Path(__file__).resolve().parents[2]


def test_speed_soft_smoke():
    out = run_bench("bench/speed_soft.py", "--smoke")
    assert "ours, soft" in out and "HF generate" in out
    assert "| ours, discrete GRPO |" in out and "| ours, SofT-GRPO (Gumbel top-5) |" in out
    if importlib.util.find_spec("trl") is not None:
        assert "GRPOTrainer |" in out


def test_speed_soft_grpo_table_without_trl():
    """Without TRL (import blocked) the GRPO-step table still prints our rows and says TRL was skipped."""
    code = ("import runpy, sys; sys.modules['trl'] = None; "
            "sys.argv = ['bench/speed_soft.py', '--smoke', '--only', 'grpo']; "
            "runpy.run_path('bench/speed_soft.py', run_name='__main__')")
    out = run_bench("-c", code)
    assert "TRL: not installed" in out and "GRPOTrainer |" not in out
    assert "| ours, discrete GRPO |" in out and "| ours, SofT-GRPO (Gumbel top-5) |" in out


def test_softgrpo_compare_smoke(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "bench/softgrpo_compare.py", "--smoke", "--out", str(tmp_path / "cmp")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    for method in ("base", "grpo", "softgrpo", "embed"):
        for mode in ("discrete", "softgrpo"):
            assert f"| {method} | {mode} |" in out.stdout, out.stdout[-2000:]
    assert "pass@4" in out.stdout and "command:" in out.stdout
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(res["runs"]) == {"base", "grpo/seed0", "softgrpo/seed0", "embed/seed0"}
    s = res["runs"]["softgrpo/seed0"]["eval"]["softgrpo"]["settings"]
    assert (s["gumbel_tau"], s["soft_top_k"], s["top_p"]) == (0.1, 5, 0.95)


def test_soft_logprob_toy_smoke():
    out = run_bench("bench/soft_logprob_toy.py", "--smoke")
    for method in ("grpo", "softgrpo", "softgrpo_token", "softgrpo_hybrid"):
        assert f"| {method} | 2 |" in out
    assert "minus grpo (95% CI)" in out


def test_softgrpo_sft_smoke_and_worked_solutions(tmp_path):
    """bench/softgrpo_sft.py: worked solutions reproduce reasoning-gym's answers, the character tokenizer decodes
    exactly, and the smoke mode fits, trains, evaluates under the 4 settings and resumes from its JSON."""
    sys.path.insert(0, str(ROOT / "bench"))
    import softgrpo_sft as b

    rows = b.make_rows(50, seed=3)
    assert len(rows) == 50 and all(r["solution"].endswith("{" + r["answer"] + "}") for r in rows)
    assert b.worked_solution("57 + 87 - 70", "74") == "57+87=144 144-70=74</think>\\boxed{74}"
    tok = b.make_tokenizer()
    text = rows[0]["prompt"] + rows[0]["solution"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    out_json = tmp_path / "r.json"
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path / "tmp"))
    cmd = [sys.executable, "bench/softgrpo_sft.py", "--smoke", "--out", str(out_json)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    for ev in b.EVALS:
        assert f"evaluation `{ev}`" in first.stdout
    res = json.loads(out_json.read_text())
    assert {"base/0", "grpo/0", "softgrpo/0"} <= set(res) and len(res["grpo/0"]["reward"]) == 2
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert again.returncode == 0 and "done " not in again.stderr  # nothing re-run
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("bench-")]  # trainer folders removed


def test_softgrpo_compare_override_results_and_protocol_check(tmp_path):
    """--override reaches the config, --results holds the runs, and a rerun under another config is refused."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = tmp_path / "r.json"
    cmd = [sys.executable, "bench/softgrpo_compare.py", "--smoke", "--methods", "grpo,softgrpo_token",
           "--out", str(tmp_path / "cmp"), "--results", str(res)]
    out = subprocess.run(cmd + ["--override", "learning_rate=2e-3"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(res.read_text())
    assert r["config"]["learning_rate"] == 2e-3
    assert set(r["runs"]) == {"base", "grpo/seed0", "softgrpo_token/seed0"}
    assert "softgrpo_token - grpo, discrete inference (95% CI): pass@1" in out.stdout
    # --smoke implies --fresh, so the refusal of another configuration is checked on the function itself
    import runpy

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        mod = runpy.run_path(str(ROOT / "bench" / "softgrpo_compare.py"), run_name="softgrpo_compare_test")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    import pytest

    with pytest.raises(SystemExit, match="learning_rate"):
        mod["_check_protocol"](r["config"], {**r["config"], "learning_rate": 1e-5}, res)
    mod["_check_protocol"](r["config"], {**r["config"], "seed": 3, "output_dir": "elsewhere"}, res)  # per-run keys
    bad = subprocess.run(cmd + ["--override", "learning_rate"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600, env=env)
    assert bad.returncode != 0 and "--override expects KEY=VALUE" in bad.stderr
