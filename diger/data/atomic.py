"""RecBole atomic files: validated headers, safe values, and all-or-nothing writes.

Format (RecBole 1.2.x, ``Dataset._load_feat``): the first line holds ``field:type`` pairs separated by
tabs; each further line holds one row, tab-separated. RecBole reads the file with
``pandas.read_csv(engine="python", dtype=str)``, which (a) treats a field that *starts* with ``"``
as CSV-quoted and (b) turns values such as ``NA``/``null``/``nan`` into missing values. So:

* tokens (ids) must be non-empty, free of tabs/newlines/spaces-at-ends, and not one of pandas'
  missing-value strings (checked here: :class:`ValueError` otherwise);
* free-text values never hold tabs or newlines (see :mod:`diger.data.text`); a value that starts
  with ``"`` is written CSV-quoted (``"`` doubled inside), which pandas and :func:`read_atomic`
  decode back to the exact text. No other value is quoted.

Writes go to a staging folder next to the destination and are moved into place with
``os.replace`` only when everything succeeded (:class:`StagedOutput`).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# pandas.read_csv default na_values (pandas 2.x), which RecBole does not switch off.
PANDAS_NA_STRINGS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
_BAD_IN_VALUE = re.compile(r"[\t\n\r\x0b\x0c\x85\u2028\u2029]")


def validate_header(fields: Sequence[tuple[str, str]]) -> str:
    """Check ``[(name, type), ...]`` and return the header line (without newline).

    Raises:
        ValueError: empty header, a bad field name, an unknown type or a duplicated name.
    """
    if not fields:
        raise ValueError("an atomic file needs at least one field")
    seen = set()
    for name, ftype in fields:
        if not _FIELD_NAME.match(name):
            raise ValueError(f"bad field name {name!r}: use letters, digits and '_' only")
        if ftype not in FIELD_TYPES:
            raise ValueError(f"field {name!r}: type {ftype!r} is not one of {FIELD_TYPES}")
        if name in seen:
            raise ValueError(f"field {name!r} appears twice in the header")
        seen.add(name)
    return "\t".join(f"{n}:{t}" for n, t in fields)


def check_header_line(path: str | os.PathLike, separator: str = "\t") -> list[tuple[str, str]]:
    """Read and check the header of an existing atomic file before RecBole parses it.

    RecBole splits each header field on ``:`` and fails with ``too many values to unpack`` (or an
    unknown-type error) when the separator is wrong; this names the file, the line and the fix.

    Returns:
        ``[(name, type), ...]`` of the header.

    Raises:
        ValueError: naming ``path``, the header line and the expected tab-separated ``name:type`` form.
    """
    with open(path, encoding="utf-8", errors="replace") as fh:
        line = fh.readline().rstrip("\r\n")
    expected = (f"the header must be {'tab' if separator == chr(9) else repr(separator)}-separated name:type "
                f"fields, e.g. 'user_id:token<TAB>item_id:token<TAB>timestamp:float', with types {', '.join(FIELD_TYPES)}")
    fields = []
    for part in line.split(separator):
        name, colon, ftype = part.partition(":")
        problem = None
        if not colon or not name:
            problem = f"field {part!r} is not name:type"
        elif ":" in ftype:
            hint = " (fields separated by spaces instead of tabs?)" if " " in part else " (':' inside a field name?)"
            problem = f"field {part!r} holds more than one ':'{hint}"
        elif ftype not in FIELD_TYPES:
            hint = " (fields separated by spaces instead of tabs?)" if " " in ftype else ""
            problem = f"field {name!r} has type {ftype!r}{hint}"
        if problem:
            raise ValueError(f"{path}: header line {line!r}: {problem}; {expected}")
        fields.append((name, ftype))
    return fields


def check_token(value: str, field: str) -> str:
    """Return ``value`` if it is a valid RecBole token, else raise :class:`ValueError` naming ``field``."""
    if not isinstance(value, str):
        raise ValueError(f"field {field!r}: token {value!r} is not a string")
    if value in PANDAS_NA_STRINGS or value.strip() in PANDAS_NA_STRINGS:
        raise ValueError(f"field {field!r}: token {value!r} would be read by RecBole/pandas as missing")
    if _BAD_IN_VALUE.search(value) or value != value.strip() or value.startswith('"'):
        raise ValueError(f"field {field!r}: token {value!r} holds whitespace at its ends, a tab/newline or a leading quote")
    return value


def encode_text(value: str, field: str) -> str:
    """Encode one free-text value for a ``token_seq`` column (quote it if it starts with ``"``).

    Raises:
        ValueError: the value holds a tab or a line break (clean it with :func:`diger.data.text.clean_text`).
    """
    if _BAD_IN_VALUE.search(value):
        raise ValueError(f"field {field!r}: value {value[:60]!r} holds a tab or line break")
    if value.startswith('"'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_table(path: Path, fields: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]]) -> int:
    """Write an atomic file (UTF-8, ``\\n`` line ends) to ``path`` directly; returns the row count.

    Values must already be strings; ``token`` values are checked with :func:`check_token`,
    ``token_seq`` values encoded with :func:`encode_text`, ``float`` values must parse as floats.
    Use inside :class:`StagedOutput` so that a failure leaves nothing behind.

    Raises:
        ValueError: bad header, bad value (message names the row number and field), or a row
            with the wrong number of values.
    """
    header = validate_header(fields)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        for n, row in enumerate(rows, start=1):
            if len(row) != len(fields):
                raise ValueError(f"{path}: row {n} has {len(row)} values for {len(fields)} fields")
            out = []
            for (name, ftype), value in zip(fields, row):
                try:
                    if ftype == "token":
                        out.append(check_token(value, name))
                    elif ftype == "float":
                        float(value)
                        out.append(value)
                    else:
                        out.append(encode_text(value, name))
                except ValueError as exc:
                    raise ValueError(f"{path}: row {n}: {exc}") from exc
            f.write("\t".join(out) + "\n")
    return n


def read_atomic(path: Path) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Read an atomic file written by :func:`write_table` and return ``(fields, rows)``.

    Values come back as the exact strings that were written before encoding (quoted values are
    decoded as pandas/RecBole decode them). This is the reader to use for raw item text.

    Raises:
        ValueError: malformed header or a row whose length differs from the header's.
    """
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quotechar='"', doublequote=True, quoting=csv.QUOTE_MINIMAL, strict=True)
        try:
            head = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file, no header") from None
        fields = []
        for pair in head:
            name, sep, ftype = pair.partition(":")
            if not sep:
                raise ValueError(f"{path}: header entry {pair!r} is not field:type")
            fields.append((name, ftype))
        validate_header(fields)
        rows = []
        for row in reader:
            if len(row) != len(fields):
                raise ValueError(f"{path}: line {reader.line_num} has {len(row)} values for {len(fields)} fields")
            rows.append(row)
    return fields, rows


