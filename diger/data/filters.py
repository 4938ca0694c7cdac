"""Interaction filters: de-duplication and the iterative user/item k-core."""
from __future__ import annotations

import pandas as pd


def dedupe(inter: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, int]:
    """Drop duplicated interactions; returns ``(frame, n_dropped)``. Row order is kept.

    Policies: ``none``; ``exact`` drops rows equal in (user, item, time); ``user_item`` keeps only
    the first row (in file order) of each (user, item) pair.

    Raises:
        ValueError: unknown policy.
    """
    if policy == "none":
        return inter, 0
    if policy == "exact":
        mask = inter.duplicated(subset=["user", "item", "time"], keep="first")
    elif policy == "user_item":
        mask = inter.duplicated(subset=["user", "item"], keep="first")
    else:
        raise ValueError(f"unknown dedupe policy {policy!r}")
    return inter[~mask], int(mask.sum())


def kcore(inter: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Iteratively drop users and items with fewer than ``k`` interactions until none is left.

    Every interaction counts (repeats included). Returns ``(frame, n_rounds)``; ``k <= 1`` is a
    no-op. Row order is kept.
    """
    rounds = 0
    if k <= 1:
        return inter, rounds
    while True:
        ucount = inter.groupby("user", sort=False)["user"].transform("size")
        icount = inter.groupby("item", sort=False)["item"].transform("size")
        keep = (ucount >= k) & (icount >= k)
        if bool(keep.all()):
            return inter, rounds
        inter = inter[keep]
        rounds += 1


def chronological(inter: pd.DataFrame) -> pd.DataFrame:
    """Group rows by user (users in order of first appearance) and sort each user's rows by
    ``time``, ties kept in file order (stable sort)."""
    first = inter.groupby("user", sort=False).ngroup()
    out = inter.assign(_u=first.values, _pos=range(len(inter)))
    out = out.sort_values(["_u", "time", "_pos"], kind="stable")
    return out.drop(columns=["_u", "_pos"]).reset_index(drop=True)


def order_index(inter: pd.DataFrame) -> pd.Series:
    """0-based position of each row within its user's rows (``inter`` must be chronological)."""
    return inter.groupby("user", sort=False).cumcount().astype("float64")
