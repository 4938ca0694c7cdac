"""Soft-token noise variants behind one interface, used by both the rollout and the replay.

Variants (``SoftGRPOConfig.soft_noise``; SofT-GRPO, arXiv 2511.06411, its official ablations and baselines):

* ``"gumbel"`` (SofT-GRPO, default): ``y = log(p~ + eps) + beta * g``, ``g ~ Gumbel(0, 1)`` clamped;
  weights ``softmax(y / tau_g)``; density: mean Gumbel log-density of the recovered noise.
* ``"dirichlet"`` (official ablation ``-dir``): ``w ~ Dirichlet(alpha * p~)`` over the rollout support
  (Gamma draws normalised); weights ``w``; density: ``log Dirichlet(w; alpha * p~_theta)`` over the support.
  The official code scores per-coordinate Gamma densities of the un-normalised draws instead (and rebuilds
  ``softmax(x / tau_g)`` at training): both are deliberately not reproduced; the fed weights ``w`` are what
  is scored and replayed.
* ``"gaussian"`` (official ablation ``-gau``): ``x ~ N(p~, sigma^2)`` on the support; weights ``x / sum x``;
  density: ``log N(x; p~_theta, sigma)`` reduced (mean/sum) over the support ids with
  ``log p~_theta > density_mask_threshold``.
* ``"embedding_gaussian"`` (Butt et al. 2025, "Soft Tokens, Hard Truths", arXiv 2509.19170): the input is
  ``h = sum_k p~_k E[id_k] + sigma_e * n``, ``n ~ N(0, I_D)``; density ``log N(h; sum_k p~_theta,k E[id_k],
  sigma_e^2 I)`` reduced (mean/sum) over the ``D`` dimensions (``sum`` is the exact joint density).
  ``sigma_e = embed_noise_std * RMS(E)`` of the rollout model's input-embedding matrix.
* ``"none"`` (plain Soft Thinking, Zhang et al. 2025, arXiv 2505.15778; inference only): weights ``p~`` (probability-
  weighted top-K embeddings), no noise, no density.

Every variant records ``y [.., K]`` such that ``weights(y)`` reproduces the rollout's mixture weights bit for
bit; the embedding variant additionally records the added noise vector.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .sampling import soft_token_loglik

__all__ = ["NOISE_VARIANTS", "NoiseSample", "SoftNoise", "make_noise", "embedding_rms"]

NOISE_VARIANTS = ("gumbel", "dirichlet", "gaussian", "embedding_gaussian", "none")
_TINY = 1e-30


@dataclass
class NoiseSample:
    """One noisy soft token per row.

    Attributes:
        ids: ``[B, K]`` long, sorted by descending mixture weight (``ids[:, 0]`` is the readable token).
        y: ``[B, K]`` float32 recorded values (``weights(y) == w`` exactly).
        w: ``[B, K]`` float32 mixture weights fed at rollout.
        support: ``[B, K]`` bool, ids with ``p~ > 0`` at rollout.
    """

    ids: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    support: torch.Tensor


def _sorted(ids, y, w, support, key=None) -> NoiseSample:
    order = (w if key is None else key).argsort(dim=-1, descending=True, stable=True)
    g = lambda t: t.gather(-1, order)  # noqa: E731
    return NoiseSample(ids=g(ids), y=g(y), w=g(w), support=g(support))


def _support_probs(lk: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """``softmax`` of the recorded ids' logits over the rollout support (zeros elsewhere), ``[..., K]``."""
    return F.softmax(lk.float().masked_fill(~support, float("-inf")), dim=-1)


