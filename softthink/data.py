"""Problems from ``reasoning-gym`` as a Hugging Face ``datasets.Dataset`` with a TRL-style ``prompt`` column.

Columns: ``prompt`` (chat messages: optional system message, then the user question plus ``prompt_suffix``),
``question``, ``answer`` (gold string), ``solution`` (same, TRL's column name for ``accuracy_reward``) and
``entry`` (the JSON-serialised reasoning-gym entry, for the task's own scorer).

The held-out split is generated with a different seed and every question that also occurs in the training
split is dropped, so evaluation problems are never trained on.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["make_rg_dataset", "make_train_eval_datasets", "build_prompt"]

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


def make_train_eval_datasets(cfg) -> Tuple[Any, Any]:
    """Training and held-out datasets for a :class:`~softthink.config.SoftGRPOConfig`.

    The held-out split asks for ``3 * eval_dataset_size`` candidates with seed ``cfg.seed + 1_000_003``, drops
    questions seen in training and keeps the first ``eval_dataset_size``.

    Raises:
        ValueError: if fewer than ``eval_dataset_size`` unseen problems exist (the task space is too small).
    """
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
