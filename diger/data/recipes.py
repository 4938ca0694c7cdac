"""Dataset recipes: YAML files in the repository's ``datasets/`` folder, one per dataset.

A recipe names one or more *layouts* (ways the raw files of that dataset are published). Each
layout gives the input format, the candidate paths of each input file inside ``--raw-dir``, the
k-core, the de-duplication rule, the item-text fields, what to do with items that have no
metadata, and the verified counts. Schema (unknown keys are rejected to catch typos)::

    name: amazon-beauty-2014            # must equal the file stem
    description: one line
    dataset_name: amazon-beauty-2014    # default output name (``{param}`` placeholders allowed)
    params: [category]                  # optional: values given on the command line
    upstream: where the raw files are published
    text_missing_reason: why a layout may lack item text (shown with --require-text)
    layouts:
      letter:                           # layout name; auto-detection tries layouts in file order
        format: letter                  # one of diger.data.formats.FORMATS
        description: one line
        files: {inter: [A.inter.json, raw/x/A.inter.json], item: [...]}   # role -> candidates
        semantic_ids: {letter: [A.index.json]}  # optional, published SIDs copied to the output
        text_fields: [title, brand, categories]
        field_sources: {categories: description}  # output field -> metadata key (default: same)
        extra_item_fields: [asin]       # metadata keys written to .item but not embedded
        blank_text: {title: '^title_[0-9]+$'}  # field -> regex; a full match is written as ""
        missing_item_text: error        # error | drop | keep (items absent from the metadata)
        dedupe: none                    # none | exact (same user,item,time) | user_item (first kept)
        kcore: 0                        # 0 = no filter; k = iterative user/item k-core
        expected_counts: {users: 1, items: 1, interactions: 1}
        options: {}                     # passed to the format reader

Recipes are read with ``yaml.safe_load`` only.
"""
from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import RecipeError
from .formats import FORMATS, get_reader

RECIPE_KEYS = {"name", "description", "dataset_name", "params", "upstream", "text_missing_reason", "layouts", "notes"}
LAYOUT_KEYS = {
    "format", "description", "files", "semantic_ids", "text_fields", "field_sources", "extra_item_fields",
    "missing_item_text", "dedupe", "kcore", "expected_counts", "options", "notes", "blank_text",
}
MISSING_POLICIES = ("error", "drop", "keep")
DEDUPE_POLICIES = ("none", "exact", "user_item")


@dataclass
class Layout:
    """One way a dataset's raw files are published (see the module docstring for the keys)."""

    name: str
    format: str
    files: dict[str, list[str]]
    description: str = ""
    semantic_ids: dict[str, list[str]] = field(default_factory=dict)
    text_fields: list[str] = field(default_factory=list)
    field_sources: dict[str, str] = field(default_factory=dict)
    extra_item_fields: list[str] = field(default_factory=list)
    missing_item_text: str = "error"
    dedupe: str = "none"
    kcore: int = 0
    expected_counts: dict[str, int] | None = None
    options: dict = field(default_factory=dict)
    notes: str = ""
    blank_text: dict[str, str] = field(default_factory=dict)


@dataclass
class Recipe:
    """A parsed, validated recipe file."""

    name: str
    path: Path
    layouts: dict[str, Layout]
    description: str = ""
    dataset_name: str = ""
    params: list[str] = field(default_factory=list)
    upstream: str = ""
    text_missing_reason: str = ""
    notes: str = ""

    def output_name(self, params: dict[str, str]) -> str:
        """Default output dataset name with ``{param}`` placeholders filled in."""
        return fill(self.dataset_name or self.name, params, self.path)


