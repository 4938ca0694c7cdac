"""Infrastructure shared by ``diger`` and ``softthink``: atomic file writes, plain-data checkpoints, ``key=value``
overrides and the RNG states a resumed run restores (issue 15). Pure Python, numpy-free and torch-only where a tensor is saved; importing it pulls in
neither RecBole nor transformers (like :mod:`diger.gumbel`).

Atomic here means: the data is written to a temporary file in the destination folder, then moved over the
destination with ``os.replace`` (atomic on one filesystem), so a kill leaves the old file or the new one,
never half of one; the temporary file is removed on any error.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, IO, Iterable, Iterator, Optional, Type, Union

__all__ = ["CheckpointError", "atomic_dir", "atomic_torch_save", "atomic_write", "atomic_write_json", "atomic_write_text",
           "load_plain_checkpoint", "parse_key_values", "rng_state", "set_rng_state"]

PathLike = Union[str, os.PathLike]
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, holds pickled objects or is not of the expected kind."""


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", *, encoding: Optional[str] = "utf-8",
                 newline: Optional[str] = None) -> Iterator[IO]:
    """``with atomic_write(p) as fh: fh.write(...)``: a temporary file in ``p``'s folder, renamed over ``p``
    when the block ends without an error (the folder is created if needed).

    Args:
        mode: ``"w"`` (text) or ``"wb"`` (bytes); ``encoding`` / ``newline`` apply to text mode.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.", suffix=path.suffix)
    try:
        kw = {} if mode == "wb" else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: PathLike, *, if_exists: str = "replace") -> Iterator[Path]:
    """``with atomic_dir(d) as tmp: <write files into tmp>``: a temporary folder beside ``d``, moved to ``d`` when
    the block ends without an error; on any error it is removed and ``d`` is left as it was.

    Args:
        if_exists: what to do when ``d`` exists at the end: ``"replace"`` (the old folder is moved aside, the new
            one renamed in, the old one removed: a kill leaves the old or the new folder, plus at most a
            ``<d>.old`` folder to delete) or ``"keep"`` (another process made ``d`` meanwhile: keep it, drop
            ours).
    Raises:
        ValueError: for another ``if_exists``.
    """
    import shutil

    if if_exists not in ("replace", "keep"):
        raise ValueError(f"atomic_dir: if_exists must be 'replace' or 'keep', got {if_exists!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}.", dir=path.parent))
    try:
        yield tmp
        if not path.exists():
            try:
                os.replace(tmp, path)
            except OSError:  # created concurrently between the check and the rename
                if if_exists == "replace" or not path.exists():
                    raise
        elif if_exists == "replace":
            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``allow_nan=False``: NaN / inf are an error, not bad JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (save plain tensors and Python values: they load with
    ``weights_only=True``)."""
    import torch

    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def load_plain_checkpoint(path: PathLike, *, owner: str, check: Optional[Callable[[Any], Optional[str]]] = None,
                          map_location: Any = "cpu") -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)``: plain data only, never unpickled objects.

    Args:
        owner: the package named in messages (``"diger"``, ``"softthink"``).
        check: called with the loaded object; returns ``None`` when it is of the expected kind, else the reason.

    Raises:
        CheckpointError: naming ``path`` when it is missing, truncated / corrupt, holds pickled objects, or
            ``check`` rejects it.
    """
    import torch

    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, pickled objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "Weights only load failed" in str(exc):
            first = f"it holds pickled objects, not plain data (not written by {owner}; refusing to unpickle it)"
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {first}") from None
    reason = check(ckpt) if check is not None else None
    if reason:
        raise CheckpointError(f"{path} is not a {owner} checkpoint ({reason})")
    return ckpt


def parse_key_values(items: Iterable[str], *, prefix: str = "--", error: Type[Exception] = ValueError,
                     what: str = "overrides are written --key=value") -> Dict[str, Any]:
    """``["--epochs=3", "--lr=1e-3", "--topk=[5,10]"]`` -> ``{"epochs": 3, "lr": 0.001, "topk": [5, 10]}``.

    Values are read with ``yaml.safe_load`` (never ``eval``); text that YAML 1.1 leaves a string but is a number
    in exponent form (``1e-3``) becomes a float, as RecBole's YAML file loader reads it; YAML
    that does not parse stays text. Both command lines use this (``diger run --k=v``, ``softthink --set k=v``).

    Args:
        prefix: what each item starts with (``"--"`` for ``diger``, ``""`` for ``softthink --set``).
        error: the exception type raised for a malformed item (named in its message, with ``what``).
    """
    import yaml

    out: Dict[str, Any] = {}
    for item in items or []:
        if not item.startswith(prefix) or "=" not in item:
            raise error(f"unrecognised argument {item!r}; {what}")
        key, raw = item[len(prefix):].split("=", 1)
        key = key.strip()
        if not key:
            raise error(f"empty key in {item!r}; {what}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            value = float(value)
        out[key] = value
    return out


def rng_state() -> Dict[str, Any]:
    """The global RNG states (torch CPU, numpy, Python ``random``) as tensors and plain values.

    The result survives :func:`atomic_torch_save` / :func:`load_plain_checkpoint` (``weights_only=True``) and is
    restored by :func:`set_rng_state`; used by ``diger run --resume`` and ``softthink train --resume``.
    """
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [int(v) for v in random.getstate()[1]],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the global RNG states captured by :func:`rng_state` (extra keys are ignored).

    Raises:
        KeyError: when ``state`` lacks ``torch``, ``numpy`` or ``python``.
    """
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate((3, tuple(state["python"]), None))
