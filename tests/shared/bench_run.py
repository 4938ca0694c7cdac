"""Run a bench script the way a user does, in a subprocess, under a private ``TMPDIR``: the smoke tests of both
packages use it to check that a bench exits 0 and leaves none of its temporary run folders behind."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args, prefix: str = "bench-", timeout: float = 600) -> str:
    """stdout of ``python *args`` run from the repository root; fails the test on a non-zero exit status (with the
    stderr tail) or when a folder named ``prefix*`` is left in the private ``TMPDIR``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                             env={**os.environ, "TMPDIR": tmp})
        assert out.returncode == 0, out.stderr[-3000:]
        left = [p.name for p in Path(tmp).iterdir() if p.name.startswith(prefix)]
        assert not left, f"{args[0]} left its temporary folders behind: {left}"
    return out.stdout
