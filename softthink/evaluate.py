"""Evaluation: N samples per held-out problem, pass@1 and the unbiased pass@k (SofT-GRPO, arXiv 2511.06411).

``pass@k = 1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021), computed in the stable product form
``1 - prod_{i=n-c+1}^{n} (1 - k / i)``; averaged over problems. ``k > n`` is an error, never clipped (the
official ``run_sglang_softthinking.py`` counts a problem solved if any of the first ``min(k, n)`` samples is).

Sample ``j`` of problem ``i`` draws from its own generator seeded with ``prompt_seed(seed, i, j)``
(:func:`softthink.distributed.prompt_seed`, as training seeds each prompt), so results do not depend on the batch
size. A sample is correct when the reward named by ``correctness_reward`` (or the only reward) is >= 1; it gets
exactly the arguments training gives it (:func:`softthink.rewards.score_completions`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .config import SoftGRPOConfig
from .distributed import prompt_seed
from .noise import make_noise
from diger.infra import atomic_write_text

from .prompts import completion_token_ids, dataset_rows, decode_completions, preview, tokenize_prompts
from .rewards import check_reward_columns, get_reward_funcs, score_completions
from .rollout import GroupGenerators, NonFiniteLogitsError, SoftRollout, Trajectory

__all__ = ["pass_at_k", "pass_at_k_binomial", "mode_config", "evaluate_model", "INFERENCE_MODES", "write_eval",
           "correctness_reward_name", "think_traces"]


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


#: Inference modes of ``softthink eval`` and the config fields each one sets (Soft Thinking, arXiv 2505.15778;
#: Gumbel soft thinking, Wu et al., arXiv 2508.03440; SofT-GRPO, arXiv 2511.06411). ``"discrete"`` and ``"soft"``
#: keep the run's own sampling settings (the training distribution).
INFERENCE_MODES: Dict[str, Dict[str, Any]] = {
    # ordinary token sampling, same think boundary / budget / answer prefix as the run
    "discrete": {"soft_thinking": False},
    # the run's own soft thinking (its noise variant and settings)
    "soft": {"soft_thinking": True},
    # plain Soft Thinking (Zhang et al. 2025): probability-weighted top-K embeddings, no noise, Cold Stop
    "soft_thinking": {"soft_thinking": True, "soft_noise": "none"},
    # Gumbel soft thinking, the paper's "no-finetune soft" / "GRPO soft" baseline (tau_g 0.5, K = top-k 30, T 0.6)
    "gumbel_soft": {"soft_thinking": True, "soft_noise": "gumbel", "gumbel_tau": 0.5, "soft_top_k": 30, "top_k": 30,
                    "top_p": 0.95, "temperature": 0.6, "after_thinking_temperature": 0.6,
                    "after_thinking_top_k": 30, "after_thinking_top_p": 0.95, "noise_scale": 1.0},
    # SofT-GRPO's own evaluation setting (tau_g 0.1, K = top-k 5, top-p 0.95, T 1.0)
    "softgrpo": {"soft_thinking": True, "soft_noise": "gumbel", "gumbel_tau": 0.1, "soft_top_k": 5, "top_k": 5,
                 "top_p": 0.95, "temperature": 1.0, "after_thinking_temperature": 1.0, "after_thinking_top_k": 5,
                 "after_thinking_top_p": 0.95, "noise_scale": 1.0},
}

#: Default Cold Stop threshold of the ``"soft_thinking"`` mode when the config has Cold Stop off (Soft Thinking's
#: example value ``early_stopping_entropy_threshold=0.01``).
DEFAULT_COLD_STOP_ENTROPY = 0.01

#: Fields written into ``eval.json["settings"]``.
SETTINGS_FIELDS = (
    "soft_thinking", "discrete_think", "soft_noise", "temperature", "top_k", "top_p", "min_p",
    "after_thinking_temperature", "after_thinking_top_k", "after_thinking_top_p", "after_thinking_min_p",
    "soft_top_k", "gumbel_tau", "noise_scale", "gumbel_clamp", "dirichlet_alpha", "gaussian_sigma",
    "embed_noise_std", "cold_stop_entropy", "cold_stop_steps", "think_end", "answer_prefix", "max_think_tokens",
    "max_completion_length", "dataset_name", "reward_funcs",
)


def mode_config(cfg: SoftGRPOConfig, mode: str, *, cold_stop_entropy: Optional[float] = None,
                cold_stop_steps: Optional[int] = None) -> SoftGRPOConfig:
    """The config of inference ``mode`` (one of :data:`INFERENCE_MODES`).

    Every mode keeps the run's think boundary, thinking budget and answer prefix. Cold Stop (thinking ends after
    ``cold_stop_steps`` consecutive steps whose entropy of ``softmax(logits / T)`` is below ``cold_stop_entropy``
    nats) is on in ``"soft_thinking"`` (default threshold :data:`DEFAULT_COLD_STOP_ENTROPY` when the config has
    it off) and off (0) in the other modes unless ``cold_stop_entropy`` is given.

    Raises:
        ValueError: on an unknown mode, or invalid Cold Stop values (from the config validation).
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"mode must be one of {sorted(INFERENCE_MODES)}, got {mode!r}")
    over = dict(INFERENCE_MODES[mode])
    if mode == "discrete":
        over["discrete_think"] = cfg.use_thinking
    if cfg.use_thinking or over.get("soft_thinking"):
        if mode == "soft_thinking":
            over["cold_stop_entropy"] = cfg.cold_stop_entropy or DEFAULT_COLD_STOP_ENTROPY
        else:
            over["cold_stop_entropy"] = 0.0 if mode != "soft" else cfg.cold_stop_entropy
    if cold_stop_entropy is not None:
        over["cold_stop_entropy"] = float(cold_stop_entropy)
    if cold_stop_steps is not None:
        over["cold_stop_steps"] = int(cold_stop_steps)
    return dataclasses.replace(cfg, **over)


