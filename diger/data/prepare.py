"""``diger data prepare``: recipe + raw files -> RecBole atomic files.

Output, in ``OUT/NAME/`` (so that ``diger run --dataset NAME --data_path OUT`` finds it):

* ``NAME.inter``: ``user_id:token  item_id:token  timestamp:float``, rows grouped by user and in
  chronological order (raw Unix time, or the 0-based position in the published sequence when
  the raw data has no time; ties in raw time keep the input-file order, and RecBole's stable sort
  keeps that order too);
* ``NAME.item`` (when the layout has item metadata): ``item_id:token`` + text fields as
  ``token_seq`` + extra fields (e.g. ``asin``);
* ``NAME.yaml``: RecBole dataset keys plus ``text_fields`` and provenance;
* ``NAME.<sid>.index.json``: published semantic IDs restricted to the output items, if any;
* ``stats.json``: counts, sequence-length quantiles, leave-one-out sizes, inputs with SHA-256.

All files are staged and moved into place only when everything succeeded.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from .atomic import StagedOutput, write_json, write_table
from .errors import DataError, DataFormatError, MissingInputError, MissingItemTextError, RecipeError
from .filters import chronological, dedupe, kcore, order_index
from .formats import get_reader
from .recipes import Layout, Recipe, fill, load_recipe
from .semantic_ids import SemanticIdError, collision_stats, read_index_json
from .stats import file_fingerprint, sequence_stats
from .text import clean_text

USER_FIELD, ITEM_FIELD, TIME_FIELD = "user_id", "item_id", "timestamp"


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote: the dataset folder, its name, the layout used and the stats."""

    out_dir: Path
    name: str
    layout: str
    stats: dict


def _find(raw_dir: Path, candidates: list[str], params: dict, where: str) -> Path | None:
    for cand in candidates:
        p = raw_dir / fill(cand, params, where)
        if p.is_file():
            return p
    return None


def resolve_layout(recipe: Recipe, raw_dir: Path, layout_name: str | None, params: dict) -> tuple[Layout, dict]:
    """Pick the layout (named, or the first whose required files exist) and locate its files.

    Returns:
        ``(layout, files)`` with ``files[role]`` an existing path (``None`` for absent optional roles).

    Raises:
        RecipeError: unknown layout name or missing parameter.
        MissingInputError: no layout's required files are present (lists what was looked for).
    """
    if layout_name is not None and layout_name not in recipe.layouts:
        raise RecipeError(f"{recipe.path}: no layout {layout_name!r}; layouts: {list(recipe.layouts)}")
    names = [layout_name] if layout_name else list(recipe.layouts)
    tried = []
    for name in names:
        lay = recipe.layouts[name]
        roles, _ = get_reader(lay.format)
        files = {r: _find(raw_dir, c, params, str(recipe.path)) for r, c in lay.files.items()}
        missing = [r for r in roles["required"] if files.get(r) is None]
        if not missing:
            return lay, files
        tried.append(f"  layout {name!r} ({lay.format}): needs " + "; ".join(
            f"{r} = one of {[fill(c, params, recipe.path) for c in lay.files[r]]}" for r in missing))
    raise MissingInputError(
        f"{raw_dir}: no raw files for recipe {recipe.name!r}:\n" + "\n".join(tried)
        + (f"\nUpstream: {recipe.upstream.strip()}" if recipe.upstream else "")
    )


