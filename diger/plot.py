"""``diger plot RUN_DIR``: codebook-health figures from a run's ``result.json``.

Code usage and collisions per epoch, the evidence for or against codebook collapse (DIGER, Fu et al., SIGIR 2026,
arXiv 2601.19711).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List


def plot_run(run_dir: str) -> List[str]:
    """Write ``codebook_usage.png`` (used codes and usage perplexity per level over epochs) and
    ``code_histogram.png`` (items per code, sorted, per level, at the end of training) into ``run_dir``.

    Returns:
        The paths written.

    Raises:
        FileNotFoundError: when ``run_dir/result.json`` is missing.
        ValueError: when the run has no codebook statistics (not a semantic-ID model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(run_dir) / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"no result.json in {run_dir}")
    result = json.loads(path.read_text())
    cb = result.get("codebook")
    if not cb:
        raise ValueError(f"{path}: no codebook statistics (model {result.get('model')!r} has no semantic IDs)")
    history = cb["history"] or [{"epoch": -1, **cb["final"]}]
    epochs = [h["epoch"] + 1 for h in history]
    n_levels = len(history[0]["levels"])
    k = len(history[0]["levels"][0].get("counts", [])) or None
    label = f"{result.get('model')} ({(result.get('semantic_ids') or {}).get('assign_mode') or 'frozen'})"
    out = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for lvl in range(n_levels):
        axes[0].plot(epochs, [h["levels"][lvl]["used"] for h in history], marker="o", label=f"level {lvl + 1}")
        axes[1].plot(epochs, [h["levels"][lvl]["perplexity"] for h in history], marker="o", label=f"level {lvl + 1}")
    axes[2].plot(epochs, [h.get("changed_frac", 0.0) for h in history], marker="o", color="k")
    from matplotlib.ticker import MaxNLocator

    xlabel = "epochs trained (0 = after pre-training)"  # log line "epoch e" is x = e + 1
    axes[0].set(title="used codes", xlabel=xlabel, ylabel=f"codes used (of {k})")
    axes[1].set(title="usage perplexity", xlabel=xlabel, ylabel="exp(entropy)")
    axes[2].set(title="items whose semantic ID changed", xlabel=xlabel, ylabel="share of items")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    fig.suptitle(label)
    fig.tight_layout()
    f1 = Path(run_dir) / "codebook_usage.png"
    fig.savefig(f1, dpi=110)
    plt.close(fig)
    out.append(str(f1))
    final = cb["final"]["levels"]
    fig, axes = plt.subplots(1, n_levels, figsize=(4.2 * n_levels, 3.4), squeeze=False)
    for lvl, lv in enumerate(final):
        counts = sorted(lv.get("counts", []), reverse=True)
        axes[0][lvl].bar(range(len(counts)), counts, width=1.0)
        axes[0][lvl].set(title=f"level {lvl + 1}: {lv['used']} used, {lv['dead']} dead", xlabel="code (sorted by use)",
                         ylabel="items")
    fig.suptitle(label)
    fig.tight_layout()
    f2 = Path(run_dir) / "code_histogram.png"
    fig.savefig(f2, dpi=110)
    plt.close(fig)
    out.append(str(f2))
    return out
