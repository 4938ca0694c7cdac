"""Training and held-out problems as Hugging Face ``datasets.Dataset`` objects with a TRL-style ``prompt`` column:
from ``reasoning-gym`` (:func:`make_rg_dataset`) or from a dataset file or folder (:func:`load_dataset_file`).

reasoning-gym rows:

Columns: ``prompt`` (chat messages: optional system message, then the user question plus ``prompt_suffix``),
``question``, ``answer`` (gold string), ``solution`` (same, TRL's column name for ``accuracy_reward``) and
``entry`` (the JSON-serialised reasoning-gym entry, for the task's own scorer).

The held-out split is generated with a different seed and every question that also occurs in the training
split is dropped, so evaluation problems are never trained on.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["make_rg_dataset", "make_train_eval_datasets", "build_prompt", "load_dataset_file", "FILE_FORMATS"]

#: dataset-file suffixes and the ``datasets`` builder that reads them.
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

EVAL_SEED_OFFSET = 1_000_003


def build_prompt(question: str, system_prompt: Optional[str], suffix: str) -> List[Dict[str, str]]:
    """Chat messages for one problem (the chat template is applied by the trainer)."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": question + suffix})
    return msgs


def _entries(name: str, size: int, seed: int, kwargs: Dict[str, Any]) -> List[Dict[str, Any]]:
    import reasoning_gym

    try:
        ds = reasoning_gym.create_dataset(name, size=size, seed=seed, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ValueError(f"reasoning-gym dataset {name!r} with {kwargs}: {exc}") from exc
    return [ds[i] for i in range(size)]


def _to_rows(entries, system_prompt, suffix) -> Dict[str, list]:
    rows: Dict[str, list] = {"prompt": [], "question": [], "answer": [], "solution": [], "entry": []}
    for e in entries:
        rows["prompt"].append(build_prompt(e["question"], system_prompt, suffix))
        rows["question"].append(e["question"])
        rows["answer"].append(str(e["answer"]))
        rows["solution"].append(str(e["answer"]))
        rows["entry"].append(json.dumps(e, default=list))
    return rows


def make_rg_dataset(name: str, size: int, seed: int, kwargs: Optional[Dict[str, Any]] = None, *,
                    system_prompt: Optional[str] = None, suffix: str = "", exclude: Optional[set] = None):
    """A ``datasets.Dataset`` of ``size`` reasoning-gym problems (fewer if ``exclude`` removes some).

    Raises:
        ValueError: if reasoning-gym rejects the task name or difficulty keywords.
    """
    from datasets import Dataset

    entries = _entries(name, size, seed, dict(kwargs or {}))
    if exclude:
        entries = [e for e in entries if e["question"] not in exclude]
    return Dataset.from_dict(_to_rows(entries, system_prompt, suffix))


def _is_messages(p: Any) -> bool:
    return isinstance(p, list) and bool(p) and all(isinstance(m, dict) and "role" in m and "content" in m for m in p)


def load_dataset_file(path: str, *, split: str = "train", prompt_column: str = "prompt",
                      answer_column: str = "answer", max_rows: Optional[int] = None,
                      system_prompt: Optional[str] = None, suffix: str = ""):
    """Problems from a ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file or a ``datasets`` folder.

    A folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: ``split`` picks the split) is
    read with ``datasets.load_from_disk``; a file with ``datasets.load_dataset(<format>, data_files=path,
    split=split)`` (a file has one split, ``train``; slices such as ``"train[:500]"`` work). A string prompt
    becomes the user message (:func:`build_prompt`, with ``system_prompt`` and ``suffix``), chat messages are kept.
    The answer is copied to ``answer`` and ``solution`` (TRL's column for ``accuracy_reward``); every other column
    is kept, so reward functions can read it.

    Args:
        max_rows: keep the first this many rows (None = all).
    Returns:
        A ``datasets.Dataset`` with ``prompt``, ``question`` (the prompt text), ``answer``, ``solution`` and the
        file's other columns.
    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
        ValueError: naming the file and what is wrong: an unknown suffix, a missing split, a missing prompt or
            answer column (with the columns present), or the first row with an empty prompt (not a string or
            chat messages) or an empty answer.
    """
    from pathlib import Path

    import datasets

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset file {path!r} not found")
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r} (splits: {sorted(ds)}); set dataset_split / --split")
            ds = ds[split]
    else:
        fmt = FILE_FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: unknown dataset file type {p.suffix!r}; expected one of {sorted(FILE_FORMATS)} "
                             "or a folder written by datasets' save_to_disk")
        if p.stat().st_size == 0:
            raise ValueError(f"{path}: empty file, no rows")
        try:
            ds = datasets.load_dataset(fmt, data_files=str(p), split=split)
        except ValueError as exc:
            raise ValueError(f"{path}: cannot read split {split!r} ({exc}); a file has the one split 'train'") from None
        except Exception as exc:  # a parse error of the file's own format: name the innermost cause
            cause = exc
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            raise ValueError(f"{path}: not a readable {fmt} file ({type(cause).__name__}: {cause})") from None
    for col, key in ((prompt_column, "prompt_column"), (answer_column, "answer_column")):
        if col not in ds.column_names:
            raise ValueError(f"{path}: no column {col!r} ({key}); its columns: {ds.column_names}")
    if max_rows is not None:
        ds = ds.select(range(min(int(max_rows), len(ds))))
    if len(ds) == 0:
        raise ValueError(f"{path}: no rows")
    rows: Dict[str, list] = {"prompt": [], "question": [], "answer": [], "solution": []}
    extra = [c for c in ds.column_names if c not in (prompt_column, answer_column, *rows)]
    for c in extra:
        rows[c] = []
    for i, r in enumerate(ds):
        prompt, answer = r[prompt_column], r[answer_column]
        if _is_messages(prompt):
            msgs, text = prompt, str(prompt[-1]["content"])
        elif isinstance(prompt, str) and prompt.strip():
            msgs, text = build_prompt(prompt, system_prompt, suffix), prompt
        else:
            raise ValueError(f"{path} row {i} (0-based, header excluded): empty or malformed prompt in column "
                             f"{prompt_column!r} ({prompt!r}); expected a non-empty string or a list of chat messages")
        if answer is None or not str(answer).strip():
            raise ValueError(f"{path} row {i} (0-based, header excluded): empty answer in column {answer_column!r}")
        rows["prompt"].append(msgs)
        rows["question"].append(text)
        rows["answer"].append(str(answer))
        rows["solution"].append(str(answer))
        for c in extra:
            rows[c].append(r[c])
    return datasets.Dataset.from_dict(rows)


