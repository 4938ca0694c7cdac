"""Shared Gumbel core: sampling, (straight-through) Gumbel-softmax, log-densities and schedules.

Pure torch; importing this module never imports RecBole, so ``softthink`` and users can use it
on its own. All randomness accepts an optional :class:`torch.Generator`, and every computation
runs in float32 (or the input's wider dtype) even under bf16 autocast.

Equations (as used by DIGER, arXiv 2601.19711, and SofT-GRPO, Zheng & Lee, arXiv 2511.06411):

* Gumbel(0, 1) sample: ``g = -log(-log U)``, ``U ~ Uniform(0, 1)`` (Gumbel 1954; Jang et al. 2017).
* Gumbel-softmax: ``y_soft = softmax((l + s*g) / tau)``; Gumbel-max: ``argmax(l + g) ~ Categorical(softmax(l))``.
* Straight-through: ``y = y_hard - sg(y_soft) + y_soft`` (forward hard one-hot, backward soft).
* Gumbel(loc, scale) log-density: ``log f(x) = -z - exp(-z) - log(scale)``, ``z = (x - loc) / scale``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "EULER_GAMMA",
    "sample_gumbel",
    "gumbel_log_density",
    "straight_through",
    "GumbelSample",
    "gumbel_softmax",
    "Schedule",
    "ConstantSchedule",
    "LinearSchedule",
    "ExponentialSchedule",
    "CosineSchedule",
    "make_schedule",
]

#: Mean of the standard Gumbel distribution (Euler-Mascheroni constant).
EULER_GAMMA = 0.5772156649015329

_Shape = Union[int, Sequence[int], torch.Size]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def sample_gumbel(
    shape: _Shape,
    *,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    clamp: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """Draw standard Gumbel(0, 1) noise ``g = -log(-log U)``.

    Args:
        shape: output shape.
        generator: optional generator for reproducible draws (its device must match ``device``).
        device: output device (default: the generator's device, else CPU).
        dtype: float32 or float64.
        clamp: optional ``(lo, hi)`` truncation; SofT-GRPO (arXiv 2511.06411) uses ``(-1.5, 3.0)``, hard-coded
            in its official rollout sampler (``sglang/srt/layers/sampler.py``) and loss.

    Returns:
        Tensor of ``shape``; mean ``EULER_GAMMA``, variance ``pi**2 / 6`` when unclamped.

    Raises:
        ValueError: if ``clamp`` has ``lo >= hi`` or ``dtype`` is not floating point.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"sample_gumbel: dtype must be floating point, got {dtype}")
    if clamp is not None and not clamp[0] < clamp[1]:
        raise ValueError(f"sample_gumbel: clamp must be (lo, hi) with lo < hi, got {tuple(clamp)}")
    if isinstance(shape, int):
        shape = (shape,)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    work = _compute_dtype(dtype)
    u = torch.rand(tuple(shape), generator=generator, device=device, dtype=work)
    # Keep U strictly inside (0, 1) so both logs stay finite.
    tiny = torch.finfo(work).tiny
    u = u.clamp_(min=tiny, max=1.0 - torch.finfo(work).eps)
    g = -torch.log(-torch.log(u))
    if clamp is not None:
        g = g.clamp_(clamp[0], clamp[1])
    return g.to(dtype)