def _fmt_time(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else repr(float(t))


def _item_rows(tokens: list[str], items: dict, fields: list[str], sources: dict[str, str], blank: dict[str, str],
               where) -> tuple[list, dict, dict]:
    """Rows for ``NAME.item``, the number of non-empty values per field and of blanked ones."""
    rows, filled, blanked = [], {f: 0 for f in fields}, {f: 0 for f in blank}
    patterns = {f: re.compile(p) for f, p in blank.items()}
    for tok in tokens:
        meta = items.get(tok, {})
        row = [tok]
        for f in fields:
            try:
                text = clean_text(meta.get(sources.get(f, f)))
            except TypeError as exc:
                raise DataFormatError(where, f"item {tok!r}, field {sources.get(f, f)!r}: {exc}") from None
            if f in patterns and text and patterns[f].fullmatch(text):
                blanked[f] += 1
                text = ""
            filled[f] += bool(text)
            row.append(text)
        rows.append(row)
    return rows, filled, blanked


def _text_status(recipe: Recipe, lay: Layout, raw, params: dict, require_text: bool, log) -> tuple[list, bool, str]:
    """``(text_fields, text_available, reason)``; raises MissingItemTextError if text is required."""
    text_fields = list(lay.text_fields)
    if text_fields and raw.items is not None:
        return text_fields, True, ""
    reason = (fill(recipe.text_missing_reason.strip(), params, recipe.path)
              or f"layout {lay.name!r} of recipe {recipe.name!r} has no item text file")
    if require_text:
        raise MissingItemTextError(f"{recipe.name}: item text is required but not available. {reason}")
    if text_fields:
        log(f"[{recipe.name}] no item text: {reason}")
    return [], False, reason


def _filter(inter, items, lay: Layout, item_file, tag: str, log) -> tuple:
    """Missing-metadata policy, de-duplication and k-core, in that order.

    Returns ``(inter, report, notes)``; raises DataFormatError under ``missing_item_text: error``.
    """
    report, notes = {"input_interactions": int(len(inter))}, []
    if items is not None:
        missing_mask = ~inter["item"].isin(set(items))
        n_missing = int(inter.loc[missing_mask, "item"].nunique())
        report["items_without_metadata"] = n_missing
        report["interactions_of_items_without_metadata"] = int(missing_mask.sum())
        if n_missing:
            examples = list(dict.fromkeys(inter.loc[missing_mask, "item"]))[:5]
            msg = f"{n_missing} item(s) in the interactions have no record in {item_file} (e.g. {examples})"
            if lay.missing_item_text == "error":
                raise DataFormatError(item_file, msg + "; the recipe does not allow dropping or keeping them "
                                      "(missing_item_text: error)")
            if lay.missing_item_text == "drop":
                inter = inter[~missing_mask]
                log(f"[{tag}] {msg}: dropped their {int(missing_mask.sum())} interactions (recipe: drop)")
            else:
                log(f"[{tag}] {msg}: kept with empty text (recipe: keep)")
            notes.append(msg + f" -> {lay.missing_item_text}")
    inter, n_dup = dedupe(inter, lay.dedupe)
    report["duplicates_dropped"] = n_dup
    if n_dup:
        log(f"[{tag}] dropped {n_dup} duplicated interactions (dedupe: {lay.dedupe})")
    before = len(inter)
    inter, rounds = kcore(inter, lay.kcore)
    report["kcore"] = {"k": lay.kcore, "rounds": rounds, "interactions_dropped": int(before - len(inter))}
    if len(inter) == 0:
        raise DataError(f"{tag}: no interactions left after filtering (k-core {lay.kcore})")
    return inter, report, notes


def _semantic_ids(recipe: Recipe, lay: Layout, raw_dir: Path, params: dict, item_tokens: list, log) -> dict:
    """``{sid_name: (path, {token: codes})}`` for the layout's published SID files that are present.

    Raises:
        DataFormatError: a malformed file or output items without a semantic ID.
    """
    tables = {}
    for sid_name, cands in lay.semantic_ids.items():
        path = _find(raw_dir, cands, params, str(recipe.path))
        if path is None:
            log(f"[{recipe.name}] semantic IDs {sid_name!r} not found (looked for {cands}); skipped")
            continue
        try:
            table = read_index_json(path)
        except SemanticIdError as exc:
            raise DataFormatError(path, str(exc)) from None
        missing = [t for t in item_tokens if t not in table]
        if missing:
            raise DataFormatError(path, f"{len(missing)} output items have no semantic ID (e.g. {missing[:5]})")
        tables[sid_name] = (path, {t: table[t] for t in item_tokens})
    return tables


def _dataset_yaml(name, recipe, lay, text_fields, text_available, reason, time_kind, sid_names, has_item_file) -> dict:
    """The ``NAME.yaml`` mapping: RecBole dataset keys plus text and provenance keys."""
    config = {
        "USER_ID_FIELD": USER_FIELD,
        "ITEM_ID_FIELD": ITEM_FIELD,
        "TIME_FIELD": TIME_FIELD,
        "load_col": {"inter": [USER_FIELD, ITEM_FIELD, TIME_FIELD]},
        "user_inter_num_interval": "[0,inf)",  # the recipe already filtered: RecBole must not
        "item_inter_num_interval": "[0,inf)",
        "text_fields": text_fields,
        "text_available": text_available,
        "timestamp_kind": time_kind,
        "semantic_id_files": {k: f"{name}.{k}.index.json" for k in sid_names},
        "recipe": recipe.name,
        "layout": lay.name,
    }
    if has_item_file:
        config["load_col"]["item"] = [ITEM_FIELD] + text_fields
    if not text_available:
        config["text_missing_reason"] = reason
    return config


def prepare(
    recipe_name: str,
    raw_dir,
    out,
    *,
    layout: str | None = None,
    name: str | None = None,
    params: dict | None = None,
    allow_pickle: bool = False,
    require_text: bool = False,
    timestamp: str = "raw",
    check_counts: bool = True,
    recipe_dir=None,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Prepare one dataset from its raw files (see the module docstring for the outputs).

    Args:
        recipe_name: recipe name in ``datasets/`` or a path to a recipe YAML.
        raw_dir: folder holding the raw files (paths in the recipe are relative to it).
        out: parent folder; the dataset is written to ``out/NAME``.
        layout: force a layout instead of auto-detection.
        name: output dataset name (default: the recipe's ``dataset_name``).
        params: recipe parameters such as ``{"category": "Beauty"}``.
        allow_pickle: permit layouts that read Python pickles.
        require_text: fail unless item text is available.
        timestamp: ``raw`` keeps raw times; ``order`` writes the 0-based position per user.
        check_counts: fail when the layout's ``expected_counts`` are not met.
        recipe_dir: folder of recipes (default :func:`~diger.data.recipes.default_recipe_dir`).
        log: progress callback (default: print to stderr).

    Returns:
        :class:`PrepareResult` with the dataset folder and the content of ``stats.json``.

    Raises:
        DataError (and subclasses): bad recipe, missing or malformed input, missing text when
        required, count mismatch. Nothing is written in that case.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    params = dict(params or {})
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingInputError(f"--raw-dir {raw_dir} is not a folder")
    if timestamp not in ("raw", "order"):
        raise ValueError(f"timestamp must be 'raw' or 'order', not {timestamp!r}")
    recipe = load_recipe(recipe_name, recipe_dir)
    for p in recipe.params:
        if p not in params:
            raise DataError(f"recipe {recipe.name!r} needs --{p} (e.g. --{p} Beauty)")
    name = name or recipe.output_name(params)
    if not name or any(c in name for c in "/\\\t\n:") or name.startswith("."):
        raise DataError(f"bad dataset name {name!r}")
    lay, files = resolve_layout(recipe, raw_dir, layout, params)
    log(f"[{recipe.name}] layout {lay.name!r} ({lay.format}) from {raw_dir}")
    _, reader = get_reader(lay.format)
    raw = reader(files, lay.options, allow_pickle)
    text_fields, text_available, reason = _text_status(recipe, lay, raw, params, require_text, log)

    item_file = files.get("item") or files.get("meta") or files.get("movies") or files.get("datamaps")
    inter, report, notes = _filter(raw.inter, raw.items, lay, item_file, recipe.name, log)
    inter = chronological(inter)
    time_kind = raw.time_kind
    if timestamp == "order" and time_kind != "order":
        inter = inter.assign(time=order_index(inter).values)
        time_kind = "order"

    stats = sequence_stats(inter)
    counts = {k: stats[k] for k in ("users", "items", "interactions")}
    log(f"[{recipe.name}] {counts['users']:,} users / {counts['items']:,} items / {counts['interactions']:,} interactions")
    if lay.expected_counts:
        if counts != lay.expected_counts:
            msg = f"{recipe.name} ({lay.name}): counts {counts} differ from the recipe's verified {lay.expected_counts}"
            if check_counts:
                raise DataError(msg + "; are these the published files? (--no-count-check writes anyway)")
            log("[warning] " + msg)
        stats["verified_counts_match"] = counts == lay.expected_counts

    item_tokens = list(dict.fromkeys(inter["item"]))
    item_fields = text_fields + (lay.extra_item_fields if raw.items is not None else [])
    item_rows = []
    if raw.items is not None and item_fields:
        item_rows, filled, blanked = _item_rows(item_tokens, raw.items, item_fields, lay.field_sources,
                                                lay.blank_text, item_file)
        if any(blanked.values()):
            stats["text_blanked"] = {f: {"pattern": lay.blank_text[f], "items": n} for f, n in blanked.items()}
            log(f"[{recipe.name}] blanked placeholder text: {blanked}")
        for f in text_fields:
            if filled[f] == 0:
                log(f"[warning] text field {f!r} is empty for every item")
        stats["text_fields_non_empty"] = {f: filled[f] for f in text_fields}

    sid_tables = _semantic_ids(recipe, lay, raw_dir, params, item_tokens, log)
    if sid_tables:
        stats["semantic_ids"] = {k: collision_stats(sub) for k, (_, sub) in sid_tables.items()}
    stats.update({
        "recipe": recipe.name, "layout": lay.name, "format": lay.format, "name": name,
        "time_kind": time_kind, "text_available": text_available, "text_fields": text_fields,
        "filters": report,
        "sources": [dict(role=r, **file_fingerprint(p)) for r, p in files.items() if p is not None]
        + [dict(role=f"semantic_ids:{k}", **file_fingerprint(v[0])) for k, v in sid_tables.items()],
        "notes": list(raw.notes) + notes,
    })
    if not text_available:
        stats["text_missing_reason"] = reason
    config = _dataset_yaml(name, recipe, lay, text_fields, text_available, reason, time_kind, list(sid_tables),
                           bool(item_rows))

    out_dir = Path(out) / name
    stale = [f"{name}.item"] + ([p.name for p in out_dir.glob(f"{name}.*.index.json")] if out_dir.is_dir() else [])
    header = (f"# RecBole dataset config written by `diger data prepare {recipe.name}` (layout {lay.name}).\n"
              f"# Use with: diger run --dataset {name} --data_path={Path(out)}\n")
    with StagedOutput(out_dir, remove_stale=stale) as stage:
        try:
            write_table(stage / f"{name}.inter",
                        [(USER_FIELD, "token"), (ITEM_FIELD, "token"), (TIME_FIELD, "float")],
                        zip(inter["user"], inter["item"], map(_fmt_time, inter["time"])))
            if item_rows:
                write_table(stage / f"{name}.item",
                            [(ITEM_FIELD, "token")] + [(f, "token_seq") for f in item_fields], item_rows)
        except ValueError as exc:
            raise DataError(f"{recipe.name}: cannot write atomic file: {exc}") from exc
        for sid_name, (_, sub) in sid_tables.items():
            write_json(stage / f"{name}.{sid_name}.index.json",
                       {t: [f"<{chr(97 + lvl)}_{c}>" for lvl, c in enumerate(codes)] for t, codes in sub.items()})
        write_json(stage / "stats.json", stats)
        with open(stage / f"{name}.yaml", "w", encoding="utf-8") as f:
            f.write(header)
            yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    log(f"[{recipe.name}] wrote {out_dir}")
    return PrepareResult(out_dir=out_dir, name=name, layout=lay.name, stats=stats)
