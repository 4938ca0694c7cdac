"""Published semantic IDs (LETTER / LC-Rec ``*.index.json``) as a fixed SID table.

File format: ``{"<item token>": ["<a_183>", "<b_70>", "<c_232>", "<d_6>"], ...}`` -- level ``l``
uses the letter ``chr(ord('a') + l)`` and a non-negative code. Source: ``HonghuiBao2000/LETTER``
``data/<Dataset>/<Dataset>.index.json``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

_CODE = re.compile(r"^<([a-z])_(\d+)>$")


class SemanticIdError(ValueError):
    """A semantic-ID file is malformed or does not cover the requested items."""


def parse_code(text: str, level: int, where: str) -> int:
    """Parse ``"<b_12>"`` at level 1 into ``12``.

    Raises:
        SemanticIdError: not of the form ``<x_N>`` or the letter is not the one for ``level``.
    """
    m = _CODE.match(text) if isinstance(text, str) else None
    if not m:
        raise SemanticIdError(f"{where}: code {text!r} is not of the form '<a_12>'")
    want = chr(ord("a") + level)
    if m.group(1) != want:
        raise SemanticIdError(f"{where}: code {text!r} at level {level} should start with '<{want}_'")
    return int(m.group(2))


def read_index_json(path) -> dict[str, list[int]]:
    """Read a LETTER ``*.index.json`` into ``{item token: [code, ...]}``, checking every entry.

    Raises:
        SemanticIdError: bad JSON (with line), a non-list entry, a bad code, or unequal lengths.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise SemanticIdError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(doc, dict) or not doc:
        raise SemanticIdError(f"{path}: expected a non-empty JSON object {{item: [codes]}}")
    table, length = {}, None
    for key, codes in doc.items():
        where = f"{path}: item {key!r}"
        if not isinstance(codes, list) or not codes:
            raise SemanticIdError(f"{where}: expected a non-empty list of codes, got {codes!r}")
        if length is None:
            length = len(codes)
        elif len(codes) != length:
            raise SemanticIdError(f"{where}: {len(codes)} codes, other items have {length}")
        table[str(key)] = [parse_code(c, lvl, where) for lvl, c in enumerate(codes)]
    return table


def load_letter_index(path, item_tokens: Sequence[str]):
    """Build the fixed SID table for RecBole's internal item ids.

    Args:
        path: a LETTER ``*.index.json`` (or the ``NAME.<sid>.index.json`` written by
            ``diger data prepare``), keyed by the item tokens of the ``.inter`` file.
        item_tokens: ``dataset.field2id_token[ITEM_ID]`` -- index 0 is ``[PAD]``, index i the raw
            token of internal item i.

    Returns:
        ``torch.LongTensor`` of shape ``[N+1, L]``: row 0 all ``-1`` (padding), row i the codes of
        internal item i (``N = len(item_tokens) - 1``).

    Raises:
        SemanticIdError: malformed file, or items of ``item_tokens`` missing from it (lists the
            first few).
    """
    import torch

    table = read_index_json(path)
    tokens = [str(t) for t in list(item_tokens)[1:]]
    missing = [t for t in tokens if t not in table]
    if missing:
        raise SemanticIdError(
            f"{path}: {len(missing)} of {len(tokens)} items have no semantic ID, e.g. {missing[:5]}; "
            "was the dataset prepared from the same layout as this index?"
        )
    length = len(next(iter(table.values())))
    out = torch.full((len(tokens) + 1, length), -1, dtype=torch.long)
    if tokens:
        out[1:] = torch.tensor([table[t] for t in tokens], dtype=torch.long)
    return out


def collision_stats(table: dict[str, list[int]]) -> dict:
    """Counts of identical SIDs among items (``{"items", "unique_sids", "colliding_items"}``)."""
    from collections import Counter

    counts = Counter(tuple(v) for v in table.values())
    return {
        "items": len(table),
        "unique_sids": len(counts),
        "colliding_items": sum(c for c in counts.values() if c > 1),
        "code_length": len(next(iter(table.values()))) if table else 0,
    }