def gumbel_log_density(
    x: torch.Tensor,
    loc: Union[float, torch.Tensor] = 0.0,
    scale: Union[float, torch.Tensor] = 1.0,
) -> torch.Tensor:
    """Elementwise Gumbel(loc, scale) log-density ``-z - exp(-z) - log(scale)``, ``z = (x - loc)/scale``.

    Equals ``torch.distributions.Gumbel(loc, scale).log_prob(x)``; used for the SofT-GRPO soft-token
    likelihood of the recovered noise (SofT-GRPO, arXiv 2511.06411; official ``logprobs_from_logits_topk_gumbel``
    in ``verl/utils/torch_functional.py``). Broadcasts like torch ops; the result has the broadcast shape and is
    computed in float32 (float64 if ``x`` is float64).
    """
    work = _compute_dtype(x.dtype)
    x = x.to(work)
    loc_t = torch.as_tensor(loc, dtype=work, device=x.device)
    scale_t = torch.as_tensor(scale, dtype=work, device=x.device)
    z = (x - loc_t) / scale_t
    return -z - torch.exp(-z) - torch.log(scale_t)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator ``hard - soft.detach() + soft``.

    The forward value equals ``hard``; the gradient flows to ``soft`` as if the output were ``soft``
    (Bengio et al. 2013; DIGER, arXiv 2601.19711). Shapes must broadcast; output has ``soft``'s shape.
    """
    return hard - soft.detach() + soft


@dataclass
class GumbelSample:
    """Result of :func:`gumbel_softmax` for ``n`` rows over ``K`` categories.

    Attributes:
        index: ``[n]`` long, the selected category ``argmax(y_soft)``.
        y_soft: ``[n, K]`` ``softmax((logits + s*g) / tau)``.
        y_hard: ``[n, K]`` one-hot of ``index`` (no gradient).
        y_st: ``[n, K]`` straight-through ``y_hard - sg(y_soft) + y_soft``.
        noise: ``[n, K]`` the unscaled Gumbel noise ``g`` that was used.
    """

    index: torch.Tensor
    y_soft: torch.Tensor
    y_hard: torch.Tensor
    y_st: torch.Tensor
    noise: torch.Tensor


def gumbel_softmax(
    logits: torch.Tensor,
    *,
    tau: float,
    noise_scale: Union[float, torch.Tensor] = 1.0,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    clamp: Optional[Tuple[float, float]] = None,
) -> GumbelSample:
    """Straight-through Gumbel-softmax over the last dimension (DIGER, arXiv 2601.19711; official ``vq.py``).

    ``y_soft = softmax((logits + s * g) / tau)``, ``index = argmax(y_soft)``, forward hard, backward soft.

    Args:
        logits: ``[..., K]`` unnormalised scores (DIGER: negative codebook distances).
        tau: temperature ``> 0``.
        noise_scale: scalar ``s`` or a tensor broadcastable to ``logits[..., :1]`` (e.g. per-row ``[n]``
            is accepted and unsqueezed); ``0`` disables noise for that row (FrqUD "cold" rows).
        noise: optional pre-drawn ``g`` with ``logits``' shape (for replay or tests).
        generator: generator for drawing ``g`` when ``noise`` is None.
        clamp: optional truncation of ``g``.

    Returns:
        :class:`GumbelSample`; computed in float32 and cast back to ``logits.dtype``.

    Raises:
        ValueError: if ``tau <= 0`` or ``noise`` has the wrong shape.
    """
    if not (tau > 0):
        raise ValueError(f"gumbel_softmax: tau must be > 0, got {tau}")
    work = _compute_dtype(logits.dtype)
    lw = logits.to(work)
    if noise is None:
        noise = sample_gumbel(lw.shape, generator=generator, device=lw.device, dtype=work, clamp=clamp)
    elif noise.shape != lw.shape:
        raise ValueError(f"gumbel_softmax: noise shape {tuple(noise.shape)} != logits shape {tuple(lw.shape)}")
    noise = noise.to(work)
    s = torch.as_tensor(noise_scale, dtype=work, device=lw.device)
    if s.dim() > 0 and s.dim() == lw.dim() - 1:
        s = s.unsqueeze(-1)
    y_soft = F.softmax((lw + s * noise) / tau, dim=-1)
    index = y_soft.argmax(dim=-1)
    y_hard = F.one_hot(index, lw.shape[-1]).to(work)
    y_st = straight_through(y_hard, y_soft)
    out_dtype = logits.dtype if logits.dtype.is_floating_point else work
    return GumbelSample(index, y_soft.to(out_dtype), y_hard.to(out_dtype), y_st.to(out_dtype), noise)


# ---------------------------------------------------------------------------------------------
# Schedules for a noise scale or a temperature (options of the official DIGER code, unused in its release scripts).
# ---------------------------------------------------------------------------------------------


class Schedule:
    """A scalar schedule ``value(step)``, with ``step()``/``state_dict()``/``load_state_dict()``.

    Subclasses implement :meth:`value`; ``self.t`` counts calls to :meth:`step` so a schedule saved in a
    checkpoint resumes where it stopped.
    """

    def __init__(self) -> None:
        self.t = 0

    def value(self, step: Optional[int] = None) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: Optional[int] = None) -> float:
        return self.value(step)

    def step(self) -> float:
        """Advance one step and return the new current value."""
        self.t += 1
        return self.value()

    def state_dict(self) -> dict:
        return {"t": int(self.t)}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])

    def _at(self, step: Optional[int]) -> int:
        s = self.t if step is None else int(step)
        if s < 0:
            raise ValueError(f"{type(self).__name__}: step must be >= 0, got {s}")
        return s


class ConstantSchedule(Schedule):
    """``v(t) = v0``."""

    def __init__(self, v0: float) -> None:
        super().__init__()
        self.v0 = float(v0)

    def value(self, step: Optional[int] = None) -> float:
        self._at(step)
        return self.v0


class LinearSchedule(Schedule):
    """Linear decay ``v(t) = v0 + (v_end - v0) * min(t, total) / total``."""

    def __init__(self, v0: float, v_end: float, total: int) -> None:
        super().__init__()
        if total <= 0:
            raise ValueError(f"LinearSchedule: total must be > 0, got {total}")
        self.v0, self.v_end, self.total = float(v0), float(v_end), int(total)

    def value(self, step: Optional[int] = None) -> float:
        t = min(self._at(step), self.total)
        return self.v0 + (self.v_end - self.v0) * t / self.total


class ExponentialSchedule(Schedule):
    """``v(t) = max(v_min, v0 * exp(-rate * t))`` (the official DIGER code's unused tau annealing)."""

    def __init__(self, v0: float, rate: float, vmin: float = 0.0) -> None:
        super().__init__()
        if rate < 0:
            raise ValueError(f"ExponentialSchedule: rate must be >= 0, got {rate}")
        self.v0, self.rate, self.vmin = float(v0), float(rate), float(vmin)

    def value(self, step: Optional[int] = None) -> float:
        return max(self.vmin, self.v0 * math.exp(-self.rate * self._at(step)))


class CosineSchedule(Schedule):
    """``v(t) = v_end + (v0 - v_end) * 0.5 * (1 + cos(pi * min(t, total) / total))``.

    The official DIGER code's cosine noise schedule (an option its release scripts do not use).
    """

    def __init__(self, v0: float, total: int, v_end: float = 0.0) -> None:
        super().__init__()
        if total <= 0:
            raise ValueError(f"CosineSchedule: total must be > 0, got {total}")
        self.v0, self.total, self.v_end = float(v0), int(total), float(v_end)

    def value(self, step: Optional[int] = None) -> float:
        t = min(self._at(step), self.total)
        return self.v_end + (self.v0 - self.v_end) * 0.5 * (1.0 + math.cos(math.pi * t / self.total))


_SCHEDULES = {
    "constant": ConstantSchedule,
    "linear": LinearSchedule,
    "exponential": ExponentialSchedule,
    "cosine": CosineSchedule,
}


def make_schedule(spec: Union[float, dict, Schedule]) -> Schedule:
    """Build a schedule from a number (constant) or a dict ``{"type": name, **kwargs}``.

    Raises:
        ValueError: on an unknown ``type``, naming the allowed ones.
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, float)):
        return ConstantSchedule(float(spec))
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"schedule spec must be a number or a dict with 'type', got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("type")
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown schedule type {kind!r}; expected one of {sorted(_SCHEDULES)}")
    return _SCHEDULES[kind](**kwargs)
