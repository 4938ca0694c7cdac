"""RecBole ``Config`` with this package's defaults and safe command-line overrides (RecBole 1.2.1 ``recbole/config/configurator.py``).

Precedence, highest first: ``--key=value`` overrides, ``config_dict``, YAML ``config_file_list``,
then internal defaults: RecBole's ``overall.yaml`` -> RecBole's model YAML -> ours
(``diger/properties/model/<name>.yaml`` for each name in the model's ``config_chain``) -> dataset
YAMLs (RecBole's, then ``diger/properties/dataset/<dataset>.yaml``, then
``<dataset>-<name>.yaml``) -> RecBole's quick-start YAML for the model type.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import yaml

from . import compat  # noqa: F401  (RecBole shims before RecBole imports)
import recbole
from recbole.config import Config

PROPERTIES = Path(__file__).resolve().parent / "properties"
RECBOLE_PROPERTIES = Path(recbole.__file__).resolve().parent / "properties"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names it."""


def parse_overrides(args: Iterable[str]) -> Dict:
    """``["--epochs=3", "--topk=[5,10]"]`` -> ``{"epochs": 3, "topk": [5, 10]}`` via ``yaml.safe_load``.

    Raises:
        ConfigError: for an argument that is not ``--key=value``.
    """
    from .infra import parse_key_values

    return parse_key_values(args, error=ConfigError)


def check_config_files(files: Optional[List[str]]) -> List[str]:
    """Validate YAML config files exist and parse to mappings (safe_load).

    Raises:
        ConfigError: naming the file that is missing or malformed.
    """
    for f in files or []:
        if not os.path.isfile(f):
            raise ConfigError(f"config file not found: {f}")
        try:
            with open(f, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {f} is not valid YAML: {exc}") from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {f} must hold a mapping of keys, got {type(data).__name__}")
    return list(files or [])


