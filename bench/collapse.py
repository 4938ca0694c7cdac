"""Does Gumbel noise prevent codebook collapse? DIGER's assignment modes over several epochs and codebook learning
rates, with the options of ours that issue 17 asks to measure (``lr_id_scale``, ``target_use``).

    python bench/collapse.py --out bench/results/collapse_ml100k.json              # the default grid (hours)
    python bench/collapse.py --modes det_softmax_st frqud --lrs 1e-3 --variants paper stop_target \\
        --epochs 5 --out bench/results/collapse_ml100k.json                          # a part of it (resumes)
    python bench/collapse.py --backbone decoder --out bench/results/collapse_ml100k_decoder.json
                                                     # the same grid on the decoder-only backbone (about 6x cheaper)
    python bench/collapse.py --smoke                                                 # tiny synthetic data, seconds

Every run is ``diger run --model DIGER`` on ML-100K with ``configs/ml-100k.yaml`` and ``configs/TIGER.yaml`` (the
README protocol), ``assign_mode`` = the mode, ``lr_id`` = the rate, ``epochs`` = ``--epochs``, ``backbone`` =
``--backbone`` (``fast``, the T5 default; with ``decoder`` early stopping is off, so every run trains all epochs), and
one variant:

* ``paper``: nothing else (``lr_id_scale: absolute``, ``target_use: full``);
* ``latent_norm``: ``lr_id_scale: latent_norm`` (lr_id x mean latent norm / 9);
* ``stop_target``: ``target_use: stop_gradient`` (the soft-label use of the assignment detached).

The SID table stays Sinkhorn-balanced (paper parity), so collapse is read from the codebooks themselves: the codes
that plain nearest-code assignment uses per level after each epoch (``nearest_used``), beside the share of items
whose semantic ID changed in that epoch (churn). ``det_softmax_st`` (the official ``true_e2e_plain``: softmax
straight-through without noise) is the baseline of the collapse claim; ``ste`` receives no recommendation gradient
in this architecture. Each finished run is written to ``--out`` at once (atomically); a rerun skips them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table, toy_dataset  # noqa: E402
from quality import load_results  # noqa: E402
from diger.infra import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ["det_softmax_st", "gumbel", "frqud", "sdud", "sdud_frqud"]
VARIANTS = {"paper": {}, "latent_norm": {"lr_id_scale": "latent_norm"},
            "stop_target": {"target_use": "stop_gradient"}}


def run_one(mode: str, lr: float, variant: str, seed: int, epochs: int, dataset: str, files, base: dict,
            work: Path) -> dict:
    """One DIGER run in a subprocess; returns its per-epoch codebook record and test metrics.

    Raises:
        SystemExit: naming the run and the end of its stderr when it fails.
    """
    name = f"{mode}-{lr:g}-{variant}-{seed}"
    out_dir = work / name
    cfg = {**base, "assign_mode": mode, "lr_id": lr, "epochs": epochs, "seed": seed, "output_dir": str(out_dir),
           "show_progress": False, "state": "WARNING", **VARIANTS[variant]}
    cmd = [sys.executable, "-m", "diger.cli", "run", "--model", "DIGER", "--dataset", dataset, "--config_files",
           *map(str, files), *[f"--{k}={json.dumps(v)}" for k, v in cfg.items()]]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
    r = json.loads((out_dir / "result.json").read_text())
    hist = r["codebook"]["history"]
    return {
        "pretrained_nearest_used": hist[0].get("nearest_used"),
        "epochs": [{"nearest_used": h.get("nearest_used"), "used": [lv["used"] for lv in h["levels"]],
                    "changed_frac": h.get("changed_frac"), "collision_rate": h["collision_rate"]} for h in hist[1:]],
        "test": r["test_result"],
        "seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=MODES)
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-5, 1e-4, 1e-3], help="lr_id values")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[2020])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--backbone", default="fast", choices=["fast", "hf_t5", "decoder"],
                    help="recommender backbone (default fast: the T5 path of the README protocol)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (finished runs are kept and skipped)")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic data, 2 epochs, 2 modes x 2 variants")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-collapse-"))
    dataset, base = "ml-100k", {}
    files = [ROOT / "configs" / "ml-100k.yaml", ROOT / "configs" / "TIGER.yaml"]
    if args.smoke:
        dataset, files, base = "toy", [], {**toy_dataset(work), "rqvae_epochs": 10}
        args.epochs, args.lrs, args.variants = 2, [1e-3], ["paper", "stop_target"]
        if args.modes == MODES:
            args.modes = ["det_softmax_st", "frqud"]
    meta = {"dataset": dataset, "epochs": args.epochs, "config_files": [str(f.relative_to(ROOT)) for f in files]}
    if args.backbone != "fast":  # (the T5 results file predates the option: its protocol stays as it was)
        base.update(backbone=args.backbone, stopping_step=args.epochs + 1)
        meta["backbone"] = args.backbone
    done = load_results(args.out, meta) if not args.smoke else {}
    done["_meta"] = meta
    for seed in args.seeds:
        for mode in args.modes:
            for lr in args.lrs:
                for variant in args.variants:
                    key = f"{mode}/{lr:g}/{variant}/{seed}"
                    if key in done:
                        continue
                    done[key] = run_one(mode, lr, variant, seed, args.epochs, dataset, files, base, work)
                    if args.out:
                        atomic_write_json(args.out, done)
                    print(f"done {key}: nearest used per epoch "
                          f"{[e['nearest_used'] for e in done[key]['epochs']]}", file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)  # kept only when a run failed
    rows = []
    for key, r in done.items():
        if key == "_meta":
            continue
        mode, lr, variant, seed = key.split("/")
        if mode not in args.modes or variant not in args.variants or float(lr) not in args.lrs:
            continue
        fmt = lambda u: "/".join(map(str, u)) if u else "-"  # noqa: E731
        rows.append({"mode": mode, "lr_id": lr, "variant": variant, "seed": seed,
                     "nearest used after pre-training": fmt(r["pretrained_nearest_used"]),
                     "nearest used per epoch (L1/L2/L3)": " ; ".join(fmt(e["nearest_used"]) for e in r["epochs"]),
                     "SID churn per epoch": " ; ".join(f"{e['changed_frac']:.2f}" for e in r["epochs"]),
                     "test NDCG@10": r["test"]["ndcg@10"], "minutes": round(r["seconds"] / 60, 1)})
    print(header("python bench/collapse.py " + " ".join(sys.argv[1:])))
    print(f"dataset {dataset}, {args.epochs} epochs, backbone {args.backbone}, "
          f"protocol {' '.join(meta['config_files']) or 'toy'}\n")
    if rows:
        print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
