"""Helpers shared by the bench scripts: machine/version header, markdown tables, paired confidence intervals, the
toy dataset."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Dict, List, Sequence


def header(command: str) -> str:
    """Command, versions and machine, printed above every table."""
    import torch
    import transformers

    try:
        import recbole

        rb = recbole.__version__
    except Exception:  # pragma: no cover
        rb = "n/a"
    cpu = platform.processor() or platform.machine()
    return (f"command: `{command}`\n"
            f"versions: python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"recbole {rb}\n"
            f"machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"{'cuda ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def paired_ci(diffs: Sequence[float], level: float = 0.95):
    """Mean of paired differences (one per seed) and its two-sided Student-t confidence interval.

    Returns ``(mean, low, high)``; the bounds are NaN for fewer than 2 pairs.
    """
    import math
    import statistics

    from scipy.stats import t

    n = len(diffs)
    m = statistics.mean(diffs)
    if n < 2:
        return m, float("nan"), float("nan")
    half = float(t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return m, m - half, m + half


def table(rows: List[Dict], cols: Sequence[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def toy_dataset(root: Path) -> Dict:
    """Write the synthetic test dataset (diger/testing.py) and return its small config."""
    from diger.testing import small_config, write_dataset

    write_dataset(root)
    return small_config(root)
