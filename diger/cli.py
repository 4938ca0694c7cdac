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


def _recommend(args) -> int:
    from .serving import load_recommender

    users = [u.strip() for arg in args.user for u in arg.split(",") if u.strip()]
    histories = [[i.strip() for i in arg.split(",") if i.strip()] for arg in args.history]
    if args.topk < 1:
        raise ValueError(f"recommend: --topk must be >= 1, got {args.topk}")
    if not users and not histories:
        raise ValueError("recommend: give --user USER_ID or --history ID1,ID2,... (or both)")
    rec = load_recommender(args.run, device=None if args.device == "run" else args.device,
                           sid_artifact=args.sid_artifact)
    kw = {"exclude_history": args.exclude_history}
    out = []
    if users:
        for u, lst in zip(users, rec.recommend_users(users, args.topk, **kw)):
            out.append({"user_id": u, "history_length": len(rec.user_history(u)), "items": lst})
    if histories:
        for h, lst in zip(histories, rec.recommend(histories, args.topk, skip_unknown=args.skip_unknown, **kw)):
            out.append({"history": h, "items": lst})
    for o in out:
        o["items"] = [{"item_id": i, "score": s} for i, s in o["items"]]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for o in out:
        head = f"user {o['user_id']} ({o['history_length']} interactions)" if "user_id" in o else \
            f"history {','.join(o['history'])}"
        print(f"{head}: top {len(o['items'])} of {rec.config['model']}")
        for rank, r in enumerate(o["items"], 1):
            print(f"  {rank} {r['item_id']} {r['score']:.4f}")
    return 0


