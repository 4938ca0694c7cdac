"""Per-step sampling pieces: filtered distributions, embedding mixtures, the Gumbel soft-token density (the soft
tokens themselves are drawn by the noise variants of :mod:`softthink.noise`).

SofT-GRPO's rollout sampling (Zheng & Lee, arXiv 2511.06411; official code ``zz1358m/SofT-GRPO-master``, the
Soft-Thinking SGLang fork's ``sglang/srt/layers/sampler.py``). All noise and densities come from the shared core
:mod:`diger.gumbel`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from diger.gumbel import gumbel_log_density

__all__ = ["filter_distribution", "filter_sparse", "mix_embeddings", "gumbel_density_mean", "soft_token_loglik"]


def filter_distribution(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """Filtered next-token probabilities (SofT-GRPO, arXiv 2511.06411; official ``sampler.py``).

    ``softmax(logits / T)`` in float32; keep the ``top_k`` largest (0 = all) and renormalise; then keep the
    smallest prefix whose mass *before* each token is ``< top_p`` and renormalise; then drop tokens below
    ``min_p * max p`` (0 = off) and renormalise. Parity order: top-k, then top-p.

    Args:
        logits: ``[B, V]``.
    Returns:
        ``[B, V]`` float32 probabilities with zeros outside the kept set; every row keeps its argmax.
    """
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_k and top_k < probs.shape[-1]:
        # Fast path: only the top-k entries can survive, so filter those and scatter them back.
        vals, idx = probs.topk(top_k, dim=-1)  # sorted descending
        vals = vals / vals.sum(-1, keepdim=True)
        if top_p < 1.0:
            vals = torch.where(vals.cumsum(-1) - vals < top_p, vals, torch.zeros_like(vals))
            vals = vals / vals.sum(-1, keepdim=True)
        if min_p > 0.0:
            vals = torch.where(vals >= vals[..., :1] * min_p, vals, torch.zeros_like(vals))
            vals = vals / vals.sum(-1, keepdim=True)
        return torch.zeros_like(probs).scatter_(-1, idx, vals)
    if top_k and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        before = sp.cumsum(-1) - sp
        keep_sorted = before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, si, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    if min_p > 0.0:
        thr = probs.max(-1, keepdim=True).values * min_p
        probs = torch.where(probs >= thr, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def filter_sparse(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Filtered distribution as ``(probs [B, k], ids [B, k])`` with zeros for dropped entries.

    Same values as :func:`filter_distribution`; with ``0 < top_k < V`` only the ``top_k`` columns are kept
    (sorted descending), which makes sampling cheap for large vocabularies. Otherwise all ``V`` columns are
    returned in vocabulary order (``ids = arange(V)``).
    """
    probs = filter_distribution(logits, temperature, top_k, top_p, min_p)
    if top_k and top_k < probs.shape[-1]:
        return probs.topk(top_k, dim=-1)
    idx = torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    return probs, idx


def mix_embeddings(embed: torch.nn.Module, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Embedding mixture ``sum_i w_i * embed(ids_i)`` (Soft Thinking, arXiv 2505.15778; SofT-GRPO, 2511.06411).

    The official code mixes in ``weighted_forward`` of ``sglang/srt/layers/vocab_parallel_embedding.py``.

    Uses the model's input-embedding *module* (not its raw weight) so models that scale embeddings inside
    the module (e.g. Gemma) get the same inputs as for ordinary tokens.

    Args:
        embed: ``model.get_input_embeddings()``.
        ids: ``[..., K]`` long.
        w: ``[..., K]`` weights (cast to the embedding dtype).
    Returns:
        ``[..., D]`` mixed embeddings.
    """
    e = embed(ids)  # [..., K, D]
    return (w.to(e.dtype).unsqueeze(-1) * e).sum(-2)


def gumbel_density_mean(
    lp: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    clamp: Optional[Tuple[float, float]],
    noise_scale: float = 1.0,
    reduce: str = "mean",
) -> torch.Tensor:
    """Gumbel log-density of the recovered noise, reduced over the kept ids (SofT-GRPO, arXiv 2511.06411).

    ``g' = clamp((y - lp) / beta, lo, hi)``; ``log f = -g' - exp(-g') - log(beta)``
    (:func:`diger.gumbel.gumbel_log_density`); result ``sum(mask * log f) / max(sum mask, 1)`` (``"mean"``,
    the paper) or ``sum(mask * log f)`` (``"sum"``). With the clamp inactive, each term equals
    ``torch.distributions.Gumbel(lp, beta).log_prob(y)``; ``d/d lp_i = (1 - exp(-g'_i)) / (beta |M|)`` inside the
    clamp range and 0 where the clamp is active.

    Args:
        lp: ``[..., K]`` renormalised log-probabilities of the recorded ids under the current model.
        y: ``[..., K]`` recorded perturbed log-probabilities.
        mask: ``[..., K]`` bool, ids that count (treated as constant).
    Returns:
        ``[...]`` float32.
    Raises:
        ValueError: on ``noise_scale <= 0`` or an unknown ``reduce``.
    """
    if noise_scale <= 0:
        raise ValueError(f"gumbel density: noise_scale must be > 0, got {noise_scale} (noiseless soft tokens "
                         "have no density)")
    z = (y.float() - lp.float()) / noise_scale
    if clamp is not None:
        z = z.clamp(clamp[0], clamp[1])
    dens = gumbel_log_density(z, 0.0, 1.0) - math.log(noise_scale)
    m = mask.detach().to(dens.dtype)
    total = (dens * m).sum(-1)
    if reduce == "mean":
        return total / m.sum(-1).clamp(min=1.0)
    if reduce == "sum":
        return total
    raise ValueError(f"density_reduce must be 'mean' or 'sum', got {reduce!r}")


def soft_token_loglik(
    lk: torch.Tensor,
    y: torch.Tensor,
    support: torch.Tensor,
    *,
    clamp: Optional[Tuple[float, float]],
    eps: float,
    mask_threshold: float,
    noise_scale: float = 1.0,
    reduce: str = "mean",
    renorm_support: str = "topk",
) -> torch.Tensor:
    """Soft-token log-likelihood from the logits of the recorded ids (SofT-GRPO, arXiv 2511.06411).

    ``lp~ = log(softmax(lk) + eps)`` with the softmax over the K recorded ids (``renorm_support="topk"``, the
    paper) or over the rollout support only (``"rollout_support"``; the full-vocabulary normaliser cancels
    either way); mask ``m = lp~ > mask_threshold`` (and ``support`` under ``"rollout_support"``); then
    :func:`gumbel_density_mean`. Official code: ``logprobs_from_logits_topk_gumbel`` in
    ``verl/utils/torch_functional.py``.

    Args:
        lk: ``[..., K]`` logits (already divided by the temperature) of the recorded ids.
        y: ``[..., K]`` recorded perturbed log-probabilities.
        support: ``[..., K]`` bool rollout support.
    Returns:
        ``[...]`` float32 log-likelihood, differentiable w.r.t. ``lk``.
    Raises:
        ValueError: on ``noise_scale <= 0`` or an unknown option.
    """
    lk = lk.float()
    if renorm_support == "rollout_support":
        lk = lk.masked_fill(~support, float("-inf"))
    elif renorm_support != "topk":
        raise ValueError(f"renorm_support must be 'topk' or 'rollout_support', got {renorm_support!r}")
    lp = torch.log(F.softmax(lk, dim=-1) + eps)
    m = lp > mask_threshold
    if renorm_support == "rollout_support":
        m = m & support
    return gumbel_density_mean(lp, y, m, clamp=clamp, noise_scale=noise_scale, reduce=reduce)