def correctness_reward_name(cfg: SoftGRPOConfig) -> str:
    """The reward that decides correctness: ``cfg.correctness_reward``, or the only entry of ``cfg.reward_funcs``.

    Raises:
        ValueError: when ``reward_funcs`` lists several rewards and ``correctness_reward`` is not set.
    """
    if cfg.correctness_reward:
        return cfg.correctness_reward
    if len(cfg.reward_funcs) == 1:
        return cfg.reward_funcs[0]
    raise ValueError(f"reward_funcs={cfg.reward_funcs} lists several rewards; set correctness_reward (config key, or "
                     "`softthink eval --correctness-reward NAME`) to the one that scores correctness (a sample is "
                     "correct when it is >= 1)")


def think_traces(traj: Trajectory) -> List[tuple]:
    """Per completion, a hashable key of its thinking trace: the readable token and the mixed top-K ids of every
    thinking position (before the answer phase). Equal keys mean the same thinking."""
    think = traj.resp_mask & ~traj.answer_phase
    return [(tuple(traj.tok[b][think[b]].tolist()), tuple(map(tuple, traj.ids[b][think[b]].tolist())))
            for b in range(traj.tok.shape[0])]


def evaluate_model(model, tokenizer, cfg: SoftGRPOConfig, dataset, *, mode: str, num_samples: int,
                   ks: Sequence[int], batch_size: int = 32, seed: int = 0, progress: bool = True,
                   cold_stop_entropy: Optional[float] = None, cold_stop_steps: Optional[int] = None,
                   eos_token_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Sample ``num_samples`` completions per problem and score them.

    Args:
        dataset: rows with ``prompt`` and the columns the correctness reward reads (``answer`` / ``entry``).
        mode: one of :data:`INFERENCE_MODES` (:func:`mode_config`); its settings are recorded in
            ``result["settings"]``.
        cold_stop_entropy, cold_stop_steps: Cold Stop overrides (see :func:`mode_config`).
        eos_token_ids: forwarded to :class:`~softthink.rollout.SoftRollout`.
        ks: the k values of pass@k; each must be ``<= num_samples``.
        batch_size: completions generated per rollout batch (rounded down to a multiple of ``num_samples``
            when larger); it does not change the results (per-sample generators, see the module docstring).
        seed: sample ``j`` of problem ``i`` is drawn with ``prompt_seed(seed, i, j)``.
    Returns:
        A JSON-ready dict: ``pass@1``, ``pass@k`` per k, ``num_problems``, ``num_samples``, per-problem
        correct counts, ``correctness_reward``, ``think/distinct_traces`` (distinct thinking traces per problem;
        None without a thinking phase), mean completion length and the settings used. Warns when every problem's
        samples share one thinking trace (e.g. plain Soft Thinking: pass@k then measures only answer sampling).
    Raises:
        ValueError: if some ``k > num_samples``, the dataset is empty, lacks a column the correctness reward reads,
            or the correctness reward is ambiguous (:func:`correctness_reward_name`).
        RewardFunctionError: when the correctness reward fails (naming the problem's dataset row).
        NonFiniteLogitsError: NaN/inf logits (naming the problem's dataset row and the sample index).
    """
    ks = sorted(set(int(k) for k in ks))
    for k in ks:
        if k > num_samples:
            raise ValueError(f"--k {k} > --num-samples {num_samples}: pass@k needs k <= n")
        if k < 1:
            raise ValueError(f"--k values must be >= 1, got {k}")
    rows = dataset_rows(dataset, "evaluation dataset")
    mcfg = mode_config(cfg, mode, cold_stop_entropy=cold_stop_entropy, cold_stop_steps=cold_stop_steps)
    reward_name = correctness_reward_name(mcfg)
    reward = get_reward_funcs([reward_name])
    check_reward_columns(reward, [reward_name], rows[0].keys(), "the evaluation dataset")
    device = next(model.parameters()).device
    roll = SoftRollout(model, tokenizer, mcfg, eos_token_ids=eos_token_ids)
    n = num_samples
    per_batch = max(1, batch_size // n)
    counts: List[int] = []
    distinct: List[int] = []
    lengths: List[float] = []
    think_lens: List[float] = []
    n_cold = 0
    examples: List[Dict[str, Any]] = []
    t0 = time.time()
    from tqdm.auto import tqdm

    for i in tqdm(range(0, len(rows), per_batch), desc=f"eval {mode}", disable=not progress):
        chunk = rows[i : i + per_batch]
        rep = [r for r in chunk for _ in range(n)]
        row_ids = [i + j // n for j in range(len(rep))]
        pids, pmask = tokenize_prompts(tokenizer, [r["prompt"] for r in rep], mcfg.max_prompt_length, device,
                                       row_ids=row_ids)
        gens = GroupGenerators([torch.Generator(device=device).manual_seed(prompt_seed(seed, q, j))
                                for q in range(i, i + len(chunk)) for j in range(n)], [1] * len(rep))
        try:
            traj = roll.generate(pids, pmask, generator=gens)
        except NonFiniteLogitsError as exc:
            b = exc.rows[0]
            raise NonFiniteLogitsError(
                f"eval {mode}: {exc.what} at completion position {exc.position} of dataset row {row_ids[b]} "
                f"(prompt {preview(rep[b]['prompt'])}), sample {b % n} of {n}", exc.position, exc.rows,
                exc.what) from None
        texts = decode_completions(tokenizer, traj)
        vals = score_completions(reward, [reward_name], rep, texts, completion_token_ids(traj),
                                 think_end=mcfg.think_end, row_ids=row_ids)[:, 0]
        ok = (vals >= 1.0 - 1e-9).tolist()  # NaN (None, "not applicable") is not correct
        lengths.extend(traj.resp_mask.sum(1).float().tolist())
        think_lens.extend(traj.think_len.float().tolist())
        n_cold += int(traj.cold_stopped.sum())
        traces = think_traces(traj)
        for j in range(len(chunk)):
            counts.append(int(sum(ok[j * n : (j + 1) * n])))
            distinct.append(len(set(traces[j * n : (j + 1) * n])))
            if len(examples) < 5:
                examples.append({"question": chunk[j].get("question"), "answer": chunk[j].get("answer"),
                                 "completion": texts[j * n], "correct": ok[j * n]})
    thinks = mcfg.use_thinking
    if thinks and n > 1 and max(distinct) == 1:
        plain = mcfg.soft_thinking and not make_noise(mcfg).has_density
        why = " (plain Soft Thinking thinks deterministically)" if plain else ""
        warnings.warn(f"eval {mode}: all {n} samples of every problem share one thinking trace{why}, so pass@k "
                      "measures only the sampling of the answer", UserWarning, stacklevel=2)
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
        "correctness_reward": reward_name,
        "correct_counts": counts,
        "think/distinct_traces": distinct if thinks else None,
        "completions/mean_length": sum(lengths) / len(lengths),
        "think/mean_length": sum(think_lens) / len(think_lens),
        "think/cold_stop_rate": n_cold / len(think_lens),
        "seconds": time.time() - t0,
        "settings": {"mode": mode, "seed": seed, **{k: getattr(mcfg, k) for k in SETTINGS_FIELDS},
                     "correctness_reward": reward_name},
        "examples": examples,
    })
    return res


def write_eval(result: Dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as JSON atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    return path
