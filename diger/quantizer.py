"""One residual-quantisation level: distances, code assignment in every mode, VQ loss (DIGER, arXiv 2601.19711)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .decay import ASSIGN_MODES, UncertaintyDecay
from .gumbel import gumbel_softmax, straight_through
from .sinkhorn import sinkhorn_assign


@dataclass
class LevelOut:
    """Output of :meth:`VectorQuantizer.assign` for ``n`` residuals at one level.

    Attributes:
        index: ``[n]`` code used in the forward pass (sampled for noisy assignments).
        c_det: ``[n]`` deterministic code ``argmin`` distance.
        p_soft: ``[n, K]`` soft assignment carrying the backward pass (noisy softmax for noisy rows).
        y_st: ``[n, K]`` straight-through one-hot (forward ``index``, backward ``p_soft``).
        q: ``[n, d]`` quantised vector ``y_st @ E`` (``ste``: ``r + sg(E[idx] - r)``).
        vq_loss: ``[n]`` ``||sg(r) - q||^2/d + beta ||r - sg(q)||^2/d``.
        noise_scale: ``[n]`` the noise scale each assignment got (0 = deterministic).
    """

    index: torch.Tensor
    c_det: torch.Tensor
    p_soft: torch.Tensor
    y_st: torch.Tensor
    q: torch.Tensor
    vq_loss: torch.Tensor
    noise_scale: torch.Tensor


class VectorQuantizer(nn.Module):
    """Codebook ``E [K, d]`` of one level with DIGER's assignment modes and ablation arms (official ``vq.py``).

    Modes: ``ste`` (classic VQ straight-through), ``det_softmax_st`` (softmax straight-through, no
    noise), ``gumbel`` / ``frqud`` / ``sdud`` / ``sdud_frqud`` (Gumbel straight-through with the
    noise scale given by the :class:`~diger.decay.UncertaintyDecay` strategy). Logits are negative
    squared L2 distances (``logit_source="raw"``, the ``true_e2e`` path). In eval mode no noise is
    added, so every mode assigns the argmin-distance code.

    Raises:
        ValueError: for ``codebook_size < 2``, ``tau <= 0`` or an unknown mode.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook size must be >= 2, got {codebook_size}")
        self.codebook_size, self.dim, self.beta = int(codebook_size), int(dim), float(beta)
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def distances(self, r: torch.Tensor) -> torch.Tensor:
        """``[n, K]`` squared L2 distances ``||r||^2 + ||e_k||^2 - 2 r.e_k`` for ``r [n, d]``."""
        e = self.embedding.weight
        return (r * r).sum(-1, keepdim=True) + (e * e).sum(-1)[None, :] - 2.0 * r @ e.t()

    def assign(
        self,
        r: torch.Tensor,
        *,
        mode: str,
        tau: float = 2.0,
        level: int = 0,
        decay: Optional[UncertaintyDecay] = None,
        generator: Optional[torch.Generator] = None,
        logit_source: str = "raw",
        sk_epsilon: float = 0.003,
        sk_iters: int = 50,
        noise_mult: float = 1.0,
    ) -> LevelOut:
        """Assign residuals ``r [n, d]`` to codes (straight-through Gumbel-softmax of DIGER, arXiv 2601.19711).

        ``logit_source="raw"`` (``true_e2e``): logits ``-d``, deterministic code ``argmin d``.
        ``"normalized"``: logits ``-d~`` (batch-normalised to ``[-1, 1]``), code ``argmin d``.
        ``"sinkhorn_normalized"`` (``historical`` parity: the official ``vq.py`` with ``sk_epsilon > 0``): logits
        ``-d~`` with ``d`` normalised over the batch to ``[-1, 1]``, deterministic code = Sinkhorn argmax over
        the batch.
        ``noise_mult`` multiplies every noise scale of ``decay`` (1.0 = the paper's unit Gumbel noise).
        """
        if mode not in ASSIGN_MODES:
            raise ValueError(f"unknown assign_mode {mode!r}; expected one of {list(ASSIGN_MODES)}")
        if not tau > 0:
            raise ValueError(f"gumbel_tau must be > 0, got {tau}")
        d = self.distances(r)
        if logit_source == "raw":
            logits = -d
            c_det = logits.argmax(dim=-1)
        elif logit_source == "normalized":
            # Scale-free logits: the batch's distances mapped to [-1, 1], so tau and the Gumbel noise act on
            # the same scale whatever the embedding norm (raw latents of small encoders are ~1e-2 apart).
            mid = (d.max() + d.min()).detach() / 2
            amp = (d.max().detach() - mid).clamp_min(1e-12)
            logits = -(d - mid) / amp
            c_det = logits.argmax(dim=-1)
        elif logit_source == "sinkhorn_normalized":
            mid = (d.max() + d.min()).detach() / 2
            amp = (d.max().detach() - mid).clamp_min(1e-12)
            logits = -(d - mid) / amp
            c_det = sinkhorn_assign(d, epsilon=sk_epsilon, iters=sk_iters)
        else:
            raise ValueError(f"logit_source must be 'raw', 'normalized' or 'sinkhorn_normalized', got {logit_source!r}")
        e = self.embedding.weight
        if mode == "ste":
            p_soft = F.one_hot(c_det, self.codebook_size).to(r.dtype)
            q = r + (F.embedding(c_det, e) - r).detach()
            scale = torch.zeros(r.shape[0], device=r.device)
            index, y_st = c_det, p_soft
        else:
            if mode == "det_softmax_st" or decay is None:
                scale = torch.zeros(r.shape[0], device=r.device)
            else:
                scale = decay.noise_scale(level, c_det, self.training) * noise_mult
            gs = gumbel_softmax(logits, tau=tau, noise_scale=scale, generator=generator)
            # Deterministic rows take c_det exactly (argmin distance, or the Sinkhorn code).
            index = torch.where(scale > 0, gs.index, c_det)
            y_hard = F.one_hot(index, self.codebook_size).to(gs.y_soft.dtype)
            p_soft = gs.y_soft
            y_st = straight_through(y_hard, p_soft)
            q = y_st @ e
        if self.training and decay is not None:
            decay.observe(level, c_det)
        # Classic VQ: the codebook term must see E[idx] itself (q's STE form carries no codebook gradient).
        # F.embedding, not e[c_det]: its CPU backward is deterministic whatever the thread count (indexing's
        # accumulating backward is not).
        q_vq = F.embedding(c_det, e) if mode == "ste" else q
        vq_loss = (F.mse_loss(q_vq, r.detach(), reduction="none").mean(-1)
                   + self.beta * F.mse_loss(r, q_vq.detach(), reduction="none").mean(-1))
        return LevelOut(index, c_det, p_soft, y_st, q, vq_loss, scale)
