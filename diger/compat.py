"""RecBole 1.2.1 compatibility shims (numpy 2, setuptools >= 81, torch >= 2.6), applied once and idempotently.

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
5. Distributed training (``nproc``/``world_size``/``ip``/``port``/``offset``, from RecBole's ``run`` in
   ``recbole/quick_start/quick_start.py``):
   RecBole hard-codes NCCL and CUDA in ``Config._init_device`` and
   ``DistributedDataParallel(device_ids=[local_rank])`` in ``AbstractTrainer.__init__``. The
   patched versions pick ``nccl`` on CUDA and ``gloo`` on CPU (``dist_backend`` overrides), skip
   the GPU-count check and ``SyncBatchNorm`` on CPU, pass ``device_ids`` only on CUDA, and read
   ``ddp_find_unused_parameters`` / ``ddp_broadcast_buffers`` from the model class (defaults:
   ``False`` / ``True``, RecBole's). Ranks other than 0 get a no-op TensorBoard writer, so only
   rank 0 writes ``./log_tensorboard``.
6. ``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
   at import time, and ``recbole.trainer`` imports it, so every backward pass of every model ran in
   anomaly mode (a NaN check after each backward operator and a Python stack trace recorded for each
   forward one): measured 4.5x slower TIGER training on ML-100K. The anomaly setting from before the
   import is restored (users who want anomaly mode turn it on after importing ``diger``).
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


def dist_backend(config: Any) -> str:
    """``nccl`` when the run uses CUDA, else ``gloo``; the config key ``dist_backend`` overrides.

    Args:
        config: a RecBole ``Config`` or its ``final_config_dict``.
    """
    import torch

    final = getattr(config, "final_config_dict", config)
    if final.get("dist_backend"):
        return str(final["dist_backend"])
    gpu_id = str(final.get("gpu_id") or "")
    use_gpu = final.get("use_gpu", True) is not False
    return "nccl" if use_gpu and gpu_id and torch.cuda.is_available() else "gloo"


def _patched_init_device(self) -> None:
    """``Config._init_device`` of RecBole 1.2.1 with a CPU (gloo) branch for distributed runs."""
    import torch
    import torch.distributed as dist

    final = self.final_config_dict
    if "local_rank" not in final:
        return _ORIGINAL["init_device"](self)
    gpu = final["gpu_id"]
    final["gpu_id"] = ",".join(map(str, gpu)) if isinstance(gpu, (tuple, list)) else str(gpu)
    backend = dist_backend(final)
    if backend == "nccl":
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = final["gpu_id"]
        if len(final["gpu_id"].split(",")) < int(final["nproc"]):
            raise ValueError(f"nproc={final['nproc']} processes need as many GPUs in gpu_id, got {final['gpu_id']!r}")
        torch.cuda.set_device(int(final["local_rank"]))
        final["device"] = torch.device("cuda", int(final["local_rank"]))
    else:
        final["device"] = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, rank=int(final["local_rank"]) + int(final.get("offset") or 0),
            world_size=int(final["world_size"]), init_method=f"tcp://{final['ip']}:{final['port']}",
        )
    final["single_spec"] = False
    if int(final["local_rank"]) != 0:
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def _patched_trainer_init(self, config, model) -> None:
    """``AbstractTrainer.__init__`` of RecBole 1.2.1 that works with gloo on CPU as well as NCCL on CUDA."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    self.config = config
    self.model = model
    if not config["single_spec"]:
        device = torch.device(config["device"])
        if device.type == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBatchNorm is CUDA-only
        # torch >= 2.13 renames `broadcast_buffers` (per-forward buffer sync) to `forward_sync_buffers`.
        import inspect

        sync_key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel.__init__).parameters else "broadcast_buffers"
        self.distributed_model = DistributedDataParallel(
            self.model, device_ids=[device.index if device.index is not None else 0] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)),
            **{sync_key: bool(getattr(model, "ddp_broadcast_buffers", True))},
        )


class _NullWriter:
    """Stands in for TensorBoard's ``SummaryWriter`` on ranks other than 0: every method does nothing."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


def _patched_get_tensorboard(logger: Any) -> Any:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return _NullWriter()
    return _ORIGINAL["get_tensorboard"](logger)


_ORIGINAL: dict = {}


def _distributed_patches() -> None:
    from recbole.config import configurator
    from recbole.trainer import trainer as rb_trainer

    if "init_device" not in _ORIGINAL:
        _ORIGINAL["init_device"] = configurator.Config._init_device
        _ORIGINAL["get_tensorboard"] = rb_trainer.get_tensorboard
    configurator.Config._init_device = _patched_init_device
    rb_trainer.AbstractTrainer.__init__ = _patched_trainer_init
    rb_trainer.get_tensorboard = _patched_get_tensorboard


def _no_global_anomaly_mode() -> None:
    import torch

    was_enabled, was_check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    import recbole.model.sequential_recommender.sine  # noqa: F401  (sets anomaly mode at import)

    torch.autograd.set_detect_anomaly(was_enabled, check_nan=was_check_nan)


def apply() -> None:
    """Apply all shims (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _numpy_aliases()
    _ray_stub()
    _no_global_anomaly_mode()
    _distributed_patches()
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
