"""Amazon product data 2014 (J. McAuley, UCSD; https://jmcauley.ucsd.edu/data/amazon/).

* reviews: ``reviews_<Category>_5.json.gz`` (5-core) or ``reviews_<Category>.json.gz``: one strict
  JSON object per line with ``reviewerID``, ``asin``, ``unixReviewTime`` (other keys ignored).
* metadata: ``meta_<Category>.json.gz``: one **Python literal** dict per line (single quotes), parsed
  with :func:`ast.literal_eval` (never ``eval``); strict-JSON lines are accepted too. Keys used:
  ``asin``, ``title``, ``brand``, ``categories`` (list of category paths), ``description``, ``price``.

Time is ``unixReviewTime`` (seconds). Tokens: ``reviewerID`` and ``asin``.
"""
from __future__ import annotations

import ast
import json

from ..errors import DataFormatError
from ..model import RawData, make_inter
from ..rawio import iter_json_lines, iter_lines

ROLES = {"amazon2014": {"required": ["reviews"], "optional": ["meta"]}}

REVIEW_KEYS = ("reviewerID", "asin", "unixReviewTime")


def read_reviews(path, keys=REVIEW_KEYS) -> tuple[list, list, list]:
    """Read a JSON-lines review dump into ``(users, items, times)`` lists (file order).

    Raises:
        DataFormatError: bad JSON line, missing key, or a non-numeric time (file and line).
    """
    ukey, ikey, tkey = keys
    users, items, times = [], [], []
    for lineno, rec in iter_json_lines(path):
        for k in keys:
            if k not in rec or rec[k] in (None, ""):
                raise DataFormatError(path, f"review has no {k!r}", line=lineno)
        try:
            t = float(rec[tkey])
        except (TypeError, ValueError):
            raise DataFormatError(path, f"{tkey!r} is not a number: {rec[tkey]!r}", line=lineno) from None
        users.append(str(rec[ukey]))
        items.append(str(rec[ikey]))
        times.append(t)
    return users, items, times


def parse_literal_line(path, lineno: int, line: str) -> dict:
    """Parse one metadata line: Python literal first (``ast.literal_eval``), strict JSON second.

    Raises:
        DataFormatError: neither parses, or the value is not a dict (file and line).
    """
    try:
        obj = ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise DataFormatError(path, f"metadata line is not a Python literal or JSON ({type(exc).__name__}: {exc})", line=lineno) from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"metadata line is a {type(obj).__name__}, expected a dict", line=lineno)
    return obj


def read_meta(path, parse=parse_literal_line) -> tuple[dict[str, dict], list[str]]:
    """Read a metadata dump into ``{asin: record}`` (first record wins) plus notes about duplicates.

    Raises:
        DataFormatError: a bad line or a record without ``asin`` (file and line).
    """
    meta, dups = {}, 0
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        rec = parse(path, lineno, line)
        asin = rec.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DataFormatError(path, "metadata record has no 'asin'", line=lineno)
        if asin in meta:
            dups += 1
            continue
        meta[asin] = rec
    notes = [f"{path.name}: {dups} duplicated metadata records ignored (first kept)"] if dups else []
    return meta, notes


def read_amazon2014(files: dict, options: dict, allow_pickle: bool = False) -> RawData:
    """Read a 2014 review dump (role ``reviews``) and optional metadata (role ``meta``)."""
    users, items, times = read_reviews(files["reviews"])
    meta, notes = (read_meta(files["meta"]) if files.get("meta") else (None, []))
    return RawData(inter=make_inter(users, items, times), time_kind="unix", items=meta, notes=notes)
