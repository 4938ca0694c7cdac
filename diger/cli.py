"""``diger`` command line: ``run`` (mirrors RecBole's run_recbole.py), ``evaluate``, ``data``, ``plot``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def _run(args, extra: List[str]) -> int:
    from .config import parse_overrides
    from .quick_start import resume, run

    if args.resume:
        if extra or args.config_files or args.model or args.dataset or args.data_path:
            raise ValueError("--resume continues a run with its saved configuration; drop the other options")
        result = resume(args.resume)
        if result is None:
            print(json.dumps({"note": "no global rank 0 on this machine: the machine holding it writes the results"}))
            return 0
        print(json.dumps({"test_result": result["test_result"], "wall_clock_seconds": result["wall_clock_seconds"]}, indent=2))
        return 0
    args.model, args.dataset = args.model or "DIGER", args.dataset or "ml-100k"
    overrides = parse_overrides(extra)
    if args.data_path:
        overrides.setdefault("data_path", args.data_path)
    result = run(args.model, args.dataset, args.config_files, overrides)
    if result is None:  # a multi-machine run's machine without global rank 0: that machine reports
        print(json.dumps({"note": "no global rank 0 on this machine: the machine holding it writes the results"}))
        return 0
    print(json.dumps({"best_valid_result": result["best_valid_result"], "test_result": result["test_result"],
                      "wall_clock_seconds": result["wall_clock_seconds"]}, indent=2))
    return 0


def _evaluate(args, extra: List[str]) -> int:
    from .config import parse_overrides
    from .quick_start import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, parse_overrides(extra))
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diger", description=__doc__)
    sub = p.add_subparsers(dest="command", required=False)
    r = sub.add_parser("run", help="train and evaluate a model (DIGER, TIGER or any RecBole model)",
                       description="Extra --key=value arguments override config keys (RecBole precedence).")
    r.add_argument("--model", "-m", default=None,
                   help="DIGER (default) | TIGER | SASRecBCE | a RecBole model name (SASRec, GRU4Rec, Pop, ...)")
    r.add_argument("--dataset", "-d", default=None, help="dataset name (default: ml-100k, shipped with RecBole)")
    r.add_argument("--config_files", "--config-files", nargs="*", default=None, help="YAML config files, later ones win")
    r.add_argument("--data_path", "--data-path", default=None, help="folder holding <dataset>/<dataset>.inter")
    r.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run from RUN_DIR/last.pth")
    e = sub.add_parser("evaluate", help="reload a checkpoint and evaluate its test split")
    e.add_argument("--checkpoint", required=True, help="a .pth written by `diger run`")
    e.add_argument("--output", default=None, help="also write the result to this JSON file")
    try:
        from .data import cli as data_cli

        d = sub.add_parser("data", help="prepare datasets from public raw files")
        data_cli.add_arguments(d)
    except ImportError:
        pass
    pl = sub.add_parser("plot", help="draw codebook-usage figures of a run directory")
    pl.add_argument("run_dir")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command in (None, "run"):
            if args.command is None:
                args = parser.parse_args(["run"])
            return _run(args, extra)
        if extra:
            parser.error(f"unrecognised arguments: {' '.join(extra)}")
        if args.command == "evaluate":
            return _evaluate(args, [])
        if args.command == "data":
            from .data import cli as data_cli

            return data_cli.run(args)
        if args.command == "plot":
            from .plot import plot_run

            for f in plot_run(args.run_dir):
                print(f)
            return 0
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as exc:
        print(f"diger: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diger: interrupted{_resume_hint()}", file=sys.stderr)
        return 130
    return 0


def _resume_hint() -> str:
    """How to continue the interrupted run, when it has written a checkpoint to continue from."""
    qs = sys.modules.get("diger.quick_start")
    run_dir = getattr(qs, "current_run_dir", None)
    if not run_dir or not os.path.isfile(os.path.join(run_dir, "run.json")):
        return ""
    meta = json.loads(open(os.path.join(run_dir, "run.json"), encoding="utf-8").read())
    if not os.path.isfile(os.path.join(meta.get("checkpoint_dir", run_dir), "last.pth")):
        return f" before the first evaluated epoch of {run_dir}; nothing to resume"
    return f"; continue from the last evaluated epoch with: diger run --resume {run_dir}"


if __name__ == "__main__":
    sys.exit(main())