def _keys(model: str) -> int:
    """Print the property YAML files of ``model``'s config chain (the keys ``diger run`` accepts beyond RecBole's).

    Raises:
        ValueError: for a model name that is neither ours nor RecBole's.
    """
    from .config import PROPERTIES
    from .quick_start import resolve_model

    chain = getattr(resolve_model(model), "config_chain", (model,))
    files = [PROPERTIES / "model" / f"{n}.yaml" for n in chain if (PROPERTIES / "model" / f"{n}.yaml").is_file()]
    if not files:
        print(f"{model}: no keys of this package (RecBole's defaults apply)")
    for f in files:
        print(f"# --- {f.relative_to(PROPERTIES.parent.parent)} ---")
        print(f.read_text().rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diger", description=__doc__)
    sub = p.add_subparsers(dest="command", required=False)
    r = sub.add_parser("run", help="train and evaluate a model (DIGER, TIGER or any RecBole model)",
                       description="Extra --key=value arguments override config keys (RecBole precedence); "
                                   "`diger keys --model M` lists this package's keys of model M with their defaults.")
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
    rc = sub.add_parser("recommend", help="top-K raw item ids for users or histories from a trained run",
                        description="Ranks items with the run's best checkpoint (the scores evaluation ranks).")
    rc.add_argument("run", metavar="RUN_DIR", help="a run folder written by `diger run`, or its .pth checkpoint")
    rc.add_argument("--user", action="append", default=[], metavar="USER_ID",
                    help="raw user id (repeatable, or comma-separated): ranks after the user's whole history")
    rc.add_argument("--history", action="append", default=[], metavar="ID1,ID2,...",
                    help="raw item ids, oldest first (repeatable: one history each)")
    rc.add_argument("--topk", type=int, default=10, help="list length (default 10)")
    rc.add_argument("--exclude-history", action="store_true", help="never recommend an item of the history")
    rc.add_argument("--skip-unknown", action="store_true", help="drop unknown item ids instead of failing")
    rc.add_argument("--device", default="cpu", help="cpu (default) or the run's own device (`run`)")
    rc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rc.add_argument("--sid-artifact", "--sid_artifact", default=None, metavar="DIR",
                    help="an artifact from `diger sid assign`: its new items can be recommended too")
    sd = sub.add_parser("sid", help="semantic-ID tables of TIGER / DIGER runs")
    sds = sd.add_subparsers(dest="sid_command", required=True)
    bd = sds.add_parser("build", help="run stage 0 (item embeddings, RQ-VAE, SID table) once and save it",
                        description="Extra --key=value arguments override config keys, as for `diger run`. "
                                    "Train on the result with `diger run ... --sid_artifact=OUT`.")
    bd.add_argument("--model", "-m", default="TIGER", help="TIGER (default) or DIGER: whose settings to use")
    bd.add_argument("--dataset", "-d", default="ml-100k")
    bd.add_argument("--config_files", "--config-files", nargs="*", default=None)
    bd.add_argument("--data_path", "--data-path", default=None)
    bd.add_argument("--out", required=True, help="the artifact folder to write")
    ex = sds.add_parser("export", help="write item_id, code_1..code_L, suffix with raw item ids")
    ex.add_argument("run", metavar="RUN_DIR|ARTIFACT", help="a TIGER / DIGER run folder, its .pth checkpoint, "
                    "or an artifact folder from `diger sid build`")
    ex.add_argument("--out", required=True, help="FILE.csv | FILE.jsonl | FILE.parquet (needs pyarrow)")
    asg = sds.add_parser("assign", help="give semantic IDs to new items with a frozen tokenizer (old rows unchanged)",
                         description="Writes a new artifact: the source's rows bitwise, then the new items (codes "
                                     "from the frozen codebooks by the table's own rule, next free collision "
                                     "suffix). Serve them with `diger recommend RUN_DIR --sid-artifact OUT`.")
    asg.add_argument("source", metavar="ARTIFACT|RUN_DIR", help="an artifact folder, or a TIGER / DIGER run "
                     "(its best epoch's tokenizer and table)")
    asg.add_argument("--items", default=None, metavar="NEW.item",
                     help="RecBole .item file with the artifact's text fields (embedded with its text model)")
    asg.add_argument("--embeddings", default=None, metavar="NEW.npz", help="or vectors: item_id [m], embedding [m, D]")
    asg.add_argument("--id-field", "--id_field", default="item_id", help="item-id column of --items (default item_id)")
    asg.add_argument("--text-fill", "--text_fill", default=None, help="text for new items that have none")
    asg.add_argument("--rule", default="auto", choices=["auto", "sinkhorn", "argmin"],
                     help="codes of new items: the table's own rule (auto: sinkhorn when it was built so), "
                          "or the nearest code per level")
    asg.add_argument("--out", required=True, help="the new artifact folder (must not exist or be empty)")
    ky = sub.add_parser("keys", help="list the config keys this package adds for a model, with defaults and help",
                        description="Prints diger/properties/model/<name>.yaml for each name in the model's config "
                                    "chain (later files override earlier ones); RecBole's own keys are in its docs.")
    ky.add_argument("--model", "-m", default="DIGER", help="DIGER (default) | TIGER | SASRecBCE | ...")
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
        if args.command == "sid" and args.sid_command == "build":
            from .artifact import build_artifact
            from .config import parse_overrides

            overrides = parse_overrides(extra)
            if args.data_path:
                overrides.setdefault("data_path", args.data_path)
            out = build_artifact(args.out, model=args.model, dataset=args.dataset,
                                 config_file_list=args.config_files, config_dict=overrides)
            meta = json.loads((out / "artifact.json").read_text())
            print(json.dumps({"artifact": str(out), "n_items": meta["n_items"], "key": meta["hashes"]["key"],
                              "pretrain_info": {k: v for k, v in meta["pretrain_info"].items() if k != "history"}},
                             indent=2))
            return 0
        if extra:
            parser.error(f"unrecognised arguments: {' '.join(extra)}")
        if args.command == "evaluate":
            return _evaluate(args, [])
        if args.command == "data":
            from .data import cli as data_cli

            return data_cli.run(args)
        if args.command == "sid" and args.sid_command == "assign":
            from .artifact import assign_semantic_ids

            print(json.dumps(assign_semantic_ids(args.source, args.out, items_file=args.items,
                                                 embeddings_file=args.embeddings, id_field=args.id_field,
                                                 text_fill=args.text_fill, rule=args.rule), indent=2))
            return 0
        if args.command == "sid":  # export
            from .serving import export_semantic_ids

            n = export_semantic_ids(args.run, args.out)
            print(f"{n} items written to {args.out}")
            return 0
        if args.command == "recommend":
            return _recommend(args)
        if args.command == "keys":
            return _keys(args.model)
        if args.command == "plot":
            from .plot import plot_run

            for f in plot_run(args.run_dir):
                print(f)
            return 0
    except KeyError as exc:  # unknown ids: KeyError's str() adds quotes around the whole message
        print(f"diger: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, TypeError, ImportError) as exc:
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
