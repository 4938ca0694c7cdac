"""GRPO pieces: group advantages, k3 KL, PPO clip with dual clip, token-mean loss (SofT-GRPO-method.md §5, §6).

Pure tensor functions with documented shapes, returning ``(loss, metrics)`` like verl's registered losses.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

__all__ = ["group_advantages", "k3_kl", "policy_loss", "masked_mean"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(x * mask) / max(sum(mask), 1)`` over all elements."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def group_advantages(rewards: torch.Tensor, num_generations: int, *, scale: str = "group",
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages ``A_j = (R_j - mean_group) / (std_group + eps)`` (SofT-GRPO-method.md §6, §11.3.6).

    Args:
        rewards: ``[N]`` float, groups of ``num_generations`` contiguous completions.
        num_generations: group size G >= 2.
        scale: ``"group"`` (unbiased group std, verl/TRL default), ``"batch"`` (batch std) or ``"none"``.
        eps: added to the std.
    Returns:
        ``[N]`` float32 advantages; exactly 0 for every member of a group whose rewards are all equal.
    Raises:
        ValueError: if ``N`` is not divisible by ``num_generations`` or G < 2.
    """
    n = rewards.numel()
    if num_generations < 2:
        raise ValueError(f"group_advantages: num_generations must be >= 2, got {num_generations}")
    if n % num_generations:
        raise ValueError(f"group_advantages: {n} rewards are not divisible by num_generations={num_generations}")
    r = rewards.float().view(-1, num_generations)
    mean = r.mean(-1, keepdim=True)
    adv = r - mean
    if scale == "group":
        adv = adv / (r.std(-1, unbiased=True, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (r.std(unbiased=True) + eps)
    elif scale != "none":
        raise ValueError(f"group_advantages: scale must be 'group', 'batch' or 'none', got {scale!r}")
    same = (r == r[:, :1]).all(-1, keepdim=True)
    return torch.where(same, torch.zeros_like(adv), adv).view(-1)


def k3_kl(ell: torch.Tensor, ell_ref: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Per-token k3 ("low_var_kl") estimate ``exp(d) - d - 1``, ``d = ell_ref - ell``, clamped to ``±clamp``.

    Shapes ``[B, L]`` (any broadcastable); >= 0 and 0 where ``ell == ell_ref`` (SofT-GRPO-method.md §5).
    """
    d = ell_ref - ell
    return (torch.exp(d) - d - 1.0).clamp(-clamp, clamp)


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
    num_micro_batches: int = 1,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """PPO-clip loss with dual clip and k3 KL, aggregated per token (SofT-GRPO-method.md §5, §11.5).

    ``r = exp(ell - ell_old)``; ``pg = max(-A r, -A clip(r, 1-eps, 1+eps_high))``; where ``A < 0``,
    ``pg = min(pg, -c A)``; ``loss = agg(pg) + beta * agg(k3(ell, ell_ref))``, divided by ``num_micro_batches``.

    Args:
        ell: ``[B, L]`` log-likelihoods under the current policy (differentiable).
        ell_old: ``[B, L]`` rollout-policy log-likelihoods (no gradient).
        advantages: ``[B]`` or ``[B, 1]`` per-completion advantages.
        mask: ``[B, L]`` bool/0-1, tokens that carry loss.
        ell_ref: ``[B, L]`` frozen-reference log-likelihoods; required when ``beta > 0``.
        loss_type: ``"token_mean"`` (masked mean over all tokens of the micro-batch, verl ``token-mean``) or
            ``"sequence_mean"`` (per-sequence token mean, then mean: TRL ``grpo``).
    Returns:
        ``(loss, metrics)`` with metrics ``policy_loss``, ``kl``, ``clip_ratio/low_mean``,
        ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (fractions of masked tokens) as Python floats.
    Raises:
        ValueError: if ``beta > 0`` and ``ell_ref`` is None, or on an unknown ``loss_type``.
    """
    eps_hi = epsilon if epsilon_high is None else epsilon_high
    A = advantages.reshape(-1, 1).to(ell.dtype)
    mask_f = mask.to(ell.dtype)
    ratio = torch.exp(ell - ell_old.detach())
    pg1 = -A * ratio
    pg2 = -A * ratio.clamp(1.0 - epsilon, 1.0 + eps_hi)
    pg = torch.maximum(pg1, pg2)
    if dual_clip_c is not None:
        pg = torch.where(A < 0, torch.minimum(pg, -dual_clip_c * A), pg)

    def agg(x: torch.Tensor) -> torch.Tensor:
        if loss_type == "token_mean":
            return masked_mean(x, mask_f)
        if loss_type == "sequence_mean":
            per_seq = (x * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1.0)
            return per_seq.mean()
        raise ValueError(f"policy_loss: loss_type must be 'token_mean' or 'sequence_mean', got {loss_type!r}")

    loss = agg(pg)
    metrics: Dict[str, float] = {"policy_loss": float(loss.detach())}
    if beta > 0:
        if ell_ref is None:
            raise ValueError("policy_loss: beta > 0 needs ell_ref (the frozen reference's log-likelihoods)")
        kl = k3_kl(ell, ell_ref.detach(), kl_clamp)
        kl_term = agg(kl)
        loss = loss + beta * kl_term
        metrics["kl"] = float(kl_term.detach())
    with torch.no_grad():
        low = ((ratio < 1.0 - epsilon) & (A < 0)).to(ell.dtype)
        high = ((ratio > 1.0 + eps_hi) & (A > 0)).to(ell.dtype)
        metrics["clip_ratio/low_mean"] = float(masked_mean(low, mask_f))
        metrics["clip_ratio/high_mean"] = float(masked_mean(high, mask_f))
        metrics["clip_ratio/region_mean"] = float(masked_mean(low + high, mask_f))
    return loss / num_micro_batches, metrics
