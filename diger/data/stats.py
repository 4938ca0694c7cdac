"""Summary statistics written to ``stats.json``."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd


def sequence_stats(inter: pd.DataFrame) -> dict:
    """Users, items, interactions, per-user sequence-length quantiles and the leave-one-out sizes.

    ``loo_split`` gives the rows RecBole's ``LS: valid_and_test`` split yields: one validation and
    one test target per user and ``n - 3`` training prefixes per user (targets at positions
    2..n-2), so ``train = interactions - 3 * users`` when every user has at least 3 items.
    """
    lengths = inter.groupby("user", sort=False).size().to_numpy()
    n_users, n_inter = int(len(lengths)), int(len(inter))
    out = {
        "users": n_users,
        "items": int(inter["item"].nunique()),
        "interactions": n_inter,
    }
    if n_users:
        q = np.quantile(lengths, [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])
        out["seq_len"] = {
            "min": int(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p90": float(q[4]), "p99": float(q[5]), "max": int(q[6]), "mean": round(float(lengths.mean()), 4),
        }
        out["density"] = round(n_inter / (n_users * max(out["items"], 1)), 8)
        out["loo_split"] = {
            "train": int(np.clip(lengths - 3, 0, None).sum()),
            "valid": int((lengths >= 2).sum()),
            "test": n_users,
            "users_below_3": int((lengths < 3).sum()),
        }
    return out


def file_fingerprint(path: Path) -> dict:
    """``{"path", "bytes", "sha256"}`` of an input file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}
