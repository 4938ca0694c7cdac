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

import contextlib
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
            "sid_seed")
#: Settings the model's shapes depend on: a loaded artifact must agree with the run on these.
SHAPE_KEYS = ("tokenizer", "encoder_layers", "e_dim", "code_levels", "code_num", "suffix_size")


class ArtifactError(ValueError):
    """A semantic-ID artifact folder is missing, incomplete, corrupted or does not fit the run."""


def stage0_seed(config) -> int:
    """The seed of stage 0 (RQ-VAE initialisation, k-means, pre-training order): ``sid_seed``, or the run's ``seed``
    when ``sid_seed`` is ``~``.

    With the default ``sid_seed`` (2020, RecBole's default ``seed``) runs of every ``seed`` share one pre-training
    (one ``auto`` artifact) and differ only in the recommender; ``sid_seed: ~`` pre-trains once per run seed.

    Raises:
        ValueError: when ``sid_seed`` is not a non-negative integer.
    """
    s = config["sid_seed"] if "sid_seed" in config else None
    if s is None:
        return int(config["seed"])
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
        raise ValueError(f"config key 'sid_seed' must be a non-negative integer or ~ (the run's seed), got {s!r}")
    return int(s)


def sid_settings(config) -> Dict:
    """The :data:`SID_KEYS` values of a RecBole config as plain JSON data (``None`` for unset keys; ``sid_seed``
    resolved by :func:`stage0_seed`)."""
    from .compat import to_plain

    out = {k: to_plain(config[k] if k in config else None) for k in SID_KEYS}
    out["sid_seed"] = stage0_seed(config)
    return out


