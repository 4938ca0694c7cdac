"""Input-format readers. Each module exposes ``ROLES`` (file roles it reads: required ones and
optional ones) and ``read(files, options, allow_pickle) -> RawData``.

``files`` maps a role to an existing :class:`pathlib.Path` (optional roles may be ``None``);
``options`` is the layout's ``options`` mapping from the recipe.
"""
from __future__ import annotations

from importlib import import_module

FORMATS = {
    "amazon2014": "amazon2014",
    "amazon2018": "amazon2018",
    "letter": "letter",
    "p5": "p5",
    "movielens_dat": "movielens",
    "ml_sequences": "movielens",
    "diffurec_pickle": "movielens",
}


def get_reader(name: str):
    """Return ``(roles, read)`` for format ``name``.

    Raises:
        KeyError: unknown format (message lists the known ones).
    """
    if name not in FORMATS:
        raise KeyError(f"unknown input format {name!r}; known: {sorted(FORMATS)}")
    mod = import_module(f"{__name__}.{FORMATS[name]}")
    return mod.ROLES[name], getattr(mod, "read_" + name)
