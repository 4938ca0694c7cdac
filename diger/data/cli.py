"""Command line for data preparation: ``diger data list`` and ``diger data prepare``.

Usage (also ``python -m diger.data.cli ...`` before ``diger data`` is wired)::

    diger data list
    diger data prepare NAME --raw-dir DIR --out DIR [--layout L] [--name N] [--category C]
                       [--allow-pickle] [--require-text] [--timestamp raw|order] [--no-count-check]
"""
from __future__ import annotations

import argparse
import sys
import time

from .errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``list`` and ``prepare`` sub-commands to ``parser`` (the ``diger data`` parser)."""
    sub = parser.add_subparsers(dest="data_command", metavar="{list,prepare}")
    sub.required = True
    p_list = sub.add_parser("list", help="list the dataset recipes and their layouts")
    p_list.add_argument("--recipe-dir", default=None, help="folder of recipe YAML files (default: the repo's datasets/)")
    p = sub.add_parser("prepare", help="turn public raw files into RecBole atomic files")
    p.add_argument("recipe", metavar="NAME", help="recipe name (see `diger data list`) or path to a recipe .yaml")
    p.add_argument("--raw-dir", required=True, help="folder holding the raw files")
    p.add_argument("--out", required=True, help="parent folder; files go to OUT/NAME/ (use OUT as --data_path)")
    p.add_argument("--layout", default=None, help="force a layout of the recipe (default: first one whose files exist)")
    p.add_argument("--name", default=None, help="output dataset name (default: from the recipe)")
    p.add_argument("--category", default=None, help="category for generic recipes, e.g. Beauty or Musical_Instruments")
    p.add_argument("--allow-pickle", action="store_true", help="allow layouts that read Python pickles (trusted files only)")
    p.add_argument("--require-text", action="store_true", help="fail unless item text is available")
    p.add_argument("--timestamp", choices=["raw", "order"], default="raw",
                   help="raw: keep raw Unix times (default); order: 0-based position in each user's sequence")
    p.add_argument("--no-count-check", dest="check_counts", action="store_false",
                   help="write even when the counts differ from the recipe's verified counts")
    p.add_argument("--recipe-dir", default=None, help="folder of recipe YAML files (default: the repo's datasets/)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def _list(args) -> int:
    from .recipes import list_recipes, load_recipe

    paths = list_recipes(args.recipe_dir)
    if not paths:
        print("no recipes found", file=sys.stderr)
        return 1
    for path in paths:
        try:
            r = load_recipe(str(path))
        except DataError as exc:
            print(f"{path.stem}: INVALID: {exc}")
            continue
        params = "".join(f" --{p} X" for p in r.params)
        print(f"{r.name}{params}: {r.description}")
        for lay in r.layouts.values():
            counts = ""
            if lay.expected_counts:
                c = lay.expected_counts
                counts = f" [{c['users']:,} / {c['items']:,} / {c['interactions']:,}]"
            text = ", ".join(lay.text_fields) or "no text"
            print(f"    {lay.name} ({lay.format}; {text}){counts}")
    return 0


def _prepare(args) -> int:
    from .prepare import prepare

    params = {"category": args.category} if args.category else {}
    t0 = time.perf_counter()
    res = prepare(
        args.recipe, args.raw_dir, args.out, layout=args.layout, name=args.name, params=params,
        allow_pickle=args.allow_pickle, require_text=args.require_text, timestamp=args.timestamp,
        check_counts=args.check_counts, recipe_dir=args.recipe_dir,
        log=(lambda m: None) if args.quiet else None,
    )
    s = res.stats
    print(f"{res.name}: {s['users']} users, {s['items']} items, {s['interactions']} interactions "
          f"-> {res.out_dir} ({time.perf_counter() - t0:.1f} s)")
    return 0


def run(args) -> int:
    """Run the parsed ``diger data`` command; returns the exit status (2 on a data error, 1 on an OS error)."""
    try:
        if args.data_command == "list":
            return _list(args)
        if args.data_command == "prepare":
            return _prepare(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out not writable, or an existing file where a folder is needed
        print(f"error: {exc}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown data command {args.data_command!r}")


def main(argv=None) -> int:
    """Stand-alone entry point: ``python -m diger.data.cli prepare ...``."""
    parser = argparse.ArgumentParser(prog="diger data", description="Dataset recipes for diger")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
