"""Tiny synthetic data and configs for tests and the benches' --smoke modes.

:func:`write_dataset` writes a small synthetic RecBole dataset (atomic files) to a folder; :func:`small_config`
is a config dict for TIGER/DIGER on it with tiny sizes. Imports only numpy (no RecBole, no torch).

40 users walk a ring of 24 items (each user starts somewhere and steps +1 or +2), so the next item
is predictable from the history; items have a title and a genre, and a random 16-d embedding file keyed by item id.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

N_USERS, N_ITEMS = 40, 24


def write_dataset(root: Path, name: str = "toy", *, with_text: bool = True, seed: int = 0, n_users: int = N_USERS) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        cur = int(rng.integers(0, N_ITEMS))
        step = 1 + (u % 2)
        for t in range(8 + u % 5):
            rows.append(f"u{u}\ti{cur}\t{1000 + 10 * t}")
            cur = (cur + step) % N_ITEMS
    (folder / f"{name}.inter").write_text("\n".join(rows) + "\n")
    genres = ["Comedy", "Drama", "Action", "Horror"]
    items = ["item_id:token\ttitle:token_seq\tgenre:token_seq"]
    for i in range(N_ITEMS):
        title = f"Movie number {i}" if with_text or i % 5 else ""
        items.append(f"i{i}\t{title}\t{genres[i % 4] if with_text or i % 5 else ''}")
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    # Precomputed item vectors keyed by raw item id (diger.text.load_item_embedding_file).
    np.savez(folder / "emb.npz", item_id=np.array([f"i{i}" for i in range(N_ITEMS)]),
             embedding=rng.normal(size=(N_ITEMS, 16)).astype(np.float32))
    return folder


def small_config(root: Path, **extra) -> dict:
    """Config dict for TIGER/DIGER on the toy dataset: tiny sizes, one epoch, no text model."""
    cfg = {
        "data_path": str(root),
        "checkpoint_dir": str(root / "saved"),
        "item_emb_file": str(root / "toy" / "emb.npz"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "text_fields": ["title", "genre"],
        "encoder_layers": [16],
        "e_dim": 8,
        "code_levels": 2,
        "code_num": 4,
        "suffix_size": 16,
        "rqvae_epochs": 20,
        "rqvae_eval_every": 10,
        "t5_layers": 1,
        "t5_decoder_layers": 1,
        "d_model": 32,
        "d_ff": 64,
        "num_heads": 2,
        "d_kv": 16,
        "MAX_ITEM_LIST_LENGTH": 6,
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 64,
        "warmup_steps": 2,
        "num_beams": 10,
        "topk": [5, 10],
        "metrics": ["Recall", "NDCG", "MRR", "Hit"],
        "valid_metric": "NDCG@10",
        "show_progress": False,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "state": "WARNING",
    }
    cfg.update(extra)
    return cfg