def read_item_text(path: Path, text_fields: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """Map each item token of a ``.item`` file to ``{field: text}`` for ``text_fields`` (default: all
    ``token_seq`` fields).

    Raises:
        ValueError: a requested field is not in the file, or the file is malformed.
    """
    fields, rows = read_atomic(path)
    names = [n for n, _ in fields]
    if text_fields is None:
        text_fields = [n for n, t in fields if t == "token_seq"]
    missing = [f for f in text_fields if f not in names]
    if missing:
        raise ValueError(f"{path}: text fields {missing} not in header {names}")
    idx = [names.index(f) for f in text_fields]
    return {row[0]: {f: row[i] for f, i in zip(text_fields, idx)} for row in rows}


class StagedOutput:
    """Context manager: stage files in a hidden temp folder, move them into ``final_dir`` on success.

    ``with StagedOutput(out_dir) as stage: write(stage / "x.inter")`` -- on normal exit every
    staged file is moved with ``os.replace`` (atomic per file, same filesystem) and files listed in
    ``remove_stale`` that were not staged are deleted; on an exception the staging folder is
    deleted, and so is every folder this context created for ``final_dir``. Existing files are never left
    half-written.
    """

    def __init__(self, final_dir: Path, remove_stale: Iterable[str] = ()):
        self.final_dir = Path(final_dir)
        self.remove_stale = list(remove_stale)
        self._created: Path | None = None
        self._stage: Path | None = None

    def __enter__(self) -> Path:
        if not self.final_dir.exists():
            top = self.final_dir.absolute()
            while not top.parent.exists():
                top = top.parent
            self.final_dir.mkdir(parents=True)
            self._created = top
        elif not self.final_dir.is_dir():
            raise NotADirectoryError(f"{self.final_dir} exists and is not a folder")
        self._stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.final_dir))
        return self._stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stage is not None
        try:
            if exc_type is None:
                staged = sorted(p.name for p in self._stage.iterdir())
                for name in staged:
                    os.replace(self._stage / name, self.final_dir / name)
                for name in self.remove_stale:
                    if name not in staged and (self.final_dir / name).is_file():
                        (self.final_dir / name).unlink()
        finally:
            shutil.rmtree(self._stage, ignore_errors=True)
            if exc_type is not None and self._created is not None:
                shutil.rmtree(self._created, ignore_errors=True)
        return False


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented UTF-8 JSON (for use inside :class:`StagedOutput`)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
