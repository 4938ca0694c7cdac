"""Errors raised while preparing datasets.

Every error names the file (and, where it applies, the line number, field or value) so a user
can find the bad input without a debugger.
"""
from __future__ import annotations


class DataError(Exception):
    """Base class for all data-preparation errors (bad recipe, bad input, missing file)."""


class RecipeError(DataError):
    """A recipe file is missing, unreadable or does not follow the recipe schema."""


class MissingInputError(DataError):
    """A raw input file named by a recipe is not present in ``--raw-dir``."""


class MissingItemTextError(DataError):
    """Item text was required (``--require-text``) but the dataset has none."""


class PickleNotAllowedError(DataError):
    """A layout needs a pickled input and ``--allow-pickle`` was not given."""


class DataFormatError(DataError):
    """An input file does not match its declared format.

    Args:
        path: the offending file.
        message: what is wrong.
        line: 1-based line number in ``path`` (``None`` when not line-oriented).
    """

    def __init__(self, path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
