"""Process collectives shared by ``diger`` (DistributedDataParallel runs through RecBole) and ``softthink``
(:class:`softthink.distributed.ProcessLayout`, launched by ``accelerate`` / ``torchrun``).

Every helper is a no-op (or returns its input) when ``torch.distributed`` is not initialised or the
world has one process, so single-process code paths call them unconditionally. Collectives must be
called by every rank in the same order; the docstrings say which are collectives.

Tensors travel on the backend's device: CUDA for NCCL (the current device), CPU for gloo; results
are returned on the input's device.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the rank that writes files and logs."""
    return rank() == 0


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Collective: wait until every rank arrives (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Collective: element-wise sum of ``t`` over ranks (a new tensor, same shape, dtype and device as ``t``)."""
    if not is_distributed():
        return t
    buf = t.detach().to(_comm_device()).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Collective: ``obj`` from rank ``src`` on every rank (pickled; for small objects only)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def broadcast_tensor_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Collective: overwrite ``t`` in place with rank ``src``'s values (shapes must already agree); returns ``t``."""
    if not is_distributed():
        return t
    buf = t.detach().to(_comm_device()).clone()
    dist.broadcast(buf, src=src)
    with torch.no_grad():
        t.copy_(buf.to(t.device))
    return t


def broadcast_new_tensor(t: Optional[torch.Tensor], src: int = 0) -> torch.Tensor:
    """Collective: rank ``src``'s tensor on every rank; other ranks pass ``None`` (shape and dtype travel too).

    Raises:
        ValueError: on rank ``src`` when ``t`` is ``None``.
    """
    if not is_distributed():
        if t is None:
            raise ValueError("broadcast_new_tensor: the source rank must pass a tensor")
        return t
    if rank() == src and t is None:
        raise ValueError("broadcast_new_tensor: the source rank must pass a tensor")
    meta = broadcast_object((tuple(t.shape), t.dtype) if rank() == src else None, src)
    out = t.detach().clone() if rank() == src else torch.empty(meta[0], dtype=meta[1])
    return broadcast_tensor_(out, src)


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Collective: copy every parameter and buffer of ``module`` from rank ``src`` (same architecture everywhere)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        broadcast_tensor_(t.data, src)


def run_on_main(fn: Callable[[], Any]) -> Any:
    """Collective: run ``fn()`` on rank 0 only and return its (picklable, small) result on every rank."""
    if not is_distributed():
        return fn()
    out = fn() if is_main() else None
    return broadcast_object(out, 0)


def tensor_digest(tensors: List[torch.Tensor]) -> str:
    """16-hex sha256 of the exact bytes of ``tensors`` (to compare state across ranks; local, not a collective)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def gather_strings(s: str) -> List[str]:
    """Collective: ``[s of rank 0, s of rank 1, ...]`` (``[s]`` when not distributed)."""
    if not is_distributed():
        return [s]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, s)
    return [str(x) for x in out]


def raise_if_any_failed(err: Optional[BaseException], where: str) -> None:
    """Collective: re-raise ``err``; with several processes first agree, so that every process stops together.

    A process whose own step succeeded raises ``RuntimeError`` naming ``where`` when another one failed, instead
    of hanging in the next collective. No-op when ``err`` is ``None`` on every process.

    Raises:
        BaseException: ``err`` itself on the process that failed.
        RuntimeError: on the other processes, ``"<where>: failed on another process ..."``.
    """
    failed = 0 if err is None else 1
    if is_distributed():
        failed = int(all_reduce_sum(torch.tensor([failed]))[0])
    if err is not None:
        raise err
    if failed:
        raise RuntimeError(f"{where}: failed on another process (see that process's error above)")


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Collective: average ``.grad`` over processes in place, one all-reduce per gradient dtype (DDP's reduction).

    A parameter whose gradient is ``None`` on every process stays ``None`` (AdamW then skips it, as in a
    single-process run); one that has a gradient somewhere gets zeros where it had none. No-op when not
    distributed.
    """
    if not is_distributed():
        return
    has = all_reduce_sum(torch.tensor([p.grad is not None for p in params], dtype=torch.long))
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    world = world_size()
    for dtype in sorted({p.grad.dtype for p in live}, key=str):
        group = [p for p in live if p.grad.dtype == dtype]
        flat = all_reduce_sum(torch.cat([p.grad.reshape(-1) for p in group])) / world
        off = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))  # copy_ moves back to the grad's device
            off += n
