"""Recommendation quality side by side: RecBole baselines, TIGER and DIGER, several seeds, one protocol.

    python bench/quality.py                       # ML-100K, 3 seeds, every arm (hours on 2 cores)
    python bench/quality.py --arms SASRec-CE Pop TIGER DIGER-FrqUD --seeds 2020
    python bench/quality.py --smoke               # tiny synthetic data, 1 seed (CI smoke test)
    python bench/quality.py --dataset amazon-beauty-2014 --data_path data \
        --config_files configs/beauty_protocol.yaml --sid_config_files configs/beauty_cpu.yaml
                                                  # a dataset prepared by `diger data prepare`
    python bench/quality.py --jobs 2 --out q.json # two runs at a time (1 torch thread each); q.json keeps
                                                  # finished runs, so a rerun with the same --out resumes
    python bench/quality.py --arms TIGER --out d.json --against t5.json
                                                  # paired by seed against the same arm in another results file
                                                  # (e.g. t5.json written with --override backbone=fast)

Every arm runs through ``diger.quick_start.run`` with the same split (leave-one-out by time), the
same history length and full-ranking evaluation (``--config_files``, default configs/ml-100k.yaml,
read first; then the arm's own config; then, for the semantic-ID arms only, ``--sid_config_files``). Prints a markdown table of
test Recall@5/10 and NDCG@5/10 (mean +- std over seeds) and the level-1 codebook usage of the
semantic-ID models; raw results go to ``--out`` as JSON.

The semantic-ID arms pre-train their tokenizer once per seed (``sid_seed`` = the run's seed), so the spread over
seeds includes stage 0; ``--override sid_seed=2020`` gives every seed the one pre-training ``diger run`` shares.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, paired_ci, table, toy_dataset  # noqa: E402
from diger.infra import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "SASRec-CE": ("SASRec", ["SASRec.yaml"], {}),
    "SASRec-BCE": ("SASRecBCE", ["SASRec-BCE.yaml"], {}),
    "GRU4Rec": ("GRU4Rec", ["GRU4Rec.yaml"], {}),
    "BERT4Rec": ("BERT4Rec", [], {"epochs": 50, "stopping_step": 10, "train_batch_size": 256}),
    "Pop": ("Pop", ["Pop.yaml"], {}),
    "TIGER": ("TIGER", ["TIGER.yaml"], {}),
    "TIGER-RQKMeans": ("TIGER", ["TIGER.yaml"], {"tokenizer": "rqkmeans"}),
    "DIGER-FrqUD": ("DIGER", ["TIGER.yaml", "DIGER.yaml"], {"assign_mode": "frqud"}),
    "DIGER-SDUD": ("DIGER", ["TIGER.yaml", "DIGER.yaml"], {"assign_mode": "sdud"}),
    "DIGER-SDUD+FrqUD": ("DIGER", ["TIGER.yaml", "DIGER.yaml"], {"assign_mode": "sdud_frqud"}),
    # our options of issue 17 (off by default in DIGER)
    "DIGER-FrqUD+stop_target": ("DIGER", ["TIGER.yaml", "DIGER.yaml"],
                                {"assign_mode": "frqud", "target_use": "stop_gradient"}),
    "DIGER-FrqUD+latent_norm": ("DIGER", ["TIGER.yaml", "DIGER.yaml"],
                                {"assign_mode": "frqud", "lr_id_scale": "latent_norm"}),
}
METRICS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


SEMANTIC_ID_MODELS = ("TIGER", "DIGER")


def _show(path: str) -> str:
    """A config path relative to the repository when it lies inside it."""
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


class RunFailed(RuntimeError):
    """One arm/seed run exited non-zero; the message holds its last error line and its log file."""


def one_run(arm: str, seed: int, dataset: str, base: dict, files: list, work: Path, env=None,
            sid_files: list = (), overrides: Optional[dict] = None) -> dict:
    """Run one arm with one seed in a subprocess (its own folder under ``work``); returns test metrics,
    final codebook statistics and wall-clock seconds.

    Raises:
        RunFailed: naming the arm, the seed, the child's last error line and its full log.
    """
    model, cfg_files, extra = ARMS[arm]
    run_dir = work / f"{arm}-{seed}"
    cfg = {**base, **extra, **(overrides or {}), "seed": seed, "output_dir": str(run_dir), "show_progress": False,
           "state": "WARNING"}
    code = ("import json,sys; from diger.quick_start import run; "
            "r=run(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) or None, json.loads(sys.argv[4])); "
            "print('RESULT'+json.dumps({'test': r['test_result'], 'codebook': r.get('codebook', {}).get('final'), "
            "'seconds': r['wall_clock_seconds'], 'training': r.get('training')}))")
    paths = files + [str(ROOT / "configs" / f) for f in cfg_files]
    if model in SEMANTIC_ID_MODELS:
        paths += list(sid_files)
        # one pre-training per seed, so that the seed spread includes stage 0 (--override sid_seed=N shares one)
        if "sid_seed" not in (overrides or {}):
            cfg["sid_seed"] = seed
    run_dir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", code, model, dataset, json.dumps(paths), json.dumps(cfg)],
                         capture_output=True, text=True, cwd=run_dir, env=env)
    if out.returncode != 0:
        log = run_dir / "stderr.log"
        log.write_text(out.stderr)
        last = [line for line in out.stderr.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RunFailed(f"{arm} seed {seed} failed: {last[0].strip()} (full log: {log})")
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def read_results(path: Path, flag: str) -> dict:
    """A results file written by this script: a JSON object with a ``_meta`` object and runs ``arm/seed`` whose
    ``test`` metrics are numbers.

    Raises:
        SystemExit: naming ``flag``, the file and the first bad entry.
    """
    try:
        done = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{flag} {path}: not a readable results file ({exc})")
    if not isinstance(done, dict) or not isinstance(done.get("_meta"), dict):
        raise SystemExit(f"{flag} {path}: not a results file of bench/quality.py (a JSON object with a '_meta' "
                         "object and runs 'arm/seed')")
    for key, run in done.items():
        test = run.get("test") if isinstance(run, dict) else None
        if key != "_meta" and not (isinstance(test, dict) and
                                   all(isinstance(test.get(m), (int, float)) for m in ("ndcg@10", "recall@10"))):
            raise SystemExit(f"{flag} {path}: run {key!r} has no numeric test metrics ndcg@10 / recall@10")
    return done


def load_results(out: Optional[Path], meta: dict) -> dict:
    """Finished runs from ``out`` when it was written under the same protocol (``meta``), else {}.

    Raises:
        SystemExit: naming the file when it is not a results file or was written under another protocol.
    """
    if out is None or not out.exists():
        return {}
    done = read_results(out, "--out")
    if done["_meta"] != meta:
        old = done["_meta"]
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        raise SystemExit(f"--out {out} holds runs of another protocol (was -> now: {diff}); "
                         "pick another --out so that results of different protocols never mix")
    return done


def load_reuse(path: Path, meta: dict) -> dict:
    """The runs of a ``--reuse`` file, written under the same dataset, protocol configs and overrides (its
    semantic-ID configs may differ: only RecBole baselines are copied from it).

    Raises:
        SystemExit: naming the file when it is unreadable or of another protocol.
    """
    other = read_results(path, "--reuse")
    om = other["_meta"]
    diff = {k: (om.get(k), v) for k, v in meta.items() if k != "sid_config_files" and om.get(k) != v}
    if diff:
        raise SystemExit(f"--reuse {path} holds runs of another protocol (there -> here: {diff})")
    return other


def paired_table(pairs: list, runs: dict, other: dict, seeds: list) -> str:
    """Markdown table of paired differences: one row ``(label, arm, other_arm)`` each, the mean over ``seeds`` of
    ``runs[arm/seed] - other[other_arm/seed]`` test NDCG@10 and Recall@10 with its 95% t interval."""
    rows = []
    for label, arm, other_arm in pairs:
        row = {"arm": label}
        for m in ("ndcg@10", "recall@10"):
            mean, lo, hi = paired_ci([runs[f"{arm}/{s}"]["test"][m] - other[f"{other_arm}/{s}"]["test"][m]
                                      for s in seeds])
            row[m] = f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        rows.append(row)
    return table(rows, ["arm", "ndcg@10", "recall@10"])


def load_against(path: Path, meta: dict, arms: list, seeds: list) -> dict:
    """The results file of ``--against``: every ``arm/seed`` asked for, under the same dataset and protocol configs.

    Raises:
        SystemExit: naming the file when it is unreadable, of another dataset or protocol, or lacks a run.
    """
    other = read_results(path, "--against")
    om = other["_meta"]
    if any(om.get(k) != meta[k] for k in ("dataset", "config_files")):
        raise SystemExit(f"--against {path}: written under dataset / protocol "
                         f"{om.get('dataset')!r} {om.get('config_files')}, these runs under "
                         f"{meta['dataset']!r} {meta['config_files']}: differences across protocols are not paired")
    missing = [f"{a}/{s}" for s in seeds for a in arms if f"{a}/{s}" not in other]
    if missing:
        raise SystemExit(f"--against {path}: has no run {', '.join(missing)} (pairs need every arm and seed)")
    return other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), metavar="ARM",
                    help=f"arms to run (default: all): {', '.join(ARMS)}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022], help="seeds (default: 2020 2021 2022)")
    ap.add_argument("--dataset", default="ml-100k", help="dataset name (default: ml-100k, shipped with RecBole)")
    ap.add_argument("--data_path", default=None, help="folder holding <dataset>/ (from `diger data prepare`)")
    ap.add_argument("--config_files", nargs="+", default=[str(ROOT / "configs" / "ml-100k.yaml")],
                    help="protocol YAML(s) read before each arm's own config (split, history length, metrics)")
    ap.add_argument("--sid_config_files", nargs="+", default=[],
                    help="YAML(s) read last for TIGER/DIGER arms only (tokenizer and T5 budget of the dataset)")
    ap.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config keys for every arm, winning over the arms' own (e.g. epochs=1); YAML values")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic dataset, 1 seed, tiny models (CI smoke test)")
    ap.add_argument("--out", default=None,
                    help="raw results (JSON), updated after every run; runs already in it are not repeated "
                         "(refused when it was written under another dataset / protocol / overrides)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time; with more than 1, each run gets 1 torch thread (OMP_NUM_THREADS=1)")
    ap.add_argument("--baseline", default=None, metavar="ARM",
                    help="also print each arm's test NDCG@10 / Recall@10 minus this arm's, paired by seed, with 95%% "
                         "t confidence intervals (an arm of --arms)")
    ap.add_argument("--reuse", nargs="+", default=[], metavar="FILE",
                    help="results files of earlier runs: a baseline (non-semantic-ID) arm's run found there is copied "
                         "instead of re-run when that file's dataset, protocol configs and overrides equal these "
                         "(--sid_config_files may differ: they never reach the baselines)")
    ap.add_argument("--against", default=None, metavar="FILE",
                    help="also print each arm's test NDCG@10 / Recall@10 minus the same arm's in FILE, paired by seed, "
                         "with 95%% t intervals: FILE is a results file of the same dataset and --config_files written "
                         "under other --override / --sid_config_files (e.g. another backbone)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders (checkpoints, logs) after success")
    args = ap.parse_args()
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if args.baseline and args.baseline not in args.arms:
        ap.error(f"--baseline {args.baseline} is not one of --arms {args.arms}")
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    for f in args.config_files + args.sid_config_files:
        if not Path(f).is_file():
            ap.error(f"config file not found: {f}")
    if args.data_path and not (Path(args.data_path) / args.dataset).is_dir():
        ap.error(f"--data_path {args.data_path} has no folder {args.dataset}/ (run `diger data prepare` first)")
    from diger.config import ConfigError, parse_overrides

    try:
        overrides = parse_overrides([f"--{kv}" for kv in args.override])
    except ConfigError as exc:
        ap.error(str(exc))
    out = Path(args.out) if args.out else None
    if out and not out.parent.is_dir():
        ap.error(f"--out {out}: folder {out.parent} does not exist")

    # absolute: every run works in a folder of its own
    files, base, dataset = [str(Path(f).resolve()) for f in args.config_files], {}, args.dataset
    sid_files = [str(Path(f).resolve()) for f in args.sid_config_files]
    if args.data_path:
        base["data_path"] = str(Path(args.data_path).resolve())
    if args.smoke:
        dataset, files, sid_files, seeds = "toy", [], [], args.seeds[:1]
    else:
        seeds = args.seeds
    meta = {"dataset": dataset, "config_files": [_show(f) for f in files],
            "sid_config_files": [_show(f) for f in sid_files], "overrides": overrides}
    # the result files are checked before any run folder exists: a refused file leaves nothing behind
    done = {} if args.smoke else load_results(out, meta)
    done["_meta"] = meta
    against = load_against(Path(args.against), meta, args.arms, seeds) if args.against else None
    reused = [(f, load_reuse(Path(f), meta)) for f in args.reuse]
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    if args.smoke:
        base = toy_dataset(work)
        base.update({"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
                     "embedding_size": 16, "rqvae_epochs": 10})
    for f, other in reused:
        for arm in args.arms:
            if ARMS[arm][0] in SEMANTIC_ID_MODELS:
                continue
            for seed in seeds:
                key = f"{arm}/{seed}"
                if key not in done and key in other:
                    done[key] = {**other[key], "reused_from": _show(f)}
    if out and args.reuse:
        atomic_write_json(out, done)
    env = dict(os.environ)
    if args.jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    lock = threading.Lock()

    def job(arm: str, seed: int) -> None:
        r = one_run(arm, seed, dataset, base, files, work, env, sid_files, overrides)
        with lock:  # record every finished run at once, atomically
            done[f"{arm}/{seed}"] = r
            if out:
                atomic_write_json(out, done)
            print(f"done {arm} seed {seed}: ndcg@10 {r['test']['ndcg@10']:.4f} ({r['seconds'] / 60:.1f} min)",
                  file=sys.stderr, flush=True)

    # seed by seed, so that a partly finished grid already holds complete pairs
    todo = [(a, s) for s in seeds for a in args.arms if f"{a}/{s}" not in done]
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            for f in [pool.submit(job, a, s) for a, s in todo]:
                f.result()
    except RunFailed as exc:
        raise SystemExit(f"{exc}\nruns finished so far are in {out or 'memory only (no --out)'}; "
                         f"run folders kept in {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for arm in args.arms:
        runs = [done[f"{arm}/{s}"] for s in seeds]
        row = {"arm": arm}
        for m in METRICS:
            vals = [r["test"][m] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[m] = f"{statistics.mean(vals):.4f} ± {sd:.4f}"
        cb = [r["codebook"] for r in runs if r.get("codebook")]
        if cb:
            k = len(cb[0]["levels"][0]["counts"])
            row["L1 codes used"] = f"{statistics.mean(c['levels'][0]['used'] for c in cb):.1f}/{k}"
            near = [c["nearest_used"][0] for c in cb if c.get("nearest_used")]
            if near:  # Sinkhorn-balanced tables use every code; nearest-code usage shows collapse
                row["L1 nearest-code used"] = f"{statistics.mean(near):.1f}/{k}"
        row["minutes/run"] = f"{statistics.mean(r['seconds'] for r in runs) / 60:.1f}"
        tr = [r["training"] for r in runs if r.get("training")]
        if tr:  # how far early stopping let each seed train (best epoch 1-based)
            row["epochs (best)"] = " ".join(f"{t['epochs_run']}({t['best_epoch'] + 1})" if t["best_epoch"] is not None
                                            else str(t["epochs_run"]) for t in tr)
        rows.append(row)
    print(header("python bench/quality.py " + " ".join(sys.argv[1:])))
    protocol = "synthetic toy" if args.smoke else " ".join(meta["config_files"])
    extra = f"; overrides {overrides}" if overrides else ""
    print(f"dataset {dataset}; seeds {seeds}; protocol {protocol} (leave-one-out, full ranking){extra}\n")
    print(table(rows, ["arm", *METRICS, "L1 codes used", "L1 nearest-code used", "epochs (best)", "minutes/run"]))
    if args.baseline:
        print(f"\npaired by seed, minus {args.baseline} ({len(seeds)} seeds; 95% t interval; "
              "an interval that excludes 0 is a difference shown at that level):\n")
        print(paired_table([(f"{arm} - {args.baseline}", arm, args.baseline) for arm in args.arms
                            if arm != args.baseline], done, done, seeds))
    if against is not None:
        om = against["_meta"]
        print(f"\npaired by seed, these runs minus the same arm's in {_show(args.against)} (its sid configs "
              f"{om.get('sid_config_files')}, overrides {om.get('overrides')}; {len(seeds)} seeds; 95% t interval):\n")
        print(paired_table([(f"{arm} - {arm} ({Path(args.against).name})", arm, arm) for arm in args.arms],
                           done, against, seeds))


if __name__ == "__main__":
    main()