class SoftNoise:
    """Interface of a noise variant.

    Methods used by the rollout: :meth:`sample`, :meth:`embed_noise`; by both rollout and replay:
    :meth:`weights` and :meth:`loglik`.
    """

    name = "base"
    sort_by_y = False  # order the K ids by the recorded values instead of the weights
    embedding_noise = False

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @property
    def has_density(self) -> bool:
        """Whether a soft token drawn by this variant has a log-density (:meth:`loglik`): what SofT-GRPO trains on.
        False for noiseless soft tokens (plain Soft Thinking; Gumbel with ``noise_scale <= 0``)."""
        return True

    def sample(self, probs: torch.Tensor, k: int, generator: Optional[torch.Generator]) -> NoiseSample:
        """Draw one soft token per row (SofT-GRPO, arXiv 2511.06411; official ``sampler.py``).

        Args:
            probs: ``[B, V']`` filtered probabilities (zeros outside top-k / top-p); ``V' >= k``.
            k: K, the mixture size.
            generator: dedicated generator for the noise (same stream as the discrete samples).
        Returns:
            :class:`NoiseSample`; ``ids`` index the columns of ``probs``. ``w`` is recomputed as
            ``weights(y)`` from the sorted record, so the replay rebuilds it bit for bit.
        """
        pk, ids = probs.topk(k, dim=-1)
        pk = pk / pk.sum(-1, keepdim=True)
        support = pk > 0
        y, w = self._draw(pk, support, generator)
        st = _sorted(ids, y, w, support, key=y if self.sort_by_y else None)
        st.w = self.weights(st.y)  # rebuilt from the sorted record, exactly as the replay does
        return st

    def _draw(self, pk, support, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def weights(self, y: torch.Tensor) -> torch.Tensor:
        """Mixture weights ``[..., K]`` from the recorded values ``y [..., K]`` (rollout and replay)."""
        raise NotImplementedError

    def embed_noise(self, shape, sigma: float, generator, device) -> torch.Tensor:
        """Additive input-embedding noise ``[B, D]`` (zeros-width ``[B, 0]`` for top-K variants)."""
        return torch.zeros(shape[0], 0, device=device)

    def loglik(self, lk: torch.Tensor, y: torch.Tensor, support: torch.Tensor, *, e_ids=None, emb_noise=None,
               sigma=None) -> torch.Tensor:
        """Log-density ``[...]`` of the recorded noisy soft token given the recorded ids' logits ``lk [..., K]``
        (already divided by the temperature). Differentiable w.r.t. ``lk``.

        Raises:
            ValueError: for variants without a density (``"none"``).
        """
        raise NotImplementedError


class GumbelNoise(SoftNoise):
    """SofT-GRPO's Gumbel noise on the top-K log-probabilities (arXiv 2511.06411; official ``sampler.py``)."""

    name = "gumbel"
    sort_by_y = True  # softmax(y / tau) is monotone in y; sorting y avoids ties where w underflows

    @property
    def has_density(self) -> bool:
        return self.cfg.noise_scale > 0

    def _draw(self, pk, support, generator):
        from diger.gumbel import sample_gumbel

        c = self.cfg
        g = sample_gumbel(pk.shape, generator=generator, device=pk.device, dtype=torch.float32, clamp=c.gumbel_clamp)
        y = torch.log(pk + c.logp_eps) + c.noise_scale * g
        return y, self.weights(y)

    def weights(self, y):
        return F.softmax(y / self.cfg.gumbel_tau, dim=-1)

    def loglik(self, lk, y, support, **_):
        c = self.cfg
        if not self.has_density:
            raise ValueError("soft_noise='gumbel' needs noise_scale > 0 for a density (noiseless soft tokens have "
                             f"none), got noise_scale={c.noise_scale}")
        return soft_token_loglik(lk, y, support, clamp=c.gumbel_clamp, eps=c.logp_eps,
                                 mask_threshold=c.density_mask_threshold, noise_scale=c.noise_scale,
                                 reduce=c.density_reduce, renorm_support=c.renorm_support)


class DirichletNoise(SoftNoise):
    """Dirichlet resampling of the top-K probabilities (official ablation ``SofT-GRPO-deepscaler-8k-dir.sh``)."""

    name = "dirichlet"

    def _draw(self, pk, support, generator):
        conc = (self.cfg.dirichlet_alpha * pk).clamp_min(_TINY)
        x = torch._standard_gamma(conc, generator=generator)
        x = torch.where(support, x.clamp_min(_TINY), torch.zeros_like(x))
        w = x / x.sum(-1, keepdim=True)
        y = torch.where(support, w.clamp_min(_TINY), torch.zeros_like(w))  # strictly positive on the support
        return y, self.weights(y)

    def weights(self, y):
        return y / y.sum(-1, keepdim=True).clamp_min(_TINY)

    def loglik(self, lk, y, support, **_):
        """``log Dirichlet(w; alpha * p~_theta)`` over the support coordinates (a 1-id support scores 0)."""
        a = self.cfg.dirichlet_alpha * _support_probs(lk, support)  # [..., K]
        s = support.float()
        w = self.weights(y.float())
        a_s = torch.where(support, a, torch.ones_like(a))
        logw = torch.where(support, w.clamp_min(_TINY).log(), torch.zeros_like(w))
        term = ((a_s - 1.0) * logw - torch.lgamma(a_s)) * s
        out = term.sum(-1) + torch.lgamma((a * s).sum(-1))
        return torch.where(support.sum(-1) > 1, out, torch.zeros_like(out))


class GaussianTopkNoise(SoftNoise):
    """Gaussian noise on the top-K probabilities (official ablation ``SofT-GRPO-deepscaler-8k-gau.sh``)."""

    name = "gaussian"

    def _draw(self, pk, support, generator):
        n = torch.randn(pk.shape, generator=generator, device=pk.device, dtype=torch.float32)
        x = torch.where(support, pk + self.cfg.gaussian_sigma * n, torch.zeros_like(pk))
        return x, self.weights(x)

    def weights(self, y):
        return y / y.sum(-1, keepdim=True)

    def loglik(self, lk, y, support, **_):
        c = self.cfg
        p = _support_probs(lk, support)
        sig = c.gaussian_sigma
        dens = -0.5 * ((y.float() - p) / sig) ** 2 - math.log(sig) - 0.5 * math.log(2 * math.pi)
        m = (support & (torch.log(p + c.logp_eps) > c.density_mask_threshold)).detach().float()
        total = (dens * m).sum(-1)
        return total / m.sum(-1).clamp(min=1.0) if c.density_reduce == "mean" else total


class EmbeddingGaussianNoise(SoftNoise):
    """Gaussian noise on the input embedding (Butt et al. 2025, arXiv 2509.19170)."""

    name = "embedding_gaussian"
    embedding_noise = True

    def _draw(self, pk, support, generator):
        return pk.clone(), pk.clone()

    def weights(self, y):
        return y

    def embed_noise(self, shape, sigma, generator, device):
        return sigma * torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    def loglik(self, lk, y, support, *, e_ids=None, emb_noise=None, sigma=None):
        """``e_ids [..., K, D]`` embeddings of the recorded ids (constant), ``emb_noise [..., D]`` the added
        noise, ``sigma [...]`` (or a float) its standard deviation."""
        if e_ids is None or emb_noise is None or sigma is None:
            raise ValueError("soft_noise='embedding_gaussian': loglik needs e_ids, emb_noise and sigma")
        p = _support_probs(lk, support)
        w_roll = self.weights(y.float())
        e = e_ids.detach().float()
        # h - mu_theta = sum_k (w_rollout - p_theta)_k E[id_k] + noise
        diff = ((w_roll - p).unsqueeze(-1) * e).sum(-2) + emb_noise.float()
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=diff.device)
        while sig.dim() < diff.dim():
            sig = sig.unsqueeze(-1)
        dens = -0.5 * (diff / sig) ** 2 - sig.log() - 0.5 * math.log(2 * math.pi)
        return dens.mean(-1) if self.cfg.density_reduce == "mean" else dens.sum(-1)


