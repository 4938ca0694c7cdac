"""Resumable training state of ``softthink train``: ``<output_dir>/last.pth`` and ``<output_dir>/run.json``.

Same conventions as ``diger run --resume`` (diger/trainer.py): the checkpoint holds only tensors and plain
Python values, is written through a temporary file in the same folder and ``os.replace`` (a kill never leaves
a half-written ``last.pth``), and is read back with ``torch.load(weights_only=True)``; a missing, truncated or
foreign file raises :class:`CheckpointError` with a one-line message naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from diger.infra import CheckpointError, atomic_torch_save, load_plain_checkpoint, rng_state, set_rng_state

__all__ = ["CheckpointError", "LAST", "RUN_JSON", "FORMAT", "atomic_torch_save", "load_checkpoint",
           "rng_state", "set_rng_state"]

LAST = "last.pth"
RUN_JSON = "run.json"
FORMAT = "softthink-last/1"


def _is_softthink(ckpt) -> "str | None":
    return None if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else f"no format {FORMAT!r}"


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a ``last.pth`` written by :meth:`SoftGRPOTrainer.save_checkpoint` with ``weights_only=True``
    (:func:`diger.infra.load_plain_checkpoint`).

    Raises:
        CheckpointError: naming ``path`` when it is missing, truncated/corrupt, holds pickled objects or is not
            a softthink checkpoint.
    """
    return load_plain_checkpoint(path, owner="softthink", check=_is_softthink)
