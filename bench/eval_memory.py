"""Peak memory and wall time of one full-sort evaluation, with and without ``eval_score_chunk_mb`` chunking.

    python bench/eval_memory.py                  # 200,000 items, 2,000 users (the README table)
    python bench/eval_memory.py --smoke          # 5,000 items, 200 users (CI smoke test)
    python bench/eval_memory.py --items 60000 --users 1000 --threads 1

A synthetic atomic dataset (``--users`` users x ``--per_user`` interactions over ``--items`` item ids,
plus a ``.item`` file listing every item id, so the catalogue after loading is all ``--items`` items
whatever the interactions hit) is written to a temp dir; RecBole's working-dir logs go there too.
RecBole's SASRec (random init weights, no training) is evaluated once on the leave-one-out test split
(full ranking, ``eval_batch_size`` 4096) by ``SafeCheckpointTrainer.evaluate``.

Every arm runs in a fresh child process; its peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
read in the child after the evaluation (the whole child's high-water mark). The baseline child only
loads the dataset and builds the model and trainer (the same steps as an arm, without the evaluation),
so an arm's "eval extra" is its peak minus the baseline peak. The metrics of every arm must be identical.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table  # noqa: E402

#: Arm labels of the README's ``eval_score_chunk_mb`` values.
LABELS = {1e9: "unchunked (1e9 MB, old behaviour)", 256.0: "default (256 MB)"}


def write_dataset(folder: Path, users: int, items: int, per_user: int, seed: int = 0) -> None:
    """``<folder>/synth/synth.inter`` (random items, integer timestamps) and ``synth.item`` (every item id)."""
    import numpy as np

    ds = folder / "synth"
    ds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(users):
        picks = rng.choice(items, size=per_user, replace=False)
        t0 = 1_000_000 + u * 10_000
        lines.extend(f"u{u}\ti{i}\t{t0 + 60 * k}" for k, i in enumerate(picks))
    (ds / "synth.inter").write_text("\n".join(lines) + "\n")
    (ds / "synth.item").write_text("item_id:token\n" + "\n".join(f"i{i}" for i in range(items)) + "\n")


def config(root: Path, chunk_mb) -> dict:
    cfg = {
        "data_path": str(root),
        "checkpoint_dir": str(root / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "MAX_ITEM_LIST_LENGTH": 20,
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "epochs": 0,
        "train_batch_size": 256,
        "eval_batch_size": 4096,
        "topk": [5, 10],
        "metrics": ["Recall", "NDCG", "MRR", "Hit"],
        "valid_metric": "NDCG@10",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "show_progress": False,
        "state": "WARNING",
    }
    if chunk_mb is not None:
        cfg["eval_score_chunk_mb"] = chunk_mb
    return cfg


def measure(root: str, chunk_mb, threads: int) -> dict:
    """One child: load, build, (evaluate the test split once); peak RSS and times."""
    import resource
    import warnings

    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from diger.quick_start import load_dataset, make_config, resolve_model, trainer_class

    t = time.perf_counter()
    cfg = make_config("SASRec", "synth", None, config(Path(root), chunk_mb))
    init_seed(cfg["seed"], True)
    ds = load_dataset(cfg)
    train, valid, test = data_preparation(cfg, ds)
    net = resolve_model("SASRec")(cfg, train._dataset)
    trainer = trainer_class(type(net))(cfg, net)
    out = {"items": ds.item_num, "setup s": time.perf_counter() - t, "torch threads": torch.get_num_threads()}
    if chunk_mb is None:
        out["test users"] = sum(len(b[0]) for b in test)
    if chunk_mb is not None:
        # The collector also keeps every user's top-10 item ids (RecBole's rec.items, [users, 10]); their
        # digest, taken where RecBole computes the metrics, must be the same in every arm (random-init
        # weights hit few targets, so the metrics alone would be a weak check).
        setattr(trainer.eval_collector.register, "rec.items", True)
        digest = {}
        evaluate_struct = trainer.evaluator.evaluate

        def evaluate_and_digest(struct):
            digest["top10"] = hashlib.sha256(struct.get("rec.items").numpy().tobytes()).hexdigest()[:16]
            return evaluate_struct(struct)

        trainer.evaluator.evaluate = evaluate_and_digest
        t = time.perf_counter()
        result = trainer.evaluate(test, load_best_model=False)
        out["eval s"] = time.perf_counter() - t
        out["metrics"] = {k: float(v) for k, v in result.items()}
        out["top-10 sha256"] = digest["top10"]
        from diger.evaluation import chunk_rows

        out["users per chunk"] = min(chunk_rows(ds.item_num, chunk_mb), cfg["eval_batch_size"])
    out["peak RSS MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="5,000 items, 200 users")
    ap.add_argument("--items", type=int, default=None, help="catalogue size (default 200,000; smoke 5,000)")
    ap.add_argument("--users", type=int, default=None, help="users (default 2,000; smoke 200)")
    ap.add_argument("--per_user", type=int, default=20, help="interactions per user")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every child")
    ap.add_argument("--chunk_mb", type=float, nargs="+", default=None,
                    help="eval_score_chunk_mb of the arms (default 1e9 256 64; smoke 1e9 256 1, so it chunks)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["root"], spec["chunk_mb"], spec["threads"])))
        return
    items = args.items or (5_000 if args.smoke else 200_000)
    users = args.users or (200 if args.smoke else 2_000)
    if args.per_user < 3 or args.per_user > items:
        raise SystemExit(f"--per_user must be in [3, --items], got {args.per_user}")
    chunks = args.chunk_mb or ([1e9, 256.0, 1.0] if args.smoke else [1e9, 256.0, 64.0])
    if any(not c > 0 for c in chunks):
        raise SystemExit(f"--chunk_mb values must be > 0, got {chunks}")
    arms = [("baseline (load + build, no eval)", None)] + [(LABELS.get(c, f"{c:g} MB"), c) for c in chunks]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-evalmem-") as tmp:
        work = Path(tmp)
        write_dataset(work, users, items, args.per_user)
        for label, chunk_mb in arms:
            spec = json.dumps({"root": str(work), "chunk_mb": chunk_mb, "threads": args.threads})
            # cwd=work: RecBole's log/ and log_tensorboard/ folders go to the temp dir
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec],
                                 capture_output=True, text=True, cwd=work, env=env)
            if out.returncode != 0:
                raise SystemExit(f"{label} failed:\n{out.stderr[-3000:]}")
            rows.append({"arm": label, "eval_score_chunk_mb": "-" if chunk_mb is None else f"{chunk_mb:g}",
                         **json.loads(out.stdout.strip().splitlines()[-1])})
    base = rows[0]
    if base["items"] != items + 1:
        raise SystemExit(f"catalogue after loading has {base['items']} ids, expected {items} items + [PAD]")
    for r in rows:
        r["peak RSS GiB"] = r["peak RSS MiB"] / 1024
        if r is not base:
            r["users per chunk"] = min(r["users per chunk"], base["test users"])
            r["eval extra GiB"] = (r["peak RSS MiB"] - base["peak RSS MiB"]) / 1024
    ref = rows[1]
    for r in rows[2:]:
        assert r["metrics"] == ref["metrics"] and r["top-10 sha256"] == ref["top-10 sha256"], (
            f"results differ: {r['arm']} {r['metrics']} {r['top-10 sha256']} vs "
            f"{ref['arm']} {ref['metrics']} {ref['top-10 sha256']}")
    import torch

    torch.set_num_threads(args.threads)
    print(header(" ".join(["python bench/eval_memory.py", *sys.argv[1:]])))
    print(f"dataset: synthetic, {users} users x {args.per_user} interactions, catalogue {base['items'] - 1} items "
          f"(item_num {base['items']} with [PAD]), {base['test users']} test users; SASRec hidden 64, 2 layers, "
          f"random init; leave-one-out, full ranking, eval_batch_size 4096; peak RSS = ru_maxrss of a fresh child "
          f"process per arm; torch threads {args.threads}\n")
    print(table(rows, ["arm", "eval_score_chunk_mb", "users per chunk", "peak RSS GiB", "eval extra GiB", "eval s",
                       "top-10 sha256"]))
    print("\nmetrics (identical in every arm, as is the sha256 of every user's top-10 item ids): "
          + ", ".join(f"{k} {v:.4f}" for k, v in ref["metrics"].items()))


if __name__ == "__main__":
    main()
