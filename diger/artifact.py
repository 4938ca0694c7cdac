"""Semantic-ID artifacts: stage 0 (item embeddings -> RQ-VAE -> SID table) built once, saved, reused (issue 15).

An artifact is a folder::

    artifact.json          format, dataset, the settings that made it, content hashes, pre-training summary,
                           codebook statistics
    item_embeddings.npz    item_id [N] (raw ids) and embedding [N, D] float32 (the ``item_emb_file`` format)
    tokenizer.pt           the RQ-VAE / RQ-KMeans state dict (plain tensors, ``torch.load(weights_only=True)``)
    sid_table.csv          item_id, code_1 .. code_L, suffix (raw item ids)

Everything is keyed by raw item id, so a dataset whose internal ids differ (another filtering, another
split) can load it; the SID table is used as saved (its collision suffixes are not recomputed).
``diger sid build`` writes one; the config key ``sid_artifact: DIR`` makes TIGER / DIGER load it instead of
pre-training, and ``sid_artifact: auto`` builds it under ``$DIGER_CACHE/sid/<key>`` when absent and reuses it
when the item ids, item embeddings and settings hash to the same key (logged either way).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

FORMAT = "diger-sid-artifact/1"
FILES = ("artifact.json", "item_embeddings.npz", "tokenizer.pt", "sid_table.csv")
#: Config keys that, with the item ids and item embeddings, determine the semantic IDs.
SID_KEYS = ("tokenizer", "encoder_layers", "e_dim", "code_levels", "code_num", "suffix_size", "vq_beta",
            "rqvae_epochs", "rqvae_lr", "rqvae_weight_decay", "rqvae_batch_size", "rqvae_eval_every",
            "kmeans_init", "kmeans_iters", "sid_sinkhorn", "sk_epsilon", "sk_iters", "rqvae_path", "sid_table_file",
            "seed")
#: Settings the model's shapes depend on: a loaded artifact must agree with the run on these.
SHAPE_KEYS = ("tokenizer", "encoder_layers", "e_dim", "code_levels", "code_num", "suffix_size")


class ArtifactError(ValueError):
    """A semantic-ID artifact folder is missing, incomplete, corrupted or does not fit the run."""


def sid_settings(config) -> Dict:
    """The :data:`SID_KEYS` values of a RecBole config as plain JSON data (``None`` for unset keys)."""
    from .compat import to_plain

    return {k: to_plain(config[k] if k in config else None) for k in SID_KEYS}


def sid_columns(levels: int) -> List[str]:
    """Column names of an exported SID table: ``item_id, code_1 .. code_L, suffix`` (DIGER-method.md §4)."""
    return ["item_id"] + [f"code_{j + 1}" for j in range(levels)] + ["suffix"]


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def content_hashes(item_ids: Sequence[str], item_emb: np.ndarray, settings: Dict) -> Dict[str, str]:
    """SHA-256 of the raw item ids (in order), of the embedding bytes (float32, C order), of the settings (sorted
    JSON) and ``key`` over all three: equal keys mean the same stage-0 inputs."""
    ids = _sha("\n".join(map(str, item_ids)).encode())
    emb = _sha(np.ascontiguousarray(item_emb, dtype=np.float32).tobytes(), str(item_emb.shape).encode())
    sett = _sha(json.dumps(settings, sort_keys=True).encode())
    return {"items": ids, "embeddings": emb, "settings": sett, "key": _sha(ids.encode(), emb.encode(), sett.encode())}


def save_artifact(folder, *, dataset: str, item_ids: Sequence[str], item_emb: np.ndarray, tokenizer_state: Dict,
                  sid_table: torch.Tensor, settings: Dict, pretrain_info: Optional[Dict] = None,
                  codebook: Optional[Dict] = None, text: Optional[Dict] = None) -> Path:
    """Write an artifact folder atomically (staged, then renamed file by file; an error leaves no partial folder).

    Args:
        item_ids: ``N`` raw item ids; ``item_emb`` ``[N, D]``; ``sid_table`` ``[N, L+1]`` (no pad rows).

    Raises:
        ArtifactError: for mismatched lengths or a table holding ``-1`` (an item without a semantic ID).
    """
    from .compat import to_plain
    from .data.atomic import StagedOutput

    item_ids = [str(i) for i in item_ids]
    table = sid_table.detach().cpu().long()
    if not (len(item_ids) == item_emb.shape[0] == table.shape[0]):
        raise ArtifactError(f"artifact {folder}: {len(item_ids)} item ids, {item_emb.shape[0]} embeddings and "
                            f"{table.shape[0]} SID rows; they must be equal")
    if (table < 0).any():
        raise ArtifactError(f"artifact {folder}: item {item_ids[int((table < 0).any(1).nonzero()[0])]!r} has no semantic ID")
    hashes = content_hashes(item_ids, item_emb, settings)
    levels = table.shape[1] - 1
    meta = {
        "format": FORMAT, "dataset": dataset, "n_items": len(item_ids), "embedding_dim": int(item_emb.shape[1]),
        "code_levels": levels, "settings": settings, "hashes": hashes, "text": text or {},
        "pretrain_info": to_plain(pretrain_info or {}), "codebook": to_plain(codebook or {}),
        "sid_table_sha256": _sha(table.numpy().tobytes()),
    }
    with StagedOutput(Path(folder)) as stage:
        np.savez(stage / "item_embeddings.npz", item_id=np.array(item_ids), embedding=item_emb.astype(np.float32))
        torch.save({k: v.detach().cpu() for k, v in tokenizer_state.items()}, stage / "tokenizer.pt")
        with open(stage / "sid_table.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(sid_columns(levels))
            w.writerows([i] + row for i, row in zip(item_ids, table.tolist()))
        meta["tokenizer_sha256"] = _sha((stage / "tokenizer.pt").read_bytes())
        (stage / "artifact.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return Path(folder)


class SemanticIDArtifact:
    """A loaded artifact: ``meta`` (artifact.json), ``item_ids`` [N], ``item_emb`` [N, D], ``sid_table`` [N, L+1],
    ``tokenizer_state``. Built by :func:`load_artifact`."""

    def __init__(self, folder: Path, meta: Dict, item_ids: List[str], item_emb: np.ndarray, sid_table: torch.Tensor,
                 tokenizer_state: Dict) -> None:
        self.folder, self.meta, self.item_ids = folder, meta, item_ids
        self.item_emb, self.sid_table, self.tokenizer_state = item_emb, sid_table, tokenizer_state

    def check_fits(self, config) -> None:
        """Raise :class:`ArtifactError` naming every :data:`SHAPE_KEYS` setting where run and artifact disagree."""
        mine = sid_settings(config)
        bad = [f"{k}: run {mine[k]!r}, artifact {self.meta['settings'].get(k)!r}" for k in SHAPE_KEYS
               if mine[k] is not None and self.meta["settings"].get(k) is not None and mine[k] != self.meta["settings"][k]]
        if bad:
            raise ArtifactError(f"sid_artifact {self.folder} was built with other model shapes ({'; '.join(bad)}); "
                                f"set these keys as the artifact has them, or build a new one (diger sid build)")

    def aligned(self, item_tokens: Sequence[str]):
        """``(item_emb [n+1, D], sid_table [n+1, L+1])`` in a dataset's internal-id order (row 0 = pad: zeros / -1).

        Args:
            item_tokens: the dataset's raw item ids by internal id, ``[PAD]`` first (``field2id_token``).

        Raises:
            ArtifactError: naming the first item of the dataset the artifact lacks, and how many are missing.
        """
        index = {i: r for r, i in enumerate(self.item_ids)}
        tokens = [str(t) for t in item_tokens[1:]]
        missing = [t for t in tokens if t not in index]
        if missing:
            raise ArtifactError(f"sid_artifact {self.folder} has no semantic ID for item {missing[0]!r} "
                                f"({len(missing)} of the dataset's {len(tokens)} items are missing); build the "
                                f"artifact on this dataset (diger sid build)")
        rows = torch.as_tensor([index[t] for t in tokens], dtype=torch.long)
        emb = torch.zeros(len(tokens) + 1, self.item_emb.shape[1])
        emb[1:] = torch.from_numpy(self.item_emb)[rows]
        table = torch.full((len(tokens) + 1, self.sid_table.shape[1]), -1, dtype=torch.long)
        table[1:] = self.sid_table[rows]
        return emb, table


def load_artifact(folder) -> SemanticIDArtifact:
    """Read and verify an artifact folder written by :func:`save_artifact`.

    Raises:
        ArtifactError: for a missing folder or file, an unknown format, or files whose content no longer hashes
            to what artifact.json recorded (naming the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"sid_artifact {folder}: no such folder (build one with `diger sid build`)")
    absent = [f for f in FILES if not (folder / f).is_file()]
    if absent:
        raise ArtifactError(f"sid_artifact {folder}: missing {absent}; an artifact holds {list(FILES)}")
    try:
        meta = json.loads((folder / "artifact.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"sid_artifact {folder}/artifact.json is not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"sid_artifact {folder}/artifact.json: format {meta.get('format')!r}, expected {FORMAT!r}")
    with np.load(folder / "item_embeddings.npz", allow_pickle=False) as data:
        item_ids = [str(i) for i in data["item_id"].tolist()]
        item_emb = data["embedding"].astype(np.float32)
    with open(folder / "sid_table.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    if [r[0] for r in rows] != item_ids:
        raise ArtifactError(f"sid_artifact {folder}/sid_table.csv: its item ids differ from item_embeddings.npz")
    try:
        table = torch.tensor([[int(v) for v in r[1:]] for r in rows], dtype=torch.long).view(len(rows), -1)
    except ValueError:
        row = next(n for n, r in enumerate(rows, 2) if not all(v.lstrip("-").isdigit() for v in r[1:]))
        raise ArtifactError(f"sid_artifact {folder}/sid_table.csv line {row}: codes must be integers, got "
                            f"{rows[row - 2][1:]!r}") from None
    hashes = content_hashes(item_ids, item_emb, meta["settings"])
    for name, key in (("item_embeddings.npz", "embeddings"), ("item_embeddings.npz", "items"),
                      ("artifact.json", "settings")):
        if hashes[key] != meta["hashes"][key]:
            raise ArtifactError(f"sid_artifact {folder}/{name}: content changed since the artifact was built "
                                f"({key} hash differs); rebuild it")
    if _sha(table.numpy().tobytes()) != meta["sid_table_sha256"]:
        raise ArtifactError(f"sid_artifact {folder}/sid_table.csv: content changed since the artifact was built; rebuild it")
    if _sha((folder / "tokenizer.pt").read_bytes()) != meta.get("tokenizer_sha256"):
        raise ArtifactError(f"sid_artifact {folder}/tokenizer.pt: content changed since the artifact was built "
                            f"(it no longer belongs to this SID table); rebuild it")
    try:
        state = torch.load(folder / "tokenizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable / not plain tensors: never retry with weights_only=False
        raise ArtifactError(f"sid_artifact {folder}/tokenizer.pt cannot be read as plain tensors ({type(exc).__name__}); "
                            f"rebuild the artifact") from None
    return SemanticIDArtifact(folder, meta, item_ids, item_emb, table, state)


def cache_folder(key: str) -> Path:
    """``$DIGER_CACHE/sid/<key>`` (default ``~/.cache/diger/sid/<key>``): where ``sid_artifact: auto`` keeps artifacts."""
    return Path(os.environ.get("DIGER_CACHE", Path.home() / ".cache" / "diger")) / "sid" / key


def build_artifact(out, *, model: str = "TIGER", dataset: str = "ml-100k", config_file_list=None,
                   config_dict: Optional[Dict] = None) -> Path:
    """Run stage 0 for ``model``'s settings on ``dataset`` and write the artifact to ``out`` (``diger sid build``).

    The config is built as ``diger run`` builds it (same files, same precedence), so ``diger run`` with the same
    config and ``sid_artifact: out`` trains on exactly these semantic IDs.

    Raises:
        ValueError: for a model without semantic IDs; the errors of :func:`diger.quick_start.make_config`.
    """
    from .models.tiger import SemanticIDRecommender
    from .quick_start import load_dataset, make_config, resolve_model

    cls = resolve_model(model)
    if not issubclass(cls, SemanticIDRecommender):
        raise ValueError(f"{model} has no semantic IDs; build an artifact for TIGER or DIGER")
    cfg = dict(config_dict or {})
    cfg.pop("sid_artifact", None)  # build: never load one
    config = make_config(model, dataset, config_file_list, cfg)
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    ds = load_dataset(config)
    net = cls(config, ds)  # stage 0 runs in the constructor when no artifact is given
    return net.save_sid_artifact(out)
