"""Training / evaluation throughput and peak memory of TIGER, DIGER and SASRec at equal batch sizes.

    python bench/speed_rec.py                 # ML-100K, the README table
    python bench/speed_rec.py --smoke         # tiny synthetic data (CI smoke test)
    python bench/speed_rec.py --models TIGER DIGER --profile   # also print the hot spots (top functions)

Each model is measured in its own subprocess (clean peak-RSS): ``--steps`` training steps after one
warm-up step (samples/s), then beam-search evaluation of one validation batch (users/s). With ``--profile``
the same training steps and evaluation are run once more under cProfile (Python functions by own time) and
``torch.profiler`` (operators by self CPU time), after the timed runs so the table is not affected.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table, toy_dataset  # noqa: E402


def _profile_text(fn, top: int) -> str:
    """Run ``fn`` under cProfile and torch.profiler; the top functions and operators as text."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    with profile(activities=[ProfilerActivity.CPU]) as tp:
        fn()
    ops = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return ("Python functions by own time (cProfile):\n" + "\n".join(lines[start:]).rstrip() +
            "\n\nTorch operators by self CPU time (torch.profiler):\n" + ops)


def measure(model: str, dataset: str, config: dict, steps: int, profile: bool = False, top: int = 15) -> dict:
    """Train ``steps`` timed steps (after one warm-up step) and beam-search one validation batch; optionally profile."""
    import resource

    import torch

    from diger.quick_start import make_config, resolve_model
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    cfg = make_config(model, dataset, None, config)
    init_seed(cfg["seed"], True)
    train, valid, _ = data_preparation(cfg, create_dataset(cfg))
    net = resolve_model(model)(cfg, train._dataset)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net.train()
    it = iter(train)
    times, n, used = [], 0, []

    def train_step(batch):
        loss = net.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(steps + 1):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(train)
            batch = next(it)
        t = time.perf_counter()
        train_step(batch)
        if i:  # skip the warm-up step
            times.append(time.perf_counter() - t)
            n += len(batch)
            used.append(batch)
    net.eval()
    inter = next(iter(valid))[0]

    def evaluate():
        with torch.no_grad():
            net.full_sort_predict(inter)

    t = time.perf_counter()
    evaluate()
    ev = time.perf_counter() - t
    out = {"model": model, "train samples/s": n / sum(times), "eval users/s": len(inter) / ev,
           "peak RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if profile:
        def train_steps():
            net.train()
            for b in used:
                train_step(b)
            net.eval()

        out["profile"] = (f"=== {model}: {len(used)} training steps (batch {len(used[0])}) ===\n"
                          + _profile_text(train_steps, top)
                          + f"\n=== {model}: beam-search evaluation of {len(inter)} users ===\n"
                          + _profile_text(evaluate, top))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic dataset, 2 steps")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", nargs="*", default=["SASRec", "TIGER", "DIGER"])
    ap.add_argument("--profile", action="store_true",
                    help="after timing, profile the same steps and print the top functions and operators")
    ap.add_argument("--top", type=int, default=15, help="rows per profile listing (--profile)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["model"], spec["dataset"], spec["config"], spec["steps"],
                                 spec.get("profile", False), spec.get("top", 15))))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    if args.smoke:
        dataset, base, steps = "toy", toy_dataset(work), 2
    else:
        dataset, steps = "ml-100k", args.steps
        base = {"MAX_ITEM_LIST_LENGTH": 10, "show_progress": False, "state": "WARNING"}
    base = {**base, "train_batch_size": args.batch, "eval_batch_size": args.batch,
            "checkpoint_dir": str(work / "saved")}
    sasrec = {"loss_type": "CE", "train_neg_sample_args": None, "hidden_size": 64, "inner_size": 256, "n_layers": 2,
              "n_heads": 2}
    rows = []
    for model in args.models:
        cfg = {**base, **(sasrec if model == "SASRec" else {})}
        spec = json.dumps({"model": model, "dataset": dataset, "config": cfg, "steps": steps,
                           "profile": args.profile, "top": args.top})
        out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, cwd=work)
        if out.returncode != 0:
            raise SystemExit(f"{model} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = next((r for r in rows if r["model"] == "SASRec"), None)
    for r in rows:
        if ref:
            r["train vs SASRec"] = r["train samples/s"] / ref["train samples/s"]
            r["eval vs SASRec"] = r["eval users/s"] / ref["eval users/s"]
    print(header("python bench/speed_rec.py " + " ".join(sys.argv[1:])))
    print(f"dataset {dataset}, batch {args.batch}, {steps} timed training steps, one validation batch with beam search\n")
    print(table(rows, ["model", "train samples/s", "eval users/s", "peak RSS GiB", "train vs SASRec", "eval vs SASRec"]))
    for r in rows:
        if "profile" in r:
            print("\n" + r["profile"])


if __name__ == "__main__":
    main()
