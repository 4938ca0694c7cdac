"""The in-memory result of reading one raw layout, before filtering and writing."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class RawData:
    """What a format reader returns.

    Attributes:
        inter: DataFrame with columns ``user`` (str), ``item`` (str), ``time`` (float64), one row
            per interaction in *file order* (row order is the tie-breaker for equal times).
        time_kind: ``"unix"`` (seconds since epoch from the raw data) or ``"order"`` (position in
            the user's published chronological sequence, 0-based).
        items: item token -> raw metadata dict (values as parsed: str, list, ...), or ``None``
            when the layout has no item metadata file at all.
        sources: input files actually read (for ``stats.json``).
        notes: human-readable remarks from the reader (e.g. duplicated metadata lines).
    """

    inter: pd.DataFrame
    time_kind: str
    items: dict[str, dict] | None
    sources: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_inter(users: list[str], items: list[str], times: list[float]) -> pd.DataFrame:
    """Build the ``inter`` DataFrame of :class:`RawData` from three equal-length lists."""
    return pd.DataFrame({
        "user": pd.Series(users, dtype=object),
        "item": pd.Series(items, dtype=object),
        "time": pd.Series(times, dtype="float64"),
    })


def sequences_to_inter(seqs: list[tuple[str, list[str]]]) -> pd.DataFrame:
    """Expand ``[(user, [item, ...]), ...]`` (chronological) into an ``inter`` DataFrame with
    ``time`` = 0-based position in the sequence."""
    users, items, times = [], [], []
    for user, seq in seqs:
        users.extend([user] * len(seq))
        items.extend(seq)
        times.extend(range(len(seq)))
    return make_inter(users, items, times)
