"""bench/softgrpo_compare.py --smoke: trains and evaluates every method on a tiny random model and prints the table."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
