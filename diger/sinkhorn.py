"""Balanced code assignment with Sinkhorn-Knopp (DIGER, arXiv 2601.19711; official ``vq.py`` ``sinkhorn_algorithm``).

The assignment is balanced over the batch, so an item's code depends on the other items: run it on the whole
catalogue, in float64 and without noise, as ``Trainer.get_code`` of the official ``trainer.py`` does.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn_assign(distances: torch.Tensor, *, epsilon: float = 0.003, iters: int = 50) -> torch.Tensor:
    """Sinkhorn-balanced assignment over a whole distance matrix, in float64.

    ``d`` is normalised over the whole matrix to ``[-1, 1]`` (``mid = (max+min)/2``,
    ``amp = max - mid``), ``Q = exp(-d~ / epsilon)`` is alternately row- and column-normalised
    ``iters`` times (log domain, for stability at epsilon = 0.003), and the argmax per row is returned.

    Args:
        distances: ``[n, K]`` squared distances of ``n`` items to ``K`` codes (the full catalogue:
            the balance is over the rows given).
        epsilon: entropic regularisation (> 0); smaller is closer to a hard balanced assignment.
        iters: number of row/column normalisation rounds (>= 1).

    Returns:
        ``[n]`` long codes. Invariant to a positive rescaling of ``distances``.

    Raises:
        ValueError: for ``epsilon <= 0``, ``iters < 1`` or non-finite distances.
    """
    if epsilon <= 0 or iters < 1:
        raise ValueError(f"sinkhorn_assign: need epsilon > 0 and iters >= 1, got {epsilon}, {iters}")
    d = distances.detach().to(torch.float64)
    if not torch.isfinite(d).all():
        raise ValueError("sinkhorn_assign: non-finite distances")
    n, k = d.shape
    mid = (d.max() + d.min()) / 2
    amp = (d.max() - mid).clamp_min(1e-12)
    log_q = -((d - mid) / amp) / epsilon
    # Targets: each code receives n/K mass, each item mass 1 (rows sum to 1, columns to n/K).
    log_r = torch.zeros(n, dtype=torch.float64, device=d.device)
    log_c = torch.full((k,), torch.log(torch.tensor(n / k, dtype=torch.float64)).item(), dtype=torch.float64, device=d.device)
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + log_c
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) + log_r[:, None]
    return log_q.argmax(dim=1)