class DigerConfig(Config):
    """RecBole ``Config`` that also loads this package's model and dataset defaults.

    It never reads ``sys.argv`` (RecBole's own parser ``eval``s values): pass overrides through
    ``config_dict`` (see :func:`parse_overrides`).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        argv = sys.argv
        sys.argv = argv[:1]
        try:
            super().__init__(model, dataset, check_config_files(config_file_list), config_dict)
        finally:
            sys.argv = argv

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        chain = getattr(model_class, "config_chain", (model,))
        # A subclass of a RecBole model (SASRecBCE) inherits its parent's RecBole defaults first.
        files = [RECBOLE_PROPERTIES / "model" / f"{n}.yaml" for n in chain if n != model]
        files += [PROPERTIES / "model" / f"{n}.yaml" for n in chain]
        files.append(PROPERTIES / "dataset" / f"{dataset}.yaml")
        files += [PROPERTIES / "dataset" / f"{dataset}-{n}.yaml" for n in chain]
        for f in files:
            if f.is_file():
                self._update_internal_config_dict(str(f))
        # A dataset prepared by `diger data prepare` carries its fields in <data_path>/<name>/<name>.yaml.
        base = self.external_config_dict.get("data_path") or self.internal_config_dict.get("data_path")
        if base:
            prepared = Path(base) / dataset / f"{dataset}.yaml"
            if prepared.is_file():
                self._update_internal_config_dict(str(prepared))


# Keys this package's runner, text pipeline and models read that no default YAML carries.
RUNNER_KEYS = frozenset({
    "output_dir", "dist_backend", "text_fields", "text_fill", "text_model", "text_missing_reason",
    "item_emb_file", "embedding_cache_dir", "sid_table_file",
    "eval_score_chunk_mb", "torch_num_threads",
})


# Keys RecBole 1.2.1's code reads that none of its YAML files carries (distributed launch, model-specific).
RECBOLE_CODE_KEYS = frozenset({
    "nproc", "world_size", "ip", "port", "offset", "local_rank", "single_spec", "device", "model", "dataset",
    "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "valid_neg_sample_args", "test_neg_sample_args", "verbose",
    "encoding", "CROP_ITEM_SEQ", "CROP_ITEM_SEQ_LEN", "INVERSE_ITEM_SEQ", "MASK_INDEX", "MASK_ITEM_SEQ",
    "REORDER_ITEM_SEQ", "NEG_ITEMS", "POS_ITEMS", "cin", "contrast", "eta", "feature_num", "has_residual", "norm",
    "sim", "tail_ratio", "token_num_threshold", "use_filter", "xgb_early_stopping_rounds",
})


def _yaml_keys(folder: Path) -> set:
    keys = set()
    for f in folder.rglob("*.yaml"):
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            keys.update(data)
    return keys


_KNOWN: Optional[set] = None


def known_keys() -> set:
    """Every key RecBole 1.2.1 or this package reads: their default YAMLs, :data:`RUNNER_KEYS` and :data:`RECBOLE_CODE_KEYS`."""
    global _KNOWN
    if _KNOWN is None:
        _KNOWN = _yaml_keys(RECBOLE_PROPERTIES) | _yaml_keys(PROPERTIES)
        _KNOWN |= RUNNER_KEYS | RECBOLE_CODE_KEYS
    return _KNOWN


def unknown_keys(config: Config) -> List[str]:
    """User-given keys (files, ``config_dict``) that neither RecBole nor this package knows.

    RecBole accepts any key silently, so a typo such as ``--epoch=1`` would run with the default
    ``epochs``; :func:`warn_unknown_keys` turns these into a warning.
    """
    known = known_keys() | set(config.internal_config_dict)
    return sorted(k for k in config.external_config_dict if k not in known)


def check_value_types(config: Config) -> None:
    """Reject a value whose type cannot fit the key's default (``--epochs=abc``, ``--epochs=1.5``, ``--epochs=[1]``).

    Without this RecBole fails much later (often after RQ-VAE pre-training) with a ``TypeError``
    that does not name the key. Integer keys take integers; number keys integers or floats;
    true/false keys booleans; none of them text, lists or mappings.

    Raises:
        ConfigError: naming the key, the value given and the type expected.
    """
    for key, value in config.external_config_dict.items():
        default = config.internal_config_dict.get(key)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok and value is not None:
            raise ConfigError(f"config key {key!r} expects {kind} (default {default!r}), got {value!r}")


def _colon_keys(value, path: str) -> Optional[str]:
    """The first mapping key holding ``a:b`` (a YAML flow mapping written without a space after ':')."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and ":" in k:
                return f"{path}: {k!r}"
            found = _colon_keys(v, path)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _colon_keys(v, path)
            if found:
                return found
    return None


def check_mappings(config: Config) -> None:
    """Reject ``--train_neg_sample_args={distribution:uniform,sample_num:3}``: YAML reads ``{a:b}`` as the key 'a:b'.

    Raises:
        ConfigError: naming the key and asking for a space after each ':'.
    """
    for key, value in config.external_config_dict.items():
        found = _colon_keys(value, key)
        if found:
            raise ConfigError(f"config key {found} looks like 'name:value' without a space; YAML needs "
                              f"'{{name: value}}' (a space after each ':')")


def warn_unknown_keys(config: Config, config_files: Optional[List[str]] = None) -> List[str]:
    """Warn (``UserWarning``) once per unknown key, naming the override or file it came from and the closest known key."""
    import difflib
    import warnings

    bad = unknown_keys(config)
    for key in bad:
        where = "override"
        if key not in (config.variable_config_dict or {}):
            where = "config file"
            for f in reversed(config_files or []):  # the last file naming the key is the one in effect
                try:
                    data = yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {}
                except (OSError, yaml.YAMLError):
                    continue
                if isinstance(data, dict) and key in data:
                    where = f"config file {f}"
                    break
        close = difflib.get_close_matches(key, sorted(known_keys()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.warn(f"unknown config key {key!r} ({where}) is read by neither RecBole nor diger and has no effect{hint}",
                      UserWarning, stacklevel=3)
    return bad
