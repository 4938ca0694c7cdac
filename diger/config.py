"""RecBole ``Config`` with this package's defaults and safe command-line overrides (ECOSYSTEM.md §1.1, §1.8).

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
from recbole.config import Config

PROPERTIES = Path(__file__).resolve().parent / "properties"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names it."""


def parse_overrides(args: Iterable[str]) -> Dict:
    """``["--epochs=3", "--topk=[5,10]"]`` -> ``{"epochs": 3, "topk": [5, 10]}`` via ``yaml.safe_load``.

    Raises:
        ConfigError: for an argument that is not ``--key=value``.
    """
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"unrecognised argument {arg!r}; overrides are written --key=value")
        key, raw = arg[2:].split("=", 1)
        if not key:
            raise ConfigError(f"empty key in override {arg!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


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
        import recbole

        # A subclass of a RecBole model (SASRecBCE) inherits its parent's RecBole defaults first.
        recbole_models = Path(recbole.__file__).resolve().parent / "properties" / "model"
        files = [recbole_models / f"{n}.yaml" for n in chain if n != model]
        for n in chain:
            files.append(PROPERTIES / "model" / f"{n}.yaml")
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
