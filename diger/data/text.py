"""Turning raw metadata values into one line of item text for the ``.item`` file.

Rules (documented in ``datasets/README.md``):

* ``None`` / missing -> ``""``.
* strings: every line or field separator (tab, CR, LF, VT, FF, U+0085, U+2028, U+2029) and other
  control characters become one space; leading and trailing whitespace is stripped. Nothing else
  changes (HTML entities, quotes and repeated inner spaces are kept).
* a list of strings is joined with ``", "`` (e.g. 2018 categories, ML genres);
* a list of lists (Amazon 2014 category paths) joins each path with ``", "`` and the paths with
  ``" | "``;
* numbers are written with ``str()``.
"""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def clean_text(value) -> str:
    """Return ``value`` as a single-line string following the module rules.

    Raises:
        TypeError: for values that are not str, number, list/tuple or None (e.g. dicts).
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return _CONTROL.sub(" ", value).strip()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return "" if value != value else str(value)  # NaN -> ""
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple)) for v in value):
            parts = [clean_text(v) for v in value]
            return " | ".join(p for p in parts if p)
        parts = [clean_text(v) for v in value]
        return ", ".join(p for p in parts if p)
    raise TypeError(f"cannot turn a {type(value).__name__} into item text: {value!r:.80}")
