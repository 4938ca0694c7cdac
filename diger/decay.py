"""Uncertainty-decay strategies: how much Gumbel noise each code assignment gets (DIGER, arXiv 2601.19711).

All strategies are ``nn.Module``s so their state (usage EMAs, learnable sigmas, step counters)
lives in the model's ``state_dict`` and survives checkpoints. The quantiser asks, per level,
``noise_scale(level, c_det)`` for a ``[n]`` tensor of noise scales (0 = deterministic) and reports
the deterministic codes with ``observe(level, c_det)`` after using them. Official code: ``junchen-fu/DIGER``
``vq.py`` (FrqUD's usage EMA, ``AutoSigmaSimple``, ``AutoSigmaGumbel``).

* ``NoNoise``          - s = 0 (``ste`` and ``det_softmax_st`` modes).
* ``ScheduledNoise``   - s = schedule(step) for every assignment (``gumbel`` mode; constant by default).
* ``FrqUD``            - s = 1 for assignments whose deterministic code is over-used
  (``usage_ema[c_det] > rho / K``), else 0. The mask is computed from the EMA *before*
  this batch's update. Under DDP the counts are all-reduced before the update (identical EMAs on every rank).
* ``SDUD``             - s = clamp(|sigma_l|, 1e-5, 100) for every assignment, 0 when below 1e-4;
  one learnable sigma per level.
* ``SDUDFrqUD``        - s = hot * clamp(|sigma_l|).
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch
from torch import nn

from . import distributed as ddist
from .gumbel import Schedule, make_schedule


class UncertaintyDecay(nn.Module):
    """Base class: no noise. Subclasses override :meth:`noise_scale` and maybe :meth:`observe`."""

    stochastic: bool = False

    def __init__(self, num_levels: int, codebook_size: int) -> None:
        super().__init__()
        self.num_levels = int(num_levels)
        self.codebook_size = int(codebook_size)
        self._last: Dict[str, float] = {}

    def noise_scale(self, level: int, c_det: torch.Tensor, training: bool = True) -> torch.Tensor:
        """Per-assignment noise scale ``[n]`` (float) for deterministic codes ``c_det [n]``."""
        return torch.zeros(c_det.shape[0], device=c_det.device)

    @torch.no_grad()
    def observe(self, level: int, c_det: torch.Tensor) -> None:
        """Record this batch's deterministic codes at ``level`` (training only, no gradient)."""

    def step(self) -> None:
        """Advance one optimisation step (schedules)."""

    def loss(self, rec_loss: torch.Tensor) -> Optional[torch.Tensor]:
        """Extra objective (L_UD under ``historical`` SDUD); ``None`` when there is none."""
        return None

    def metrics(self) -> Dict[str, float]:
        """Scalars (floats or 0-d tensors) for logging: stochastic ratio per level, sigma, ...; last batch."""
        return dict(self._last)


class NoNoise(UncertaintyDecay):
    pass


class ScheduledNoise(UncertaintyDecay):
    """Noise scale ``s(t)`` from a :class:`diger.gumbel.Schedule` for every assignment."""

    stochastic = True

    def __init__(self, num_levels: int, codebook_size: int, schedule: Union[float, dict, Schedule] = 1.0) -> None:
        super().__init__(num_levels, codebook_size)
        self.schedule = make_schedule(schedule)
        self.register_buffer("t", torch.zeros((), dtype=torch.long))

    def noise_scale(self, level: int, c_det: torch.Tensor, training: bool = True) -> torch.Tensor:
        if not training:
            return super().noise_scale(level, c_det, training)
        s = self.schedule.value(int(self.t))
        self._last["noise_scale"] = s
        return torch.full((c_det.shape[0],), s, device=c_det.device)

    def step(self) -> None:
        self.t += 1


