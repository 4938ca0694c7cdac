"""Codebook health of DIGER's assignment modes on ML-100K (issue #4 table), same seed and budget.

    python bench/ablations.py                         # every arm in configs/ablations/
    python bench/ablations.py --arms ste frqud        # a subset
    python bench/ablations.py --smoke                 # tiny synthetic data (CI smoke test)

Each arm is ``diger run --model DIGER --config_files configs/ml-100k.yaml configs/TIGER.yaml
configs/ablations/common.yaml configs/ablations/<arm>.yaml``. Prints, per arm, the codes used per
level after pre-training and at the end, usage perplexity, collision rate, the share of items whose
semantic ID changed in the last epoch, and test NDCG@10 / Recall@10.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table, toy_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ["ste", "det_softmax_st", "gumbel", "frqud", "sdud", "sdud_frqud", "historical_frqud", "frqud_normalized",
        "gumbel_normalized", "gumbel_small_noise", "frqud_small_noise", "sdud_small_noise", "sdud_frqud_small_noise"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="*", default=ARMS)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--seed", type=int, default=2020)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ablation-"))
    dataset, base = "ml-100k", {}
    files = [ROOT / "configs" / "ml-100k.yaml", ROOT / "configs" / "TIGER.yaml", ROOT / "configs" / "ablations" / "common.yaml"]
    if args.smoke:
        dataset, files = "toy", [ROOT / "configs" / "ablations" / "common.yaml"]
        base = {**toy_dataset(work), "epochs": 1, "rqvae_epochs": 10}
    rows = []
    for arm in args.arms:
        out_dir = work / arm
        cfg = {**base, "seed": args.seed, "output_dir": str(out_dir), "show_progress": False, "state": "WARNING"}
        cmd = [sys.executable, "-m", "diger.cli", "run", "--model", "DIGER", "--dataset", dataset, "--config_files",
               *map(str, files), str(ROOT / "configs" / "ablations" / f"{arm}.yaml"),
               *[f"--{k}={json.dumps(v)}" for k, v in cfg.items()]]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        if res.returncode != 0:
            raise SystemExit(f"{arm} failed:\n{res.stderr[-3000:]}")
        r = json.loads((out_dir / "result.json").read_text())
        hist = r["codebook"]["history"]
        first, last = hist[0], hist[-1]
        k = len(last["levels"][0]["counts"])
        rows.append({
            "arm": arm,
            "codes used after pre-training": " / ".join(str(lv["used"]) for lv in first["levels"]),
            f"codes used at the end (of {k})": " / ".join(str(lv["used"]) for lv in last["levels"]),
            "perplexity L1": last["levels"][0]["perplexity"],
            "collision rate": last["collision_rate"],
            "SID changed (last epoch)": last.get("changed_frac", 0.0),
            "stochastic share": (last.get("assignment") or {}).get("stochastic_ratio", ""),
            "test NDCG@10": r["test_result"]["ndcg@10"],
            "test Recall@10": r["test_result"]["recall@10"],
        })
    shutil.rmtree(work, ignore_errors=True)  # kept only when a run failed (SystemExit above)
    print(header("python bench/ablations.py " + " ".join(sys.argv[1:])))
    print(f"dataset {dataset}, seed {args.seed}, configs/ablations/common.yaml budget\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
