"""Reading a prepared dataset folder (``OUT/NAME``) back: its YAML and whether it has item text."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import DataError, MissingItemTextError


def dataset_config(data_path, name: str) -> dict:
    """Load ``data_path/name/name.yaml`` written by ``diger data prepare``.

    Raises:
        DataError: the file is missing or not a YAML mapping.
    """
    path = Path(data_path) / name / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"{path} not found: run `diger data prepare` first")
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: not a YAML mapping")
    return cfg


def require_item_text(data_path, name: str) -> tuple[Path, list[str]]:
    """Return ``(path of NAME.item, text_fields)`` for a prepared dataset that has item text.

    Raises:
        MissingItemTextError: the dataset was prepared without item text; the message carries
            the recipe's reason (e.g. Instruments: the item file is not available).
        DataError: ``NAME.yaml`` missing or malformed.
    """
    cfg = dataset_config(data_path, name)
    fields = list(cfg.get("text_fields") or [])
    item_path = Path(data_path) / name / f"{name}.item"
    if not fields or not cfg.get("text_available", True) or not item_path.is_file():
        reason = cfg.get("text_missing_reason") or "the dataset was prepared without item text"
        raise MissingItemTextError(f"{name}: no item text to embed. {reason}")
    return item_path, fields
