"""MovieLens-1M (GroupLens, https://grouplens.org/datasets/movielens/1m/).

Three layouts, all joined with ``movies.dat`` (``MovieID::Title (Year)::Genre|Genre``, ISO-8859-1):

* ``movielens_dat``: ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp`` (latin-1), time = Timestamp;
* ``ml_sequences``: ``UserID MovieID MovieID ...`` per line, chronological (e.g.
  ``ml-1m.user_sequences.txt``), time = position in the sequence;
* ``diffurec_pickle``: DiffuRec's ``dataset.pkl`` (``umap``, ``smap``, ``train``/``val``/``test``);
  read only with ``--allow-pickle`` and then through a restricted unpickler that accepts plain
  builtin containers and numbers only.

Item text: ``title`` (with year) and ``genres`` (a list, written as ``"Animation, Comedy"``).
Tokens are the original UserID / MovieID.
"""
from __future__ import annotations

import io
import pickle

from ..errors import DataFormatError, PickleNotAllowedError
from ..model import RawData, make_inter, sequences_to_inter
from ..rawio import iter_lines
from .p5 import read_sequences_txt

ROLES = {
    "movielens_dat": {"required": ["ratings"], "optional": ["movies"]},
    "ml_sequences": {"required": ["sequences"], "optional": ["movies"]},
    "diffurec_pickle": {"required": ["pickle"], "optional": ["movies"]},
}


def _split(path, lineno: int, line: str, n: int) -> list[str]:
    parts = line.split("::")
    if len(parts) != n:
        raise DataFormatError(path, f"expected {n} '::'-separated fields, got {len(parts)}: {line[:80]!r}", line=lineno)
    return parts


def read_movies(path, encoding: str = "latin-1") -> dict[str, dict]:
    """Read ``movies.dat`` into ``{MovieID: {"title": str, "genres": [str]}}``.

    Raises:
        DataFormatError: a line without exactly three ``::`` fields or a repeated MovieID.
    """
    movies = {}
    for lineno, line in iter_lines(path, encoding=encoding):
        if not line.strip():
            continue
        mid, title, genres = _split(path, lineno, line, 3)
        if mid in movies:
            raise DataFormatError(path, f"MovieID {mid!r} appears twice", line=lineno)
        movies[mid] = {"title": title, "genres": [g for g in genres.split("|") if g]}
    return movies


def read_movielens_dat(files: dict, options: dict, allow_pickle: bool = False) -> RawData:
    """Read ``ratings.dat`` (+ ``movies.dat``); ratings are not kept (implicit feedback)."""
    path = files["ratings"]
    enc = options.get("encoding", "latin-1")
    users, items, times = [], [], []
    for lineno, line in iter_lines(path, encoding=enc):
        if not line.strip():
            continue
        uid, mid, _rating, ts = _split(path, lineno, line, 4)
        try:
            times.append(float(ts))
        except ValueError:
            raise DataFormatError(path, f"Timestamp {ts!r} is not a number", line=lineno) from None
        users.append(uid)
        items.append(mid)
    items_meta = read_movies(files["movies"], enc) if files.get("movies") else None
    return RawData(inter=make_inter(users, items, times), time_kind="unix", items=items_meta)


def read_ml_sequences(files: dict, options: dict, allow_pickle: bool = False) -> RawData:
    """Read ``UserID MovieID ...`` sequence lines (+ ``movies.dat``)."""
    seqs = read_sequences_txt(files["sequences"])
    enc = options.get("encoding", "latin-1")
    items_meta = read_movies(files["movies"], enc) if files.get("movies") else None
    return RawData(inter=sequences_to_inter(seqs), time_kind="order", items=items_meta)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: only builtin dicts, lists, tuples, str and numbers load."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only plain containers allowed)")


def load_plain_pickle(path, allow_pickle: bool):
    """Load a pickle of plain builtin values, only when ``allow_pickle`` is True.

    Raises:
        PickleNotAllowedError: ``allow_pickle`` is False.
        DataFormatError: the pickle is corrupt or references any class or function.
    """
    if not allow_pickle:
        raise PickleNotAllowedError(
            f"{path} is a Python pickle; pass --allow-pickle to read it (only for files you trust), "
            "or use a layout with plain-text files"
        )
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataFormatError(path, f"cannot unpickle: {exc}") from exc


def read_diffurec_pickle(files: dict, options: dict, allow_pickle: bool = False) -> RawData:
    """Read DiffuRec's ``dataset.pkl``: sequences ``train[u] + val[u] + test[u]`` mapped back to
    original ids through ``umap``/``smap`` (+ ``movies.dat``)."""
    path = files["pickle"]
    obj = load_plain_pickle(path, allow_pickle)
    try:
        inv_u = {v: str(k) for k, v in obj["umap"].items()}
        inv_s = {v: str(k) for k, v in obj["smap"].items()}
        seqs = []
        for u in sorted(obj["train"]):
            seq = list(obj["train"][u]) + list(obj["val"].get(u, [])) + list(obj["test"].get(u, []))
            seqs.append((inv_u[u], [inv_s[i] for i in seq]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataFormatError(path, f"not a DiffuRec dataset dict (umap/smap/train/val/test): {exc!r}") from exc
    enc = options.get("encoding", "latin-1")
    items_meta = read_movies(files["movies"], enc) if files.get("movies") else None
    return RawData(inter=sequences_to_inter(seqs), time_kind="order", items=items_meta)