class FrqUD(UncertaintyDecay):
    """Frequency-based uncertainty decay, FrqUD (DIGER, arXiv 2601.19711; official ``junchen-fu/DIGER`` ``vq.py``).

    ``f_l <- m f_l + (1-m) bincount(c_det, K)/n`` (init 1/K); assignment ``i`` is *hot* (noisy,
    s = 1) iff ``f_l[c_det_i] > rho/K``. With ``granularity="item_level1"`` (historical parity) every
    level uses the level-1 decision of the same item.

    Raises:
        ValueError: for ``rho <= 0`` or a momentum outside ``[0, 1)``.
    """

    stochastic = True

    def __init__(self, num_levels: int, codebook_size: int, rho: float = 1.5, momentum: float = 0.99,
                 granularity: str = "per_level") -> None:
        super().__init__(num_levels, codebook_size)
        if rho <= 0:
            raise ValueError(f"FrqUD: frq_rho must be > 0, got {rho}")
        if not 0 <= momentum < 1:
            raise ValueError(f"FrqUD: frq_momentum must be in [0, 1), got {momentum}")
        if granularity not in ("per_level", "item_level1"):
            raise ValueError(f"FrqUD: mask_granularity must be 'per_level' or 'item_level1', got {granularity!r}")
        self.rho, self.momentum, self.granularity = float(rho), float(momentum), granularity
        self.register_buffer("usage_ema", torch.full((num_levels, codebook_size), 1.0 / codebook_size))
        self._level1_hot: Optional[torch.Tensor] = None

    def hot_mask(self, level: int, c_det: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: ``usage_ema[level, c_det] > rho / K`` (level 0 under ``item_level1``)."""
        if self.granularity == "item_level1" and level > 0 and self._level1_hot is not None \
                and self._level1_hot.shape[0] == c_det.shape[0]:
            return self._level1_hot
        hot = self.usage_ema[level][c_det] > self.rho / self.codebook_size
        if level == 0:
            self._level1_hot = hot
        return hot

    def noise_scale(self, level: int, c_det: torch.Tensor, training: bool = True) -> torch.Tensor:
        if not training:
            return super().noise_scale(level, c_det, training)
        hot = self.hot_mask(level, c_det)
        self._last[f"stochastic_ratio/l{level + 1}"] = hot.float().mean()
        return hot.to(torch.float32)

    @torch.no_grad()
    def observe(self, level: int, c_det: torch.Tensor) -> None:
        """EMA update of ``usage_ema[level]`` with this batch's code frequencies.

        Under multi-process training (an initialised ``torch.distributed`` group with more than one
        process) the per-code counts and the number of assignments are all-reduced first, so the
        update uses the global batch and ``usage_ema`` stays identical on every rank. That is a
        collective: every rank calls ``observe`` once per level and step (also with an empty batch).
        """
        counts = torch.bincount(c_det.reshape(-1), minlength=self.codebook_size).to(self.usage_ema.dtype)
        if ddist.is_distributed():
            packed = ddist.all_reduce_sum(torch.cat([counts, counts.new_tensor([float(c_det.numel())])]))
            counts, n = packed[:-1], float(packed[-1])
        else:
            n = float(c_det.numel())
        if n == 0:
            return
        freq = counts / n
        self.usage_ema[level].mul_(self.momentum).add_((1 - self.momentum) * freq)

    def metrics(self) -> Dict[str, float]:
        out = dict(self._last)
        ratios = [v for k, v in out.items() if k.startswith("stochastic_ratio/")]
        if ratios:
            out["stochastic_ratio"] = sum(ratios) / len(ratios)
        return out


class SDUD(UncertaintyDecay):
    """Standard-deviation-based uncertainty decay, SDUD (DIGER, arXiv 2601.19711; official ``AutoSigmaSimple``).

    One learnable ``sigma_l`` per level; ``s_l = clamp(|sigma_l|, 1e-5, 100)``, disabled below 1e-4.
    ``loss(L)`` is ``L / (2 (|sigma_bar| + lam)^2) + log(|sigma_bar| + lam)``, whose minimiser over
    sigma is ``max(0, sqrt(L) - lam)``; it is used only on the ``historical`` path (``use_ud_loss``).

    Raises:
        ValueError: for ``lam < 0``.
    """

    stochastic = True

    def __init__(self, num_levels: int, codebook_size: int, sigma0: float = 2.0, lam: float = 1.7,
                 clamp: tuple = (1e-5, 100.0), floor: float = 1e-4, use_ud_loss: bool = False) -> None:
        super().__init__(num_levels, codebook_size)
        if lam < 0:
            raise ValueError(f"SDUD: sdud_lambda must be >= 0, got {lam}")
        self.sigma = nn.Parameter(torch.full((num_levels,), float(sigma0)))
        self.lam, self.clamp, self.floor, self.use_ud_loss = float(lam), tuple(clamp), float(floor), use_ud_loss

    def level_scale(self, level: int) -> torch.Tensor:
        s = self.sigma[level].abs().clamp(self.clamp[0], self.clamp[1])
        return torch.where(s < self.floor, torch.zeros_like(s), s)

    def noise_scale(self, level: int, c_det: torch.Tensor, training: bool = True) -> torch.Tensor:
        if not training:
            return super().noise_scale(level, c_det, training)
        s = self.level_scale(level)
        self._last[f"sigma/l{level + 1}"] = s.detach()
        return s.expand(c_det.shape[0])

    @staticmethod
    def ud_objective(rec_loss: torch.Tensor, sigma_bar: torch.Tensor, lam: float) -> torch.Tensor:
        """``L_UD = L / (2 (|sigma| + lam)^2) + log(|sigma| + lam)`` (official ``vq.py`` ``AutoSigmaSimple``)."""
        a = sigma_bar.abs() + lam
        return rec_loss / (2 * a * a) + torch.log(a)

    def loss(self, rec_loss: torch.Tensor) -> Optional[torch.Tensor]:
        self._last["target_sigma"] = (rec_loss.detach().sqrt() - self.lam).clamp_min(0.0)
        if not self.use_ud_loss:
            return None
        return self.ud_objective(rec_loss, self.sigma.mean(), self.lam)

    def metrics(self) -> Dict[str, float]:
        return dict(self._last)


class SDUDFrqUD(FrqUD):
    """FrqUD's mask selects the noisy assignments, SDUD's sigma sets their scale (DIGER's SDUD+FrqUD)."""

    def __init__(self, num_levels: int, codebook_size: int, rho: float = 1.5, momentum: float = 0.99,
                 granularity: str = "per_level", sigma0: float = 2.0, lam: float = 1.7,
                 use_ud_loss: bool = False) -> None:
        super().__init__(num_levels, codebook_size, rho, momentum, granularity)
        self.sdud = SDUD(num_levels, codebook_size, sigma0, lam, use_ud_loss=use_ud_loss)

    def noise_scale(self, level: int, c_det: torch.Tensor, training: bool = True) -> torch.Tensor:
        if not training:
            return torch.zeros(c_det.shape[0], device=c_det.device)
        hot = super().noise_scale(level, c_det, training)
        return hot * self.sdud.noise_scale(level, c_det, training)

    def loss(self, rec_loss: torch.Tensor) -> Optional[torch.Tensor]:
        return self.sdud.loss(rec_loss)

    def metrics(self) -> Dict[str, float]:
        return {**super().metrics(), **self.sdud.metrics()}


ASSIGN_MODES = ("ste", "det_softmax_st", "gumbel", "frqud", "sdud", "sdud_frqud")


def build_decay(mode: str, num_levels: int, codebook_size: int, config=None) -> UncertaintyDecay:
    """The decay strategy for an assignment ``mode`` (one of :data:`ASSIGN_MODES`), reading
    ``frq_rho``, ``frq_momentum``, ``mask_granularity``, ``sdud_sigma0``, ``sdud_lambda``,
    ``noise_schedule`` from ``config`` (a RecBole ``Config`` or dict; missing keys take DIGER's Beauty
    settings, as in the official release script ``scripts/run_experiment.sh``).

    Raises:
        ValueError: for an unknown mode (naming the allowed ones) or an out-of-range value.
    """
    cfg = config if config is not None else {}

    def get(key, default):
        v = cfg[key] if key in cfg else None
        return default if v is None else v

    gran = get("mask_granularity", "per_level")
    if gran == "auto":
        gran = "item_level1" if get("gradient_path", "true_e2e") == "historical" else "per_level"
    ud_loss = get("gradient_path", "true_e2e") == "historical"
    if mode in ("ste", "det_softmax_st"):
        return NoNoise(num_levels, codebook_size)
    if mode == "gumbel":
        return ScheduledNoise(num_levels, codebook_size, get("noise_schedule", 1.0))
    if mode == "frqud":
        return FrqUD(num_levels, codebook_size, get("frq_rho", 1.5), get("frq_momentum", 0.99), gran)
    if mode == "sdud":
        return SDUD(num_levels, codebook_size, get("sdud_sigma0", 2.0), get("sdud_lambda", 1.7), use_ud_loss=ud_loss)
    if mode == "sdud_frqud":
        return SDUDFrqUD(num_levels, codebook_size, get("frq_rho", 1.5), get("frq_momentum", 0.99), gran,
                         get("sdud_sigma0", 2.0), get("sdud_lambda", 1.7), use_ud_loss=ud_loss)
    raise ValueError(f"unknown assign_mode {mode!r}; expected one of {list(ASSIGN_MODES)}")
