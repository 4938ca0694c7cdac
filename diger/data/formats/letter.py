"""LETTER / LC-Rec layout (``HonghuiBao2000/LETTER``, ``RUCAIBox/LC-Rec``).

* ``<Name>.inter.json``: ``{"<user>": [item, ...]}``, chronological, ids usually 0-based ints.
* ``<Name>.item.json`` (optional): ``{"<item>": {"title": ..., "description": ..., ...}}``.
* ``<Name>.index.json`` (semantic IDs) is handled by :mod:`diger.data.semantic_ids`.

No timestamps: ``time`` is the position in the published sequence. Tokens are the ids as
written in the files (``str(id)``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from ..model import RawData, sequences_to_inter
from ..rawio import load_json_document

ROLES = {"letter": {"required": ["inter"], "optional": ["item"]}}


def _token(value, path: Path, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value).strip() == "":
        raise DataFormatError(path, f"{where}: id {value!r} is not a non-empty int or string")
    return str(value)


def read_inter_json(path: Path) -> list[tuple[str, list[str]]]:
    """Parse a LETTER ``*.inter.json`` into ``[(user, [item, ...]), ...]`` in file order.

    Raises:
        DataFormatError: not a JSON object of lists, or a bad id (names the user key).
    """
    doc = load_json_document(path)
    if not isinstance(doc, dict):
        raise DataFormatError(path, f"expected a JSON object {{user: [items]}}, got {type(doc).__name__}")
    seqs = []
    for user, seq in doc.items():
        if not isinstance(seq, list):
            raise DataFormatError(path, f"user {user!r}: expected a list of item ids, got {type(seq).__name__}")
        seqs.append((_token(user, path, "user key"), [_token(i, path, f"user {user!r}") for i in seq]))
    return seqs


def read_item_json(path: Path) -> dict[str, dict]:
    """Parse a LETTER ``*.item.json`` into ``{item: {field: value}}``.

    Raises:
        DataFormatError: not a JSON object of objects (names the item key).
    """
    doc = load_json_document(path)
    if not isinstance(doc, dict):
        raise DataFormatError(path, f"expected a JSON object {{item: {{field: value}}}}, got {type(doc).__name__}")
    for key, meta in doc.items():
        if not isinstance(meta, dict):
            raise DataFormatError(path, f"item {key!r}: expected an object of text fields, got {type(meta).__name__}")
    return {str(k): v for k, v in doc.items()}


def read_letter(files: dict, options: dict, allow_pickle: bool = False) -> RawData:
    """Read the LETTER layout (roles ``inter`` and optional ``item``); see the module docstring."""
    seqs = read_inter_json(files["inter"])
    items = read_item_json(files["item"]) if files.get("item") else None
    return RawData(inter=sequences_to_inter(seqs), time_kind="order", items=items)
