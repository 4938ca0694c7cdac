"""P5 / S3-Rec layout (``jeykigung/P5``, ``aHuiWang/CIKM2020-S3Rec``).

* ``sequential_data.txt``: one line per user, ``user item item ...`` (whitespace separated),
  chronological, 1-based ids.
* ``datamaps.json`` (optional): ``id2item`` (P5 id -> ASIN / Yelp business id), ``id2user``.
  When present, each item gets an extra ``raw_id`` value (its original id); P5 has no item text.

No timestamps: ``time`` is the position in the sequence. Tokens are the P5 ids as written.
"""
from __future__ import annotations

from ..errors import DataFormatError
from ..model import RawData, sequences_to_inter
from ..rawio import iter_lines, load_json_document

ROLES = {"p5": {"required": ["sequences"], "optional": ["datamaps"]}}


def read_sequences_txt(path, min_items: int = 1) -> list[tuple[str, list[str]]]:
    """Parse ``user item item ...`` lines; blank lines are skipped.

    Raises:
        DataFormatError: a line with fewer than ``min_items`` items or a user seen twice (line number).
    """
    seqs, seen = [], {}
    for lineno, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 1 + min_items:
            raise DataFormatError(path, f"expected 'user item ...' with at least {min_items} item(s), got {line[:80]!r}", line=lineno)
        if parts[0] in seen:
            raise DataFormatError(path, f"user {parts[0]!r} already has a sequence on line {seen[parts[0]]}", line=lineno)
        seen[parts[0]] = lineno
        seqs.append((parts[0], parts[1:]))
    return seqs


def read_p5(files: dict, options: dict, allow_pickle: bool = False) -> RawData:
    """Read the P5 layout (roles ``sequences`` and optional ``datamaps``)."""
    seqs = read_sequences_txt(files["sequences"])
    items = None
    if files.get("datamaps"):
        maps = load_json_document(files["datamaps"])
        id2item = maps.get("id2item") if isinstance(maps, dict) else None
        if not isinstance(id2item, dict):
            raise DataFormatError(files["datamaps"], "no 'id2item' object")
        items = {str(k): {"raw_id": v} for k, v in id2item.items()}
    return RawData(inter=sequences_to_inter(seqs), time_kind="order", items=items)