def sid_columns(levels: int) -> List[str]:
    """Column names of an exported SID table: ``item_id, code_1 .. code_L, suffix`` (``L`` residual codes, then the collision suffix)."""
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
                  codebook: Optional[Dict] = None, text: Optional[Dict] = None,
                  assigned: Optional[Dict] = None) -> Path:
    """Write an artifact folder atomically (staged, then renamed file by file; an error leaves no partial folder).

    Args:
        item_ids: ``N`` raw item ids; ``item_emb`` ``[N, D]``; ``sid_table`` ``[N, L+1]`` (no pad rows).
        assigned: for an artifact extended by :func:`assign_semantic_ids`, where its base came from and how many
            items were added (kept in artifact.json under ``assigned``).

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
    if assigned:
        meta["assigned"] = to_plain(assigned)
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

    @property
    def published(self) -> bool:
        """Published semantic IDs (LETTER's ``*.index.json`` through ``sid_table_file``): a table, no tokenizer."""
        return not self.tokenizer_state

    def save(self, folder) -> Path:
        """Write this artifact to ``folder`` (:func:`save_artifact`); returns the folder."""
        from .tokenizer import codebook_stats

        m = self.meta
        levels = self.sid_table.shape[1] - 1
        k = int(m["settings"].get("code_num") or int(self.sid_table[:, :levels].max()) + 1)
        return save_artifact(folder, dataset=m["dataset"], item_ids=self.item_ids, item_emb=self.item_emb,
                             tokenizer_state=self.tokenizer_state, sid_table=self.sid_table, settings=m["settings"],
                             pretrain_info=m.get("pretrain_info"), text=m.get("text"), assigned=m.get("assigned"),
                             codebook=codebook_stats(self.sid_table, [k] * levels))

    def check_fits(self, config) -> None:
        """Raise :class:`ArtifactError` naming every :data:`SHAPE_KEYS` setting where run and artifact disagree
        (for a :attr:`published` table only ``code_levels``, ``code_num`` and ``suffix_size``)."""
        mine = sid_settings(config)
        keys = ("code_levels", "code_num", "suffix_size") if self.published else SHAPE_KEYS
        bad = [f"{k}: run {mine[k]!r}, artifact {self.meta['settings'].get(k)!r}" for k in keys
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
        ValueError: for a model without semantic IDs; ArtifactError: for an ``out`` that exists and is not an
        empty folder; the errors of :func:`diger.quick_start.make_config`.
    """
    from .models.tiger import SemanticIDRecommender
    from .quick_start import load_dataset, make_config, resolve_model

    cls = resolve_model(model)
    if not issubclass(cls, SemanticIDRecommender):
        raise ValueError(f"{model} has no semantic IDs; build an artifact for TIGER or DIGER")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # runs may train on it: never replaced in place
        raise ArtifactError(f"sid build: output {out} exists and is not an empty folder; name a new folder")
    cfg = dict(config_dict or {})
    cfg.pop("sid_artifact", None)  # build: never load one
    config = make_config(model, dataset, config_file_list, cfg)
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    ds = load_dataset(config)
    art = resolve_stage0(config, ds)  # what the model's constructor would load; no model is built
    if art.published and cls.joint_training:
        raise ValueError("published semantic IDs (sid_table_file, no tokenizer) are for TIGER; DIGER learns its "
                         "own codebooks: build the artifact with --model TIGER")
    return art.save(out)


def model_stage0(net) -> Dict:
    """The :func:`save_artifact` keyword arguments of a TIGER / DIGER model's current stage 0.

    Item embeddings ``[N, D]``, tokenizer state and SID table ``[N, L+1]`` as the model holds them now (a DIGER
    model loaded from its best checkpoint: the codebooks and table of that epoch), keyed by raw item id.
    """
    config = net.config
    text = {k: (config[k] if k in config else None) for k in ("text_fields", "text_model", "item_emb_file")}
    text = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in text.items()}
    published = bool(config["sid_table_file"]) if "sid_table_file" in config else False
    if published:  # a published table: no tokenizer and no item vectors belong to it
        return dict(dataset=str(config["dataset"]), item_ids=[str(t) for t in net.dataset_item_tokens[1:]],
                    item_emb=net.item_emb[1:].detach().cpu().numpy(), tokenizer_state={},
                    sid_table=net.sid_table[1:].detach().cpu(), settings=sid_settings(config),
                    pretrain_info={**net.pretrain_info, "sid_table_file_sha256":
                                   _sha(Path(config["sid_table_file"]).read_bytes())},
                    codebook=net.codebook_statistics(), text=text)
    return dict(dataset=str(config["dataset"]), item_ids=[str(t) for t in net.dataset_item_tokens[1:]],
                item_emb=net.item_emb[1:].detach().cpu().numpy(), tokenizer_state=net.tokenizer.state_dict(),
                sid_table=net.sid_table[1:].detach().cpu(), settings=sid_settings(config),
                pretrain_info=net.pretrain_info, codebook=net.codebook_statistics(), text=text)


def _base_stage0(source) -> Dict:
    """:func:`save_artifact` kwargs of an artifact folder, or of a TIGER / DIGER run folder / checkpoint."""
    folder = Path(source)
    if (folder / "artifact.json").is_file():
        art = load_artifact(folder)
        m = art.meta
        return dict(dataset=m["dataset"], item_ids=list(art.item_ids), item_emb=art.item_emb,
                    tokenizer_state=art.tokenizer_state, sid_table=art.sid_table, settings=m["settings"],
                    pretrain_info=m.get("pretrain_info", {}), text=m.get("text", {}),
                    source={"artifact": str(folder), "key": m["hashes"]["key"]})
    from .models.tiger import SemanticIDRecommender
    from .serving import load_recommender

    rec = load_recommender(source, device="cpu")
    if not isinstance(rec.model, SemanticIDRecommender):
        raise ValueError(f"{source}: a {rec.config['model']} run has no semantic IDs; give a TIGER / DIGER run "
                         f"or an artifact folder (diger sid build)")
    parts = model_stage0(rec.model)
    parts.pop("codebook")
    parts["source"] = {"run_checkpoint": rec.checkpoint}
    return parts


def _new_item_vectors(text: Dict, known: set, items_file=None, embeddings_file=None, id_field: str = "item_id",
                      text_fill: Optional[str] = None, embedding_cache_dir=None):
    """``(new ids, [m, D] float32, number of known ids skipped)`` from a ``.item`` file or an embeddings ``.npz``."""
    if (items_file is None) == (embeddings_file is None):
        raise ValueError("assign: give exactly one of --items NEW.item (item text, embedded with the artifact's "
                         "text model) or --embeddings NEW.npz (item_id [m], embedding [m, D])")
    if embeddings_file is not None:
        path = str(embeddings_file)
        if not path.endswith(".npz") or not Path(path).is_file():
            raise ValueError(f"--embeddings {path}: expected an existing .npz with arrays item_id [m] and embedding [m, D]")
        with np.load(path, allow_pickle=False) as data:
            if not {"item_id", "embedding"} <= set(data.files):
                raise ValueError(f"--embeddings {path}: needs arrays item_id and embedding, has {sorted(data.files)}")
            ids, vecs = [str(i) for i in data["item_id"].tolist()], data["embedding"].astype(np.float32)
        if vecs.ndim != 2 or len(ids) != vecs.shape[0]:
            raise ValueError(f"--embeddings {path}: item_id must be [m] and embedding [m, D], got "
                             f"{len(ids)} ids and {list(vecs.shape)}")
        seen: Dict[str, int] = {}
        for row, i in enumerate(ids):
            if i in seen:
                raise ValueError(f"--embeddings {path}: item id {i!r} appears twice (rows {seen[i]} and {row})")
            seen[i] = row
        keep = [r for r, i in enumerate(ids) if i not in known]
        return [ids[r] for r in keep], vecs[keep], len(ids) - len(keep)
    from .text import build_item_texts, embed_texts, read_item_table

    if text.get("item_emb_file"):
        raise ValueError(f"assign: this artifact's item vectors came from item_emb_file {text['item_emb_file']}, not "
                         f"from item text; give the new items' vectors with --embeddings NEW.npz")
    fields = text.get("text_fields")
    if not fields:
        raise ValueError("assign: the artifact records no text_fields; give the new items' vectors with --embeddings")
    table = read_item_table(items_file, id_field, fields)
    ids = [i for i in table if i not in known]
    if not ids:
        return [], np.zeros((0, 0), np.float32), len(table)
    texts = build_item_texts(["[PAD]", *ids], table, fields, fill=text_fill, source=str(items_file))
    vecs = embed_texts(texts, model=text.get("text_model"), cache_dir=embedding_cache_dir, show_progress=False)[1:]
    return ids, vecs, len(table) - len(ids)


#: How :func:`assign_semantic_ids` codes new items: ``sinkhorn`` (the table's own rule, as the official DIGER ``get_codes``),
#: ``argmin`` (nearest code per level), ``auto`` (``sinkhorn`` when the source's table was built with it).
ASSIGN_RULES = ("auto", "sinkhorn", "argmin")


def assign_semantic_ids(source, out, *, items_file=None, embeddings_file=None, id_field: str = "item_id",
                        text_fill: Optional[str] = None, embedding_cache_dir=None, rule: str = "auto") -> Dict:
    """Give semantic IDs to items ``source`` does not know, with its frozen tokenizer (``diger sid assign``).

    Every existing row (raw id, item embedding, codes, suffix) and the tokenizer state are copied bitwise; the new
    items follow in input order. A new item's ``L`` codes come from the frozen codebooks by the table's own rule:
    with ``sinkhorn`` the balanced assignment (``sid_sinkhorn``, ``sk_epsilon``, ``sk_iters`` of the source) is
    recomputed over the whole catalogue, old and new items, and the new items take theirs (the old items keep
    their saved rows whatever the recomputation gives them); with ``argmin`` each level takes the nearest code.
    Its collision suffix is the next free one of its prefix group (one more than the group's largest suffix),
    so the old suffixes do not move.

    Args:
        source: an artifact folder (``diger sid build``) or a TIGER / DIGER run folder or checkpoint (its
            best epoch's tokenizer and table; for DIGER these are the jointly trained codebooks).
        out: the new artifact folder; it must not exist or be empty (the source is never modified).
        items_file: a RecBole ``.item`` file with the artifact's ``text_fields``, embedded with its ``text_model``.
        embeddings_file: or an ``.npz`` of ``item_id [m]`` and ``embedding [m, D]`` (required when the source's
            vectors came from ``item_emb_file``).
        id_field: the item-id column of ``items_file``. ``text_fill``: text for new items without any.

    Returns:
        Summary dict: ``artifact``, ``n_items`` (total), ``new_items``, ``known_items_skipped``,
        ``new_with_suffix_gt0`` (new items that share a prefix), ``rule``, ``rule_agreement_known`` (share of
        the source's items to which the rule, applied to the whole catalogue, gives their saved prefix: how
        faithfully the rule reproduces the table's).

    Raises:
        ArtifactError: for an unreadable source or an existing ``out``; ValueError: for bad input files (naming
        file, row or id), a dimension mismatch; SemanticIDCollisionError: when a prefix group is full, naming the
        new item and the prefix.
    """
    from .tokenizer import RQTokenizer, SemanticIDCollisionError, codebook_stats

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"assign: output {out} exists and is not an empty folder; name a new folder")
    base = _base_stage0(source)
    if not base["tokenizer_state"]:
        raise ArtifactError(f"assign: {source} holds published semantic IDs ({base['settings'].get('sid_table_file')}) "
                            f"without the tokenizer that made them, so new items cannot be coded; build an artifact "
                            f"with our tokenizer (diger sid build without sid_table_file)")
    known = set(base["item_ids"])
    new_ids, vecs, skipped = _new_item_vectors(base["text"], known, items_file, embeddings_file, id_field,
                                               text_fill, embedding_cache_dir)
    if not new_ids:
        raise ValueError(f"assign: every item of {items_file or embeddings_file} already has a semantic ID in "
                         f"{source}; nothing to assign")
    dim = base["item_emb"].shape[1]
    if vecs.shape[1] != dim:
        raise ValueError(f"assign: the new items' vectors have {vecs.shape[1]} dimensions, the artifact's {dim}")
    bad = np.where(~np.isfinite(vecs).all(1))[0]
    if bad.size:
        raise ValueError(f"assign: item {new_ids[int(bad[0])]!r} has non-finite embedding values")
    tok = RQTokenizer.from_state_dict(base["tokenizer_state"])
    old = base["sid_table"].long()
    levels = old.shape[1] - 1
    if tok.num_levels != levels:
        raise ArtifactError(f"assign: tokenizer has {tok.num_levels} levels, SID table {levels}")
    settings = base["settings"]
    if rule == "auto":
        rule = "sinkhorn" if settings.get("sid_sinkhorn", True) and not settings.get("sid_table_file") else "argmin"
    if rule not in ASSIGN_RULES:
        raise ValueError(f"assign: rule must be one of {list(ASSIGN_RULES)}, got {rule!r}")
    n_old = old.shape[0]
    everything = torch.from_numpy(np.concatenate([base["item_emb"], vecs]).astype(np.float32))
    sk = {"sk_epsilon": float(settings.get("sk_epsilon") or 0.003), "sk_iters": int(settings.get("sk_iters") or 50)}
    codes = tok.get_codes(everything, sinkhorn=rule == "sinkhorn", **sk)  # the table's rule over the whole catalogue
    prefix = codes[n_old:]
    agreement = float((codes[:n_old] == old[:, :levels]).all(1).float().mean())
    suffix_size = int(settings.get("suffix_size") or settings.get("code_num") or tok.num_codes[0])
    next_suffix: Dict[tuple, int] = {}
    for row in old.tolist():
        key = tuple(row[:levels])
        next_suffix[key] = max(next_suffix.get(key, 0), row[levels] + 1)
    rows = []
    for item, p in zip(new_ids, prefix.tolist()):
        s = next_suffix.get(tuple(p), 0)
        if s >= suffix_size:
            raise SemanticIDCollisionError(
                f"assign: item {item!r} gets the prefix {p}, whose collision group is full (all {suffix_size} "
                f"suffixes of suffix_size in use); existing rows are never renumbered: build a new artifact with a larger "
                f"suffix_size or codebook")
        next_suffix[tuple(p)] = s + 1
        rows.append(p + [s])
    table = torch.cat([old, torch.as_tensor(rows, dtype=torch.long).view(len(rows), levels + 1)])
    item_emb = np.concatenate([base["item_emb"].astype(np.float32), vecs.astype(np.float32)])
    info = {"source": base["source"], "new_items": len(new_ids), "known_items_skipped": skipped,
            "from_file": str(items_file or embeddings_file), "rule": rule, "rule_agreement_known": agreement}
    save_artifact(out, dataset=base["dataset"], item_ids=base["item_ids"] + new_ids, item_emb=item_emb,
                  tokenizer_state=base["tokenizer_state"], sid_table=table, settings=settings,
                  pretrain_info=base["pretrain_info"], text=base["text"], assigned=info,
                  codebook=codebook_stats(table, tok.num_codes))
    return {"artifact": str(out), "n_items": int(table.shape[0]), "new_items": len(new_ids),
            "known_items_skipped": skipped, "new_with_suffix_gt0": sum(r[-1] > 0 for r in rows),
            "rule": rule, "rule_agreement_known": round(agreement, 4)}


# ----- stage 0, outside the model: dataset -> item embeddings -> tokenizer -> SID table ---------------------------
_PROVIDED: Optional[SemanticIDArtifact] = None


@contextlib.contextmanager
def provide_stage0(artifact: SemanticIDArtifact):
    """Inside the block, TIGER / DIGER constructors load ``artifact`` instead of resolving stage 0 themselves.

    ``diger run`` resolves stage 0 (:func:`resolve_stage0`) before building the model, and resume / evaluate
    rebuild it from the checkpoint (:func:`stage0_from_state_dict`); a model built by RecBole directly
    (``TIGER(config, dataset)``) resolves it in its constructor.
    """
    global _PROVIDED
    before, _PROVIDED = _PROVIDED, artifact
    try:
        yield artifact
    finally:
        _PROVIDED = before


def _in_memory(name: str, config, item_ids: List[str], item_emb: np.ndarray, table: torch.Tensor,
               tokenizer_state: Dict, pretrain_info: Dict) -> SemanticIDArtifact:
    text = {k: (config[k] if k in config else None) for k in ("text_fields", "text_model", "item_emb_file")}
    text = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in text.items()}
    meta = {"format": FORMAT, "dataset": str(config["dataset"]), "settings": sid_settings(config),
            "pretrain_info": pretrain_info, "text": text}
    return SemanticIDArtifact(name, meta, item_ids, np.ascontiguousarray(item_emb, dtype=np.float32), table,
                              tokenizer_state)


def stage0_from_state_dict(state: Dict[str, torch.Tensor], config, item_tokens: Sequence[str],
                           source: str) -> SemanticIDArtifact:
    """Stage 0 of a saved TIGER / DIGER model (``item_emb``, ``tokenizer.*``, ``sid_table`` of a checkpoint), in memory.

    Used by resume, ``diger evaluate`` and serving: the model is rebuilt with the shapes it was saved with and
    nothing is recomputed (the weights loaded afterwards replace these tensors anyway).
    """
    published = bool(config["sid_table_file"]) if "sid_table_file" in config else False
    tok = {} if published else {k[len("tokenizer."):]: v for k, v in state.items() if k.startswith("tokenizer.")}
    return _in_memory(f"<stage 0 of {source}>", config, [str(t) for t in item_tokens[1:]],
                      state["item_emb"][1:].cpu().numpy(), state["sid_table"][1:].cpu().long(), tok,
                      {"restored_from": str(source)})


def _published_stage0(config, item_tokens: Sequence[str]) -> SemanticIDArtifact:
    """LETTER's ``*.index.json`` (``sid_table_file``) plus our collision suffix; 1-d zero item vectors, no tokenizer.

    Raises:
        ValueError: when the file's number of levels or code range disagrees with ``code_levels`` / ``code_num``.
    """
    from .data.semantic_ids import load_letter_index
    from .tokenizer import add_collision_suffix

    path = config["sid_table_file"]
    prefix = load_letter_index(path, list(item_tokens))[1:]
    levels, k = int(config["code_levels"]), int(config["code_num"])
    if prefix.shape[1] != levels or int(prefix.max()) >= k or int(prefix.min()) < 0:
        raise ValueError(f"{path}: {prefix.shape[1]} levels with codes up to {int(prefix.max())}; "
                         f"set code_levels: {prefix.shape[1]} and code_num > {int(prefix.max())}")
    table = add_collision_suffix(prefix, int(config["suffix_size"] or k))
    n = table.shape[0]
    return _in_memory("<published semantic IDs>", config, [str(t) for t in item_tokens[1:]], np.zeros((n, 1)), table,
                      {}, {"sid_table_file": str(path), "sid_table_file_sha256": _sha(Path(path).read_bytes())})


def _trained_stage0(config, item_tokens: Sequence[str], emb: np.ndarray) -> SemanticIDArtifact:
    """Tokenizer (pre-trained RQ-VAE, RQ-KMeans or ``rqvae_path``) and Sinkhorn SID table of ``emb [N+1, D]``.

    The tokenizer's initial weights are drawn from torch's global generator seeded with :func:`stage0_seed` and
    the generator is then restored, so the model built afterwards draws what it would draw without stage 0 (with
    ``sid_seed`` equal to ``seed`` the draws are those of stage 0 run inside the model's constructor).
    """
    from .tokenizer import RQTokenizer, add_collision_suffix, pretrain_tokenizer

    x = torch.from_numpy(np.ascontiguousarray(emb[1:], dtype=np.float32))
    levels, k = int(config["code_levels"]), int(config["code_num"])
    seed, kmeans = stage0_seed(config), str(config["kmeans_init"])
    sk = {"sinkhorn": bool(config["sid_sinkhorn"]), "sk_epsilon": float(config["sk_epsilon"]),
          "sk_iters": int(config["sk_iters"])}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = RQTokenizer(x.shape[1], list(config["encoder_layers"]), int(config["e_dim"]), [k] * levels,
                          float(config["vq_beta"]), kind=str(config["tokenizer"]))
    path = config["rqvae_path"] if "rqvae_path" in config else None
    if path:
        state = torch.load(path, map_location="cpu", weights_only=True)
        tok.load_state_dict(state.get("tokenizer", state))
        info: Dict = {"loaded_from": str(path)}
    elif tok.kind == "rqkmeans":  # the codebooks are the residual k-means centroids; nothing is trained
        tok.kmeans_init(x, niter=int(config["kmeans_iters"]), seed=seed, backend=kmeans)
        info = {"tokenizer": "rqkmeans"}
    else:
        info = pretrain_tokenizer(
            tok, x, epochs=int(config["rqvae_epochs"]), lr=float(config["rqvae_lr"]),
            weight_decay=float(config["rqvae_weight_decay"]), batch_size=int(config["rqvae_batch_size"]),
            eval_every=int(config["rqvae_eval_every"]), kmeans=kmeans, kmeans_iters=int(config["kmeans_iters"]),
            seed=seed, show_progress=bool(config["show_progress"]), **sk)
    table = add_collision_suffix(tok.get_codes(x, **sk), int(config["suffix_size"] or k))
    return _in_memory("<stage 0 of this run>", config, [str(t) for t in item_tokens[1:]], emb[1:], table,
                      tok.state_dict(), info)


def _resolve_local(config, dataset) -> SemanticIDArtifact:
    from .text import item_text_embeddings

    tokens = list(dataset.field2id_token[config["ITEM_ID_FIELD"]])
    where = config["sid_artifact"] if "sid_artifact" in config else None
    if where is not None and str(where).lower() in ("none", "off", "null", ""):
        where = None
    if where is not None and str(where) != "auto":
        art = load_artifact(where)
        art.check_fits(config)
        art.aligned(tokens)  # every item of the dataset must be in it: refused by name now, not later
        art.meta["pretrain_info"] = {"sid_artifact": str(art.folder), **art.meta.get("pretrain_info", {})}
        return art
    if "sid_table_file" in config and config["sid_table_file"]:
        return _published_stage0(config, tokens)
    emb = item_text_embeddings(config, dataset)
    if where is None:
        return _trained_stage0(config, tokens, emb)
    # auto: the cache folder is named by the hash of the stage-0 inputs
    key = content_hashes([str(t) for t in tokens[1:]], emb[1:], sid_settings(config))["key"]
    folder = cache_folder(key)
    if (folder / "artifact.json").is_file():
        try:
            art = load_artifact(folder)
            art.check_fits(config)
            art.aligned(tokens)
            logger.info("sid_artifact auto: reusing %s (same item ids, embeddings and settings)", folder)
            art.meta["pretrain_info"] = {"sid_artifact": str(folder), **art.meta.get("pretrain_info", {})}
            return art
        except ArtifactError as exc:
            logger.warning("sid_artifact auto: %s; pre-training again and replacing it", exc)
    logger.info("sid_artifact auto: no artifact for key %s yet; pre-training and saving it to %s", key[:12], folder)
    art = _trained_stage0(config, tokens, emb)
    art.save(folder)
    art.meta["pretrain_info"] = {**art.meta["pretrain_info"], "sid_artifact": str(folder)}
    return art


def resolve_stage0(config, dataset) -> SemanticIDArtifact:
    """Stage 0 of a TIGER / DIGER run: the provided artifact, else ``sid_artifact`` (a folder, or ``auto``: the
    cache), else published IDs (``sid_table_file``), else item embeddings -> tokenizer -> SID table, computed now.

    Under multi-process training rank 0 resolves it (embedding, pre-training, cache I/O) and the other ranks
    receive it, so every rank starts from identical codebooks and table.

    Raises:
        ArtifactError: for an artifact that is missing, corrupted or does not fit; the errors of item embedding
        (:func:`diger.text.item_text_embeddings`) and of published-ID files.
    """
    from . import distributed as ddist

    if _PROVIDED is not None:
        return _PROVIDED
    if not ddist.is_distributed():
        return _resolve_local(config, dataset)
    art = _resolve_local(config, dataset) if ddist.is_main() else None
    parts = ddist.broadcast_object(None if art is None else
                                   (str(art.folder), art.meta, art.item_ids, art.item_emb, art.sid_table,
                                    art.tokenizer_state))
    return art if art is not None else SemanticIDArtifact(*parts)
