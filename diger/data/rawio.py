"""Reading raw input files: transparent gzip, line iteration with line numbers, JSON documents.

All readers turn low-level failures (truncated gzip, bad JSON, undecodable bytes) into
:class:`~diger.data.errors.DataFormatError` naming the file and, for line-oriented files,
the line number.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from .errors import DataFormatError

_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """Return True when ``path`` starts with the gzip magic bytes (whatever its suffix)."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for each line of a text file, gzipped or not.

    Lines are returned without their trailing newline (``\\n`` or ``\\r\\n``). Blank lines are
    yielded too; callers decide whether to skip them.

    Raises:
        DataFormatError: truncated or corrupt gzip stream, or bytes not valid in ``encoding``
            (with the line number reached).
    """
    path = Path(path)
    opener = gzip.open if is_gzip(path) else open
    lineno = 0
    try:
        with opener(path, "rb") as f:  # bytes, decoded per line, so line numbers are exact
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode(encoding)
                except UnicodeDecodeError as exc:
                    raise DataFormatError(
                        path, f"not valid {encoding} text ({exc.reason} at byte {exc.start} of the line)", line=lineno
                    ) from exc
                yield lineno, line.rstrip("\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(
            path, f"corrupt or truncated gzip stream after line {lineno} ({exc})", line=lineno + 1
        ) from exc


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read a whole text file (gzipped or not); errors as in :func:`iter_lines`."""
    return "\n".join(line for _, line in iter_lines(path, encoding))


def load_json_document(path: Path):
    """Parse a file holding one JSON document (gzipped or not).

    Raises:
        DataFormatError: with the line number reported by the JSON parser.
    """
    text = read_text(path).lstrip("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from exc


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for a JSON-lines file; blank lines are skipped.

    Raises:
        DataFormatError: a line that is not valid JSON or not a JSON object (file and line number).
    """
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        yield lineno, parse_json_object(path, lineno, line)


def parse_json_object(path: Path, lineno: int, line: str) -> dict:
    """One JSON-lines record as a dict.

    Raises:
        DataFormatError: invalid JSON or not a JSON object (file and line number).
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"invalid JSON line: {exc.msg} (column {exc.colno})", line=lineno) from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
    return obj
