"""Evaluation: N samples per held-out problem, pass@1 and the unbiased pass@k (SofT-GRPO-method.md §8).

``pass@k = 1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021), computed in the stable product form
``1 - prod_{i=n-c+1}^{n} (1 - k / i)``; averaged over problems. ``k > n`` is an error, never clipped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .config import SoftGRPOConfig
from .rewards import get_reward_funcs
from .rollout import SoftRollout
from .trainer import _is_conversational, atomic_write_text, decode_completions, tokenize_prompts

__all__ = ["pass_at_k", "pass_at_k_binomial", "mode_config", "evaluate_model"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct.

    Raises:
        ValueError: if ``k > n``, ``k < 1`` or ``c`` is outside ``[0, n]``.
    """
    if not (1 <= k):
        raise ValueError(f"pass@k: k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass@k: k={k} > n={n} samples; draw at least k samples per problem")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: c={c} must be in [0, n={n}]")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_binomial(n: int, c: int, k: int) -> float:
    """``1 - C(n-c, k) / C(n, k)`` with exact binomials (reference form of :func:`pass_at_k`)."""
    if k > n:
        raise ValueError(f"pass@k: k={k} > n={n} samples")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mode_config(cfg: SoftGRPOConfig, mode: str) -> SoftGRPOConfig:
    """The config for inference ``mode``: ``"soft"`` (Gumbel soft thinking) or ``"discrete"`` (ordinary sampling
    with the same think boundary, budget and answer prefix).

    Raises:
        ValueError: on an unknown mode.
    """
    if mode == "soft":
        return dataclasses.replace(cfg, soft_thinking=True)
    if mode == "discrete":
        return dataclasses.replace(cfg, soft_thinking=False, discrete_think=cfg.use_thinking)
    raise ValueError(f"mode must be 'soft' or 'discrete', got {mode!r}")


def evaluate_model(model, tokenizer, cfg: SoftGRPOConfig, dataset, *, mode: str, num_samples: int,
                   ks: Sequence[int], batch_size: int = 32, seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Sample ``num_samples`` completions per problem and score them.

    Args:
        dataset: rows with ``prompt`` and the reward's columns (``answer`` / ``entry``).
        mode: ``"soft"`` or ``"discrete"`` (:func:`mode_config`).
        ks: the k values of pass@k; each must be ``<= num_samples``.
        batch_size: completions generated per rollout batch (rounded down to a multiple of ``num_samples``
            when larger).
    Returns:
        A JSON-ready dict: ``pass@1``, ``pass@k`` per k, ``num_problems``, ``num_samples``, per-problem
        correct counts, mean completion length and the settings used.
    Raises:
        ValueError: if some ``k > num_samples`` or the dataset is empty. A sample counts as correct when the
            first configured reward is >= 1.
    """
    ks = sorted(set(int(k) for k in ks))
    for k in ks:
        if k > num_samples:
            raise ValueError(f"--k {k} > --num-samples {num_samples}: pass@k needs k <= n")
        if k < 1:
            raise ValueError(f"--k values must be >= 1, got {k}")
    rows = [dict(r) for r in dataset]
    if not rows:
        raise ValueError("evaluation dataset is empty")
    mcfg = mode_config(cfg, mode)
    reward = get_reward_funcs(mcfg.reward_funcs[:1])[0]
    device = next(model.parameters()).device
    roll = SoftRollout(model, tokenizer, mcfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    per_batch = max(1, batch_size // num_samples)
    counts: List[int] = []
    lengths: List[float] = []
    examples: List[Dict[str, Any]] = []
    t0 = time.time()
    from tqdm.auto import tqdm

    for i in tqdm(range(0, len(rows), per_batch), desc=f"eval {mode}", disable=not progress):
        chunk = rows[i : i + per_batch]
        rep = [r for r in chunk for _ in range(num_samples)]
        pids, pmask = tokenize_prompts(tokenizer, [r["prompt"] for r in rep], mcfg.max_prompt_length, device)
        traj = roll.generate(pids, pmask, generator=gen)
        texts = decode_completions(tokenizer, traj)
        conv = _is_conversational(rep[0]["prompt"])
        comps = [[{"role": "assistant", "content": t}] for t in texts] if conv else texts
        cols = {k: [r[k] for r in rep] for k in rep[0] if k != "prompt"}
        vals = reward(prompts=[r["prompt"] for r in rep], completions=comps, think_end=mcfg.think_end, **cols)
        ok = [v is not None and v >= 1.0 - 1e-9 for v in vals]
        lengths.extend(traj.resp_mask.sum(1).float().tolist())
        for j in range(len(chunk)):
            counts.append(int(sum(ok[j * num_samples : (j + 1) * num_samples])))
            if len(examples) < 5:
                examples.append({"question": chunk[j].get("question"), "answer": chunk[j].get("answer"),
                                 "completion": texts[j * num_samples], "correct": ok[j * num_samples]})
    n = num_samples
    res: Dict[str, Any] = {
        "mode": mode,
        "num_problems": len(counts),
        "num_samples": n,
        "pass@1": sum(c / n for c in counts) / len(counts),
        # group statistics: problems where all n samples are wrong / right (GRPO gets no signal there)
        "frac_problems_all_wrong": sum(c == 0 for c in counts) / len(counts),
        "frac_problems_all_right": sum(c == n for c in counts) / len(counts),
    }
    for k in ks:
        res[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in counts) / len(counts)
    res.update({
        "estimator": "unbiased (Chen et al. 2021)",
        "correct_counts": counts,
        "completions/mean_length": sum(lengths) / len(lengths),
        "seconds": time.time() - t0,
        "settings": {k: getattr(mcfg, k) for k in (
            "soft_thinking", "discrete_think", "temperature", "top_k", "top_p", "after_thinking_temperature",
            "after_thinking_top_k", "after_thinking_top_p", "soft_top_k", "gumbel_tau", "noise_scale",
            "think_end", "answer_prefix", "max_think_tokens", "max_completion_length", "dataset_name",
            "reward_funcs")},
        "examples": examples,
    })
    return res


def write_eval(result: Dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as JSON atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    return path
