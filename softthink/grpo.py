"""GRPO pieces: group advantages, k3 KL, PPO clip with dual clip, token-mean loss (verl's ``core_algos.py``).

Pure tensor functions with documented shapes, returning ``(loss, metrics)`` like verl's registered losses.

Loss normalisation: the loss of an optimiser step is the token mean (or the sequence mean) over *all* of the
step's completions, whatever their split into micro-batches and processes: each micro-batch's loss is its sum
divided by the step's total (:func:`loss_normalizer` summed over the micro-batches and all-reduced over the
processes). verl 0.4 (the stack of SofT-GRPO, arXiv 2511.06411; ``verl/trainer/ppo/core_algos.py``) divides each
micro-batch's own token mean by the number of micro-batches instead, which weighs the tokens of short micro-batches
more.

Unscorable completions (every reward function returned None, TRL's "not applicable") carry a NaN reward: they
are left out of their group's mean and std (:func:`group_advantages`, TRL's ``nanmean`` / ``nanstd``) and get
advantage 0; the trainer also leaves them out of the loss.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

__all__ = ["group_advantages", "k3_kl", "policy_loss", "masked_mean", "nanstd", "loss_normalizer", "LOSS_TYPES"]

#: ``loss_type`` values. Each optimiser step's loss is a sum over its loss tokens divided by a normaliser taken over
#: the whole step (all micro-batches and processes):
#:
#: * ``token_mean`` (default; verl ``token-mean``, TRL ``dapo``) and its TRL name ``bnpo``: sum / loss tokens;
#: * ``sequence_mean`` and its TRL name ``grpo``: per-completion token mean, summed, / completions with a loss token;
#: * ``dr_grpo`` (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783): sum / (completions x ``max_completion_length``), a
#:   constant, so that neither the length of a completion nor the group's number of tokens rescales its tokens.
#:
#: TRL normalises ``bnpo`` and ``dr_grpo`` per local micro-batch, so there its update depends on the micro-batch
#: split; here it does not (the same normalisation over the whole step).
LOSS_TYPES = ("token_mean", "sequence_mean", "grpo", "bnpo", "dr_grpo")
_ALIASES = {"grpo": "sequence_mean", "bnpo": "token_mean"}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(x * mask) / max(sum(mask), 1)`` over all elements."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def nanstd(x: torch.Tensor, dim: Optional[int] = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaN entries (TRL's ``nanstd``); NaN where fewer than 2 values.

    Args:
        x: float tensor, NaN = missing.
        dim: reduced dimension (None = all elements).
    Returns:
        The std over ``dim`` (a 0-d tensor when ``dim`` is None).
    """
    valid = ~torch.isnan(x)
    n = valid.sum() if dim is None else valid.sum(dim, keepdim=True)
    mean = x.nanmean() if dim is None else x.nanmean(dim, keepdim=True)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    ss = sq.sum() if dim is None else sq.sum(dim, keepdim=True)
    std = torch.sqrt(ss / (n - 1).clamp(min=0)).where(n > 1, torch.full_like(ss, float("nan")))
    return std if dim is None or keepdim else std.squeeze(dim)


