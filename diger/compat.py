"""RecBole 1.2.1 compatibility shims, applied once and idempotently (ECOSYSTEM.md §2).

Import this module before importing anything from ``recbole``; every RecBole-facing module of
``diger`` does. It fixes, in order:

1. numpy 2 removed ``np.float_``/``np.complex_``/``np.unicode_``/``np.bool8``, which RecBole's
   ``Config.compatibility_settings`` and ray's tune logger use: restore the aliases when missing.
2. ``recbole.quick_start`` imports ``ray.tune`` at load time (slow, and ray 2.6.3 needs
   ``pkg_resources``): register a stub ``ray``/``ray.tune`` in ``sys.modules`` unless real ray is
   already imported. ``tune`` is only used by RecBole's hyper-parameter search, which we do not use.
3. RecBole pickles its ``Config`` into checkpoints, which ``torch.load(weights_only=True)`` rejects:
   our :class:`diger.trainer.SafeCheckpointTrainer` writes plain data only; :func:`config_to_plain`
   turns a ``Config`` into a JSON-able dict for that.
4. RecBole writes ``./log`` and ``./log_tensorboard`` into the working directory: callers choose
   the working directory (tests run in a temp dir); nothing to patch here.
"""
from __future__ import annotations

import enum
import math
import sys
import types
from typing import Any

_APPLIED = False


def _numpy_aliases() -> None:
    import numpy as np

    for alias, target in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_"), ("bool8", "bool_")):
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))


def _ray_stub() -> None:
    if "ray" in sys.modules:
        return
    ray = types.ModuleType("ray")
    tune = types.ModuleType("ray.tune")

    def _unavailable(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("ray.tune is stubbed by diger.compat; RecBole's hyper-parameter search is not supported")

    def _getattr(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable

    tune.__getattr__ = _getattr  # type: ignore[attr-defined]
    ray.tune = tune  # type: ignore[attr-defined]
    ray.__diger_stub__ = True  # type: ignore[attr-defined]
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune


def apply() -> None:
    """Apply all shims (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _numpy_aliases()
    _ray_stub()
    _APPLIED = True


def to_plain(value: Any) -> Any:
    """Recursively convert a config value to JSON-able plain Python (str for anything exotic)."""
    import numpy as np
    import torch

    if value is None or isinstance(value, str):
        return value if value is None else str(value)  # np.str_ subclasses str: cast to a plain str
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):  # np.float64 subclasses float: cast to a plain float
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_plain(v) for v in value]
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, type):
        return value.__name__
    return str(value)


def config_to_plain(config: Any) -> dict:
    """A RecBole ``Config`` (or dict) as a JSON-able dict of its final values."""
    final = getattr(config, "final_config_dict", config)
    return {k: to_plain(v) for k, v in dict(final).items() if k != "model_class"}


apply()
