"""``softthink plot RUN_DIR``: reward, completion length and KL over steps as PNG files (matplotlib)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from diger.infra import atomic_write

__all__ = ["read_metrics", "plot_run", "PLOTS"]

#: file name -> (metric, y label)
PLOTS = {
    "reward.png": ("reward", "mean reward"),
    "completion_length.png": ("completions/mean_length", "mean completion length (tokens)"),
    "kl.png": ("kl", "k3 KL to the reference (token mean)"),
    "eval_pass_at_k.png": ("eval/pass@", "held-out pass@k (validation during training)"),
}


def read_metrics(run_dir: str | Path) -> List[Dict[str, float]]:
    """Rows of ``<run_dir>/metrics.jsonl``.

    Raises:
        FileNotFoundError: if the file is missing; ValueError: if it has no rows or a malformed line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not JSON ({exc})") from None
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def plot_run(run_dir: str | Path) -> List[Path]:
    """Draw the figures of :data:`PLOTS` into ``run_dir`` (written atomically); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = []
    for name, (key, label) in PLOTS.items():
        if key.endswith("@"):  # a family of metrics (eval/pass@1, eval/pass@4, ...): one line each, if any
            keys = sorted({k for r in rows for k in r if k.startswith(key)}, key=lambda k: int(k[len(key):]))
            if not keys:
                continue
        else:
            keys = [key]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k in keys:
            xs = [r["step"] for r in rows if k in r and r[k] is not None]
            ys = [r[k] for r in rows if k in r and r[k] is not None]
            ax.plot(xs, ys, marker="o", ms=3, label=k if len(keys) > 1 or k != key else None)
        if len(keys) > 1 or keys[0] != key:
            ax.legend(loc="best")
        if key == "reward" and any("reward_std" in r for r in rows):
            xs = [r["step"] for r in rows if key in r and r[key] is not None]
            ys = [r[key] for r in rows if key in r and r[key] is not None]
            sd = [r.get("reward_std", 0.0) for r in rows if key in r]
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.2,
                            label="± mean group std")
            ax.legend(loc="best")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{run_dir.name}: {key}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_write(run_dir / name, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
        plt.close(fig)
        out.append(run_dir / name)
    return out