def group_advantages(rewards: torch.Tensor, num_generations: int, *, scale: str = "group",
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages ``A_j = (R_j - mean_group) / (std_group + eps)`` (verl ``compute_grpo_outcome_advantage``).

    NaN rewards (unscorable completions: every reward function returned None) are left out of their group's mean
    and std, as TRL's ``nanmean`` / ``nanstd`` do, and get advantage 0; e.g. ``[nan, 1, 0, 1]`` gives
    ``[0, 0.577, -1.155, 0.577]``.

    Args:
        rewards: ``[N]`` float, groups of ``num_generations`` contiguous completions; NaN = unscorable.
        num_generations: group size G >= 2.
        scale: ``"group"`` (unbiased group std, verl/TRL default), ``"batch"`` (batch std) or ``"none"``.
        eps: added to the std.
    Returns:
        ``[N]`` float32 advantages; exactly 0 for unscorable completions and for every member of a group whose
        scorable rewards are all equal (or fewer than 2).
    Raises:
        ValueError: if ``N`` is not divisible by ``num_generations`` or G < 2.
    """
    n = rewards.numel()
    if num_generations < 2:
        raise ValueError(f"group_advantages: num_generations must be >= 2, got {num_generations}")
    if n % num_generations:
        raise ValueError(f"group_advantages: {n} rewards are not divisible by num_generations={num_generations}")
    r = rewards.float().view(-1, num_generations)
    valid = ~torch.isnan(r)
    adv = r - r.nanmean(-1, keepdim=True)
    if scale == "group":
        adv = adv / (nanstd(r, -1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (nanstd(r) + eps)
    elif scale != "none":
        raise ValueError(f"group_advantages: scale must be 'group', 'batch' or 'none', got {scale!r}")
    hi = r.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
    lo = r.masked_fill(~valid, float("inf")).amin(-1, keepdim=True)
    same = hi == lo  # all scorable rewards equal (one scorable completion included); all-NaN groups: adv NaN
    return torch.where(same | ~valid, torch.zeros_like(adv), adv).view(-1)


def k3_kl(ell: torch.Tensor, ell_ref: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Per-token k3 ("low_var_kl") estimate ``exp(d) - d - 1``, ``d = ell_ref - ell``, clamped to ``±clamp``.

    Shapes ``[B, L]`` (any broadcastable); >= 0 and 0 where ``ell == ell_ref`` (verl's ``low_var_kl``).
    """
    d = ell_ref - ell
    return (torch.exp(d) - d - 1.0).clamp(-clamp, clamp)


def loss_normalizer(mask: torch.Tensor, loss_type: str = "token_mean", *,
                    max_completion_length: Optional[int] = None) -> float:
    """The units a loss averages over (:data:`LOSS_TYPES`): loss tokens (``"token_mean"`` / ``"bnpo"``), sequences
    with at least one loss token (``"sequence_mean"`` / ``"grpo"``) or completions x ``max_completion_length``
    (``"dr_grpo"``) in ``mask [B, L]``. Sum it over a step's micro-batches (and processes) and pass the total to
    :func:`policy_loss` as ``normalizer``.

    Raises:
        ValueError: on an unknown ``loss_type``, or ``dr_grpo`` without ``max_completion_length``.
    """
    loss_type = _ALIASES.get(loss_type, loss_type)
    if loss_type == "token_mean":
        return float(mask.sum())
    if loss_type == "sequence_mean":
        return float((mask.sum(-1) > 0).sum())
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("loss_normalizer: loss_type 'dr_grpo' needs max_completion_length")
        return float(mask.shape[0] * int(max_completion_length))
    raise ValueError(f"policy_loss: loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}")


def policy_loss(
    ell: torch.Tensor,
    ell_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: Optional[float] = None,
    dual_clip_c: Optional[float] = 3.0,
    beta: float = 0.0,
    ell_ref: Optional[torch.Tensor] = None,
    kl_clamp: float = 10.0,
    loss_type: str = "token_mean",
    normalizer: Optional[float] = None,
    max_completion_length: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """PPO-clip loss with dual clip and k3 KL, aggregated per token or per sequence (verl ``compute_policy_loss``).

    ``r = exp(ell - ell_old)``; ``pg = max(-A r, -A clip(r, 1-eps, 1+eps_high))``; where ``A < 0``,
    ``pg = min(pg, -c A)``; ``loss = (agg(pg) + beta * agg(k3(ell, ell_ref))) / normalizer``, where ``agg`` sums
    over the masked tokens (``"token_mean"``) or sums the per-sequence token means (``"sequence_mean"``).

    Args:
        ell: ``[B, L]`` log-likelihoods under the current policy (differentiable).
        ell_old: ``[B, L]`` rollout-policy log-likelihoods (no gradient).
        advantages: ``[B]`` or ``[B, 1]`` per-completion advantages.
        mask: ``[B, L]`` bool/0-1, tokens that carry loss.
        ell_ref: ``[B, L]`` frozen-reference log-likelihoods; required when ``beta > 0``.
        loss_type: one of :data:`LOSS_TYPES`: ``"token_mean"`` / ``"bnpo"`` (mean over every loss token, verl
            ``token-mean``), ``"sequence_mean"`` / ``"grpo"`` (per-sequence token mean, then the mean over
            sequences) or ``"dr_grpo"`` (token sum over completions x ``max_completion_length``).
        normalizer: the optimiser step's total of :func:`loss_normalizer` over all its micro-batches (with
            gradients averaged over N processes: the all-reduced total divided by N), so that the micro-batch
            losses add up to the step's mean whatever the split; None = this batch's own total (the loss is then
            this batch's mean).
    Returns:
        ``(loss, metrics)``; metrics are this batch's own means (independent of ``normalizer``), as Python
        floats: ``policy_loss``, ``kl`` (with ``beta > 0``; same aggregation as the loss), and
        ``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (fractions of masked tokens).
    Raises:
        ValueError: if ``beta > 0`` and ``ell_ref`` is None, on an unknown ``loss_type``, or ``normalizer <= 0``.
    """
    eps_hi = epsilon if epsilon_high is None else epsilon_high
    own = max(loss_normalizer(mask, loss_type, max_completion_length=max_completion_length), 1.0)
    loss_type = _ALIASES.get(loss_type, loss_type)
    if normalizer is None:
        normalizer = own
    elif not normalizer > 0:
        raise ValueError(f"policy_loss: normalizer must be > 0, got {normalizer}")
    A = advantages.reshape(-1, 1).to(ell.dtype)
    mask_f = mask.to(ell.dtype)
    ratio = torch.exp(ell - ell_old.detach())
    pg1 = -A * ratio
    pg2 = -A * ratio.clamp(1.0 - epsilon, 1.0 + eps_hi)
    pg = torch.maximum(pg1, pg2)
    if dual_clip_c is not None:
        pg = torch.where(A < 0, torch.minimum(pg, -dual_clip_c * A), pg)

    def agg(x: torch.Tensor) -> torch.Tensor:
        if loss_type in ("token_mean", "dr_grpo"):
            return (x * mask_f).sum()
        return ((x * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1.0)).sum()

    total = agg(pg)
    metrics: Dict[str, float] = {"policy_loss": float(total.detach()) / own}
    if beta > 0:
        if ell_ref is None:
            raise ValueError("policy_loss: beta > 0 needs ell_ref (the frozen reference's log-likelihoods)")
        kl_total = agg(k3_kl(ell, ell_ref.detach(), kl_clamp))
        total = total + beta * kl_total
        metrics["kl"] = float(kl_total.detach()) / own
    with torch.no_grad():
        low = ((ratio < 1.0 - epsilon) & (A < 0)).to(ell.dtype)
        high = ((ratio > 1.0 + eps_hi) & (A > 0)).to(ell.dtype)
        metrics["clip_ratio/low_mean"] = float(masked_mean(low, mask_f))
        metrics["clip_ratio/high_mean"] = float(masked_mean(high, mask_f))
        metrics["clip_ratio/region_mean"] = float(masked_mean(low + high, mask_f))
    return total / normalizer, metrics