class PlainSoftThinking(SoftNoise):
    """Plain Soft Thinking: probability-weighted top-K embeddings, no noise (Zhang et al. 2025, arXiv 2505.15778)."""

    name = "none"

    @property
    def has_density(self) -> bool:
        return False

    def _draw(self, pk, support, generator):
        return pk.clone(), pk.clone()

    def weights(self, y):
        return y

    def loglik(self, lk, y, support, **_):
        raise ValueError("soft_noise='none' (plain Soft Thinking) has no density: it is an inference mode and "
                         "cannot be trained with SofT-GRPO")


_CLASSES = {c.name: c for c in (GumbelNoise, DirichletNoise, GaussianTopkNoise, EmbeddingGaussianNoise, PlainSoftThinking)}


def position_loglik(noise: SoftNoise, scaled: torch.Tensor, tok: torch.Tensor, ids: torch.Tensor, y: torch.Tensor,
                    support: torch.Tensor, is_soft: torch.Tensor, *, embed=None, emb_noise: Optional[torch.Tensor] = None,
                    sigma: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Log-likelihood of what was fed at each position: the one scoring rule of the rollout and the replay.

    A soft position (``is_soft``) is scored by ``noise.cfg.soft_logprob``:

    * ``gumbel_density`` (default; SofT-GRPO, arXiv 2511.06411): the recorded noisy soft token under ``noise``'s
      density over the recorded ids (the Gumbel density of the recovered noise; the other variants' own);
    * ``token`` (ours): ``log softmax(scaled[ids] over the kept support)[0]``, the log-probability of the emitted
      top id among the ids that survived the filters: the Gumbel-max marginal of the top id at ``noise_scale`` 1;
    * ``hybrid`` (ours): the density where the mixture is genuinely mixed (largest weight
      ``< soft_logprob_threshold``), ``token`` elsewhere (nearly one-hot steps).

    Any other position scores its token ``tok`` with ``log softmax(scaled)[tok]``. Soft positions of a variant
    without a density (:attr:`SoftNoise.has_density` False) get NaN. Every rule reads only recorded values, so the
    rollout's diagnostic and the replay give the same number.

    Args:
        noise: the run's noise variant (:func:`make_noise`).
        scaled: ``[..., V]`` logits already divided by the position's temperature.
        tok: ``[...]`` long, the readable token of each position.
        ids, y, support: ``[..., K]`` the recorded mixed ids, perturbed values and rollout support.
        is_soft: ``[...]`` bool.
        embed: the input-embedding module (needed for ``embedding_gaussian`` only); emb_noise ``[..., D]`` its
            recorded noise, sigma its std per row (``[B]``; broadcast over the trailing dims of ``tok``).
        lse: ``[...]`` ``scaled.logsumexp(-1)`` when the caller has it already.
    Returns:
        ``[...]`` float32 (differentiable w.r.t. ``scaled``).
    """
    lp_tok = scaled.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - (scaled.logsumexp(-1) if lse is None else lse)
    if not bool(is_soft.any()):
        return lp_tok
    if not noise.has_density:  # noiseless soft tokens have no density
        return torch.where(is_soft, torch.full_like(lp_tok, float("nan")), lp_tok)
    lk = scaled.gather(-1, ids)
    mode = noise.cfg.soft_logprob
    if mode != "gumbel_density":
        ell_top = F.log_softmax(lk.float().masked_fill(~support, float("-inf")), dim=-1)[..., 0]
    if mode == "token":
        return torch.where(is_soft, ell_top, lp_tok)
    e_ids = None
    if noise.embedding_noise:
        e_ids = embed(ids).detach()
        while sigma is not None and sigma.dim() < tok.dim():
            sigma = sigma.unsqueeze(-1)
    ell_soft = noise.loglik(lk, y, support, e_ids=e_ids, emb_noise=emb_noise, sigma=sigma)
    if mode == "hybrid":
        mixed = noise.weights(y).amax(-1) < noise.cfg.soft_logprob_threshold
        ell_soft = torch.where(mixed, ell_soft, ell_top)
    return torch.where(is_soft, ell_soft, lp_tok)


def make_noise(cfg) -> SoftNoise:
    """The :class:`SoftNoise` named by ``cfg.soft_noise``.

    Raises:
        ValueError: on an unknown name (naming the field and the value).
    """
    try:
        return _CLASSES[cfg.soft_noise](cfg)
    except KeyError:
        raise ValueError(f"SoftGRPOConfig.soft_noise={cfg.soft_noise!r}: expected one of {list(NOISE_VARIANTS)}")


def embedding_rms(model) -> float:
    """RMS of the input-embedding matrix: the unit of ``embed_noise_std`` (Butt et al., arXiv 2509.19170)."""
    w = model.get_input_embeddings().weight.detach().float()
    return float(w.pow(2).mean().sqrt())