def _file_train_eval(cfg) -> Tuple[Any, Any]:
    kw = dict(prompt_column=cfg.prompt_column, answer_column=cfg.answer_column, system_prompt=cfg.system_prompt,
              suffix=cfg.prompt_suffix)
    rows = load_dataset_file(cfg.dataset_path, split=cfg.dataset_split, max_rows=cfg.max_rows, **kw)
    if cfg.eval_dataset_path:
        ev = load_dataset_file(cfg.eval_dataset_path, split=cfg.eval_dataset_split, **kw)
        if cfg.eval_dataset_size:
            ev = ev.select(range(min(cfg.eval_dataset_size, len(ev))))
        train = rows
    elif cfg.eval_dataset_size:
        if len(rows) <= cfg.eval_dataset_size:
            raise ValueError(f"{cfg.dataset_path}: {len(rows)} rows, not more than eval_dataset_size="
                             f"{cfg.eval_dataset_size} held out; lower eval_dataset_size or set eval_dataset_path")
        n = len(rows) - cfg.eval_dataset_size
        train, ev = rows.select(range(n)), rows.select(range(n, len(rows)))
    else:
        return rows, None
    held = set(ev["question"])
    keep = [i for i, q in enumerate(train["question"]) if q not in held]  # never train on a held-out prompt
    if not keep:
        raise ValueError(f"{cfg.dataset_path}: every training prompt is also in the held-out set")
    return (train.select(keep) if len(keep) < len(train) else train), ev


def make_train_eval_datasets(cfg) -> Tuple[Any, Any]:
    """Training and held-out datasets for a :class:`~softthink.config.SoftGRPOConfig`.

    With ``dataset_path``: the file's rows (:func:`load_dataset_file`), and as held-out set ``eval_dataset_path``
    or else the file's last ``eval_dataset_size`` rows; training rows whose prompt is in the held-out set are
    dropped. Otherwise reasoning-gym: the held-out split asks for ``3 * eval_dataset_size`` candidates with seed ``cfg.seed + 1_000_003``, drops
    questions seen in training and keeps the first ``eval_dataset_size``.

    Raises:
        ValueError: if fewer than ``eval_dataset_size`` unseen problems exist (the task space is too small); for
            dataset files as :func:`load_dataset_file`, or when the file has no more rows than are held out.
    """
    if cfg.dataset_path:
        return _file_train_eval(cfg)
    train = make_rg_dataset(cfg.dataset_name, cfg.dataset_size, cfg.seed, cfg.dataset_kwargs,
                            system_prompt=cfg.system_prompt, suffix=cfg.prompt_suffix)
    if cfg.eval_dataset_size == 0:
        return train, None
    seen = set(train["question"])
    ev = make_rg_dataset(cfg.dataset_name, 3 * cfg.eval_dataset_size, cfg.seed + EVAL_SEED_OFFSET,
                         cfg.dataset_kwargs, system_prompt=cfg.system_prompt, suffix=cfg.prompt_suffix,
                         exclude=seen)
    if len(ev) < cfg.eval_dataset_size:
        raise ValueError(
            f"only {len(ev)} held-out {cfg.dataset_name!r} problems are not in the training set "
            f"(eval_dataset_size={cfg.eval_dataset_size}); lower dataset_size or widen dataset_kwargs"
        )
    return train, ev.select(range(cfg.eval_dataset_size))