def default_recipe_dir() -> Path:
    """``$DIGER_RECIPES`` if set, else the ``datasets/`` folder of the source checkout."""
    env = os.environ.get("DIGER_RECIPES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "datasets"


def list_recipes(recipe_dir: Path | None = None) -> list[Path]:
    """Return the recipe files (``*.yaml``) of ``recipe_dir``, sorted by name."""
    d = Path(recipe_dir) if recipe_dir else default_recipe_dir()
    return sorted(d.glob("*.yaml")) if d.is_dir() else []


def fill(template: str, params: dict[str, str], where) -> str:
    """Substitute ``{param}`` placeholders; raise :class:`RecipeError` for a missing parameter."""
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    missing = sorted(names - set(params))
    if missing:
        raise RecipeError(f"{where}: {template!r} needs parameter(s) {missing}: pass --{missing[0]} VALUE")
    return template.format(**params)


def _candidates(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RecipeError(f"{where}: expected a file name or a non-empty list of file names, got {value!r}")
    for v in value:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise RecipeError(f"{where}: {v!r} must be a relative path inside --raw-dir")
    return value


def _parse_layout(name: str, raw, where: str) -> Layout:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: layout {name!r} must be a mapping")
    unknown = set(raw) - LAYOUT_KEYS
    if unknown:
        raise RecipeError(f"{where}: layout {name!r}: unknown key(s) {sorted(unknown)}; allowed {sorted(LAYOUT_KEYS)}")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise RecipeError(f"{where}: layout {name!r}: format {fmt!r} is not one of {sorted(FORMATS)}")
    roles, _ = get_reader(fmt)
    files = raw.get("files") or {}
    if not isinstance(files, dict):
        raise RecipeError(f"{where}: layout {name!r}: 'files' must map roles to file names")
    allowed = set(roles["required"]) | set(roles["optional"])
    for role in files:
        if role not in allowed:
            raise RecipeError(f"{where}: layout {name!r}: file role {role!r} not used by format {fmt!r} (roles {sorted(allowed)})")
    for role in roles["required"]:
        if role not in files:
            raise RecipeError(f"{where}: layout {name!r}: format {fmt!r} needs a {role!r} file")
    lay = Layout(
        name=name, format=fmt, description=str(raw.get("description", "")), notes=str(raw.get("notes", "")),
        files={r: _candidates(v, f"{where}: layout {name!r}: files.{r}") for r, v in files.items()},
        semantic_ids={k: _candidates(v, f"{where}: layout {name!r}: semantic_ids.{k}") for k, v in (raw.get("semantic_ids") or {}).items()},
        text_fields=list(raw.get("text_fields") or []),
        field_sources=dict(raw.get("field_sources") or {}),
        extra_item_fields=list(raw.get("extra_item_fields") or []),
        missing_item_text=raw.get("missing_item_text", "error"),
        dedupe=raw.get("dedupe", "none"),
        kcore=raw.get("kcore", 0),
        expected_counts=raw.get("expected_counts"),
        options=dict(raw.get("options") or {}),
        blank_text=dict(raw.get("blank_text") or {}),
    )
    for fname, pattern in lay.blank_text.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise RecipeError(f"{where}: layout {name!r}: blank_text.{fname}: bad regex {pattern!r}: {exc}") from None
    if lay.missing_item_text not in MISSING_POLICIES:
        raise RecipeError(f"{where}: layout {name!r}: missing_item_text must be one of {MISSING_POLICIES}")
    if lay.dedupe not in DEDUPE_POLICIES:
        raise RecipeError(f"{where}: layout {name!r}: dedupe must be one of {DEDUPE_POLICIES}")
    if not isinstance(lay.kcore, int) or isinstance(lay.kcore, bool) or lay.kcore < 0:
        raise RecipeError(f"{where}: layout {name!r}: kcore must be a non-negative integer")
    for fname in lay.text_fields + lay.extra_item_fields:
        if not isinstance(fname, str) or not fname.isidentifier() or fname in ("item_id", "user_id", "timestamp"):
            raise RecipeError(f"{where}: layout {name!r}: bad item field name {fname!r}")
    if len(set(lay.text_fields + lay.extra_item_fields)) != len(lay.text_fields) + len(lay.extra_item_fields):
        raise RecipeError(f"{where}: layout {name!r}: an item field is listed twice")
    if lay.expected_counts is not None:
        ec = lay.expected_counts
        if not isinstance(ec, dict) or set(ec) != {"users", "items", "interactions"} or not all(isinstance(v, int) for v in ec.values()):
            raise RecipeError(f"{where}: layout {name!r}: expected_counts needs integer users, items, interactions")
    return lay


def load_recipe(name_or_path: str, recipe_dir: Path | None = None) -> Recipe:
    """Load and validate a recipe by name (``datasets/<name>.yaml``) or by path to a YAML file.

    Raises:
        RecipeError: no such recipe (lists the available ones), YAML error (with line), or a
            schema violation (names the key).
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        path = p
    else:
        d = Path(recipe_dir) if recipe_dir else default_recipe_dir()
        path = d / f"{name_or_path}.yaml"
        if not path.is_file():
            known = [q.stem for q in list_recipes(d)]
            raise RecipeError(f"no recipe {name_or_path!r} in {d}; available: {', '.join(known) or 'none'}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}{line}: invalid YAML: {exc}") from exc
    where = str(path)
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a recipe must be a YAML mapping")
    unknown = set(raw) - RECIPE_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(RECIPE_KEYS)}")
    if raw.get("name") != path.stem:
        raise RecipeError(f"{where}: 'name' is {raw.get('name')!r}, must equal the file name {path.stem!r}")
    layouts_raw = raw.get("layouts")
    if not isinstance(layouts_raw, dict) or not layouts_raw:
        raise RecipeError(f"{where}: 'layouts' must be a non-empty mapping")
    layouts = {str(k): _parse_layout(str(k), v, where) for k, v in layouts_raw.items()}
    params = raw.get("params") or []
    if not isinstance(params, list) or not all(isinstance(x, str) and x.isidentifier() for x in params):
        raise RecipeError(f"{where}: 'params' must be a list of names")
    return Recipe(
        name=raw["name"], path=path, layouts=layouts, description=str(raw.get("description", "")),
        dataset_name=str(raw.get("dataset_name", "") or ""), params=params,
        upstream=str(raw.get("upstream", "")), text_missing_reason=str(raw.get("text_missing_reason", "")),
        notes=str(raw.get("notes", "")),
    )
