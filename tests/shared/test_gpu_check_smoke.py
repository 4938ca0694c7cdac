"""bench/gpu_check.py: its code paths on the CPU with tiny models (--smoke), and a clean skip without CUDA."""
import subprocess
import sys
from pathlib import Path

import torch

from tests.shared.bench_run import run_bench

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_prints_one_table_of_both_packages():
    out = run_bench("bench/gpu_check.py", "--smoke", prefix="gpu-check-")  # its work folder is removed
    for check in ("softthink train", "softthink eval", "diger TIGER", "diger DIGER"):
        assert f"| {check} |" in out
    assert "completion tokens/s" in out and "beam-search users/s" in out


def test_gpu_check_skips_without_cuda():
    if torch.cuda.is_available():
        return
    import os

    # this interpreter, also when the venv is not on PATH (e.g. `.venv/bin/python -m pytest`)
    out = subprocess.run(["bash", "bench/gpu_check.sh"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0 and "no CUDA device: the GPU check was skipped" in out.stdout
