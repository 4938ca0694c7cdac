"""Training / evaluation throughput, peak memory and FLOP efficiency of TIGER, DIGER and SASRec (issue 14).

    python bench/speed_rec.py                 # ML-100K: sizes default+official, backbones hf_t5+fast, 1 and 2 threads
    python bench/speed_rec.py --smoke         # tiny synthetic data, 1 thread (CI smoke test)
    python bench/speed_rec.py --models TIGER DIGER --profile   # also print the hot spots (top functions)
    python bench/speed_rec.py --backbones hf_t5 fast --amp off bf16 --sizes official --threads 1 2 --rounds 3
    OMP_NUM_THREADS=1 python bench/speed_rec.py --steps 2 --models TIGER --sizes default --threads 1 --backbones hf_t5

Grid: every (size, threads, model, amp, backbone); ``--backbones`` applies to TIGER/DIGER only (the config key
``backbone``: ``hf_t5`` = the HuggingFace ``T5Model``, ``fast`` = the package's own T5; the pseudo-backbone
``before`` = ``hf_t5`` with autograd anomaly mode on, as every training step ran before ``diger.compat`` undid the
global anomaly mode that importing RecBole's SINE model turns on; ``fast_bits`` = ``fast`` with
``dropout_impl: bits``, dropout masks from bulk random bits; ``decoder`` = the causal LM over the semantic-ID
tokens, as deep as the T5's two stacks together, ``decoder:N`` = the same with ``decoder_layers: N``), other
models get one row.
``--amp bf16`` passes ``enable_amp: True`` and runs the bench's training step (loss computation) under
``torch.autocast(dtype=torch.bfloat16)``; evaluation runs as the model itself decides. Sizes:

* ``default``: the package defaults for ML-100K (``diger/properties/dataset/ml-100k*.yaml``, history 10);
* ``official``: the official DIGER size, T5 4+4 layers, d_model 128, d_ff 512, 4 heads, d_kv 64, history 20,
  3 code levels of 256 codes, suffix 256 (tokenizer MLP and e_dim stay at the package defaults);
* ``toy`` (only with ``--smoke``): the synthetic test dataset with tiny sizes.

For every size the RQ-VAE pre-training is cut to ``rqvae_epochs: 2`` (construction only: the semantic IDs are
poor, the step cost is the same). Batch ``--batch`` (256) for training and evaluation.

Each row is measured in its own subprocess (clean peak-RSS) with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and
``torch.set_num_threads`` set to the row's thread count: ``--steps`` training steps after one warm-up step
(samples/s), then beam-search evaluation of one validation batch (users/s). Then, outside the timing, one
training forward+backward of each of the first 5 timed batches under ``torch.utils.flop_counter.FlopCounterMode``
(matmul-class operators: mm, addmm, bmm, attention, convolution) gives the model FLOPs per training sample, their
sum over their samples (a ``decoder`` batch's cost depends on how many window rows it holds), so achieved train
GFLOP/s = FLOPs/sample x samples/s. It is reported as a share of the fp32 and of the bf16 matmul peak, measured in the
same run per thread count (best of 3 timings of square matmuls, 2048 or smaller when one would take too long)
in a child process as well. Rows run with the two backbones of one (size, threads, model, amp) back to back;
``--rounds N`` repeats the whole grid (peaks included) and reports per-row medians. Every run checks which T5
module the model really built and fails ("BACKBONE MISMATCH") when it is not the requested backbone (a diger
that does not read the ``backbone`` key yet), rather than print a mislabelled row. A failing row prints its
error tail and the others go on; the exit status is non-zero only when every row failed.

With ``--profile`` the same training steps and evaluation are run once more under cProfile (Python functions by
own time) and ``torch.profiler`` (operators by self CPU time), after the timed runs so the table is not affected
(first round only).
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table, toy_dataset  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
#: Models that take the ``backbone`` key (semantic-ID T5 recommenders); the others get one row per grid cell.
GENREC_MODELS = ("TIGER", "DIGER")
#: The current backbone: a ``diger`` without the ``backbone`` config key builds it.
REFERENCE_BACKBONE = "hf_t5"
#: Pseudo-backbone ``before``: ``hf_t5`` with autograd anomaly mode on, i.e. the training step of this package
#: before ``diger.compat`` undid the global ``torch.autograd.set_detect_anomaly(True)`` of RecBole's SINE module
#: (the state issue 14 measured). Evaluation is unaffected (no autograd).
BEFORE_BACKBONE = "before"
#: Pseudo-backbone ``fast_bits``: ``fast`` with ``dropout_impl: bits`` (diger.models.fast_t5.bits_dropout).
BITS_BACKBONE = "fast_bits"
#: Pseudo-backbone prefix ``decoder:N``: ``decoder`` with ``decoder_layers: N``.
DECODER_DEPTH = "decoder:"
#: Short tokenizer pre-training for every size: only the construction time depends on it.
FAST_TOKENIZER = {"rqvae_epochs": 2}
SIZES = {
    "default": {"MAX_ITEM_LIST_LENGTH": 10},
    "official": {"t5_layers": 4, "t5_decoder_layers": 4, "d_model": 128, "d_ff": 512, "num_heads": 4, "d_kv": 64,
                 "MAX_ITEM_LIST_LENGTH": 20, "code_levels": 3, "code_num": 256, "suffix_size": 256},
}
SASREC = {"loss_type": "CE", "train_neg_sample_args": None, "hidden_size": 64, "inner_size": 256, "n_layers": 2,
          "n_heads": 2}


def decoder_depth(backbone: str) -> int:
    """``N`` of the pseudo-backbone ``decoder:N``.

    Raises:
        ValueError: ``N`` is not an integer >= 1.
    """
    depth = backbone[len(DECODER_DEPTH):]
    if not depth.isdigit() or int(depth) < 1:
        raise ValueError(f"backbone {backbone!r}: expected decoder:N with N >= 1 layers")
    return int(depth)


def _set_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


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


def _built_backbone(net):
    """(backbone name, class of the T5 module) that ``net`` really built; (None, "") without a T5 recommender.

    ``GenRec.backbone`` when the model has it; otherwise (a diger before the ``backbone`` key) ``hf_t5`` when
    the T5 module is a ``transformers`` class, else its class name.
    """
    genrec = getattr(net, "genrec", None)
    if genrec is None:
        return None, ""
    t5 = getattr(genrec, "t5", getattr(genrec, "lm", None))  # backbone decoder: the causal LM
    cls = f"{type(t5).__module__}.{type(t5).__name__}" if t5 is not None else ""
    name = getattr(genrec, "backbone", None)
    if name is None:
        name = REFERENCE_BACKBONE if type(t5).__module__.startswith("transformers") else type(t5).__name__
    return str(name), cls


def measure(model: str, dataset: str, config: dict, steps: int, profile: bool = False, top: int = 15,
            threads: int = 0, backbone: str | None = None, amp: str = "off", label: str = "") -> dict:
    """Train ``steps`` timed steps (after one warm-up step), beam-search one validation batch, count the FLOPs
    of one training step; optionally profile.

    Raises:
        RuntimeError: "BACKBONE MISMATCH" when the model built another backbone than ``backbone`` (a diger that
            does not read the ``backbone`` key yet): the row is not measured rather than mislabelled.
    """
    if threads:
        _set_threads(threads)
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diger.quick_start import make_config, resolve_model
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    config = dict(config, enable_amp=amp == "bf16")
    before = backbone == BEFORE_BACKBONE
    if before:  # hf_t5 as this package ran it before the compat fix: RecBole's SINE import left anomaly mode on
        backbone = REFERENCE_BACKBONE
        torch.autograd.set_detect_anomaly(True)
    if backbone == BITS_BACKBONE:
        backbone, config = "fast", dict(config, dropout_impl="bits")
    if backbone is not None and backbone.startswith(DECODER_DEPTH):
        backbone, config = "decoder", dict(config, decoder_layers=decoder_depth(backbone))
    if backbone is not None:
        config["backbone"] = backbone
    cfg = make_config(model, dataset, None, config)
    init_seed(cfg["seed"], True)
    train, valid, _ = data_preparation(cfg, create_dataset(cfg))
    device = torch.device(cfg["device"])
    net = resolve_model(model)(cfg, train._dataset).to(device)
    built, built_cls = _built_backbone(net)
    if backbone is not None and built != backbone:
        raise RuntimeError(f"BACKBONE MISMATCH: requested backbone {backbone!r}, the model built {built!r} "
                           f"({built_cls}); this diger does not pass the config key 'backbone' through yet")
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    dev_type = "cuda" if device.type == "cuda" else "cpu"

    def loss_of(batch):
        with torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = net.calculate_loss(batch)
            return sum(loss) if isinstance(loss, tuple) else loss

    def train_step(batch):
        loss = loss_of(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    net.train()
    it = iter(train)
    times, n, used = [], 0, []
    for i in range(steps + 1):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(train)
            batch = next(it)
        batch = batch.to(device)
        _sync(device)
        t = time.perf_counter()
        train_step(batch)
        _sync(device)
        if i:  # skip the warm-up step
            times.append(time.perf_counter() - t)
            n += len(batch)
            used.append(batch)
    net.eval()
    inter = next(iter(valid))[0].to(device)

    def evaluate():
        with torch.no_grad():
            net.full_sort_predict(inter)

    _sync(device)
    t = time.perf_counter()
    evaluate()
    _sync(device)
    ev = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # FLOPs of training forward+backward, outside the timing (no optimiser step: it has no matmuls)
    net.train()
    counter = FlopCounterMode(display=False)
    counted = used[:5]
    with counter:
        for b in counted:
            loss_of(b).backward()
    opt.zero_grad(set_to_none=True)
    net.eval()
    out = {"model": model, "train samples/s": n / sum(times), "eval users/s": len(inter) / ev, "peak RSS GiB": rss,
           "flops/sample": counter.get_total_flops() / sum(len(b) for b in counted), "threads": torch.get_num_threads(),
           "backbone class": built_cls}
    if profile:
        def train_steps():
            net.train()
            for b in used:
                train_step(b)
            net.eval()

        name = f"{model} [{label}]" if label else model
        out["profile"] = (f"=== {name}: {len(used)} training steps (batch {len(used[0])}) ===\n"
                          + _profile_text(train_steps, top)
                          + f"\n=== {name}: beam-search evaluation of {len(inter)} users ===\n"
                          + _profile_text(evaluate, top))
    return out


def matmul_peak(threads: int, smoke: bool = False) -> dict:
    """fp32 and bf16 matmul GFLOP/s at ``threads`` threads: best of 3 timings of 2 square matmuls after a warm-up.

    The matrix is the largest of 2048/1024/512/256 (smoke: 512/256) whose single product is predicted, from a
    256 probe, to take at most 0.5 s, so an unaccelerated bf16 (about 1 GFLOP/s) costs seconds, not minutes.
    """
    _set_threads(threads)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = (8192, 4096, 2048) if device == "cuda" else ((512, 256) if smoke else (2048, 1024, 512, 256))
    out = {"threads": torch.get_num_threads(), "device": device}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator(device="cpu").manual_seed(0)

        def timed(n, reps):
            a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
            b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
            a @ b  # warm-up
            _sync(device)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(reps):
                    a @ b
                _sync(device)
                best = min(best, (time.perf_counter() - t) / reps)
            return 2 * n**3 / best / 1e9

        rate = timed(min(sizes), 1)  # probe
        n = next((s for s in sizes if 2 * s**3 / (rate * 1e9) <= 0.5), min(sizes))
        out[f"{name} GFLOP/s"] = timed(n, 2) if n != min(sizes) else rate
        out[f"{name} n"] = n
    return out


def _run_child(flag: str, spec: dict, threads: int, work: Path, timeout: float):
    """(result dict, None) or (None, error tail) of one child process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    try:
        out = subprocess.run([sys.executable, SCRIPT, flag, json.dumps(spec)], capture_output=True, text=True,
                             cwd=work, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return None, f"timed out after {timeout:.0f} s\n" + "\n".join(err.splitlines()[-15:])
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        try:
            return json.loads(lines[-1]), None
        except json.JSONDecodeError:
            pass
    err = out.stderr.strip()
    if "Traceback (most recent call last)" in err:  # the traceback, not the warnings before it
        err = err[err.rindex("Traceback (most recent call last)"):]
    tail = "\n".join(err.splitlines()[-15:]) or "\n".join(lines[-15:])
    return None, f"exit status {out.returncode}\n{tail}"


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[-1].strip() if lines else err


def _num(v) -> str:
    if v is None or v == "":
        return ""
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3g}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic dataset (size toy), 2 steps, 1 thread")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", nargs="*", default=["SASRec", "TIGER", "DIGER"])
    ap.add_argument("--backbones", nargs="+", default=["hf_t5", "fast"],
                    help="values of the config key `backbone` for TIGER/DIGER (hf_t5 = HuggingFace T5Model, fast = ours); "
                         "`before` = hf_t5 with autograd anomaly mode on, the training step before the compat fix; "
                         "`fast_bits` = fast with dropout_impl bits; `decoder` = the causal LM over SID tokens; "
                         "`decoder:N` = decoder with decoder_layers N")
    ap.add_argument("--amp", nargs="+", default=["off"], choices=["off", "bf16"],
                    help="bf16: enable_amp True and the training loss under torch.autocast(bfloat16)")
    ap.add_argument("--sizes", nargs="+", default=None, choices=sorted(SIZES),
                    help="model sizes (default: default official; --smoke: toy)")
    ap.add_argument("--threads", nargs="+", type=int, default=None, help="thread counts (default: 1 2; --smoke: 1)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole grid, report per-row medians")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child run before it counts as failed")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, profile the same steps and print the top functions and operators")
    ap.add_argument("--top", type=int, default=15, help="rows per profile listing (--profile)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["model"], spec["dataset"], spec["config"], spec["steps"],
                                 spec.get("profile", False), spec.get("top", 15), spec.get("threads", 0),
                                 spec.get("backbone"), spec.get("amp", "off"), spec.get("label", ""))))
        return
    if args.peak_child:
        spec = json.loads(args.peak_child)
        print(json.dumps(matmul_peak(spec["threads"], spec.get("smoke", False))))
        return
    if args.rounds < 1 or args.steps < 1 or any(t < 1 for t in (args.threads or [1])):
        ap.error("--rounds, --steps and --threads must be >= 1")
    from diger.models.genrec import BACKBONES

    known = (*BACKBONES, BEFORE_BACKBONE, BITS_BACKBONE)
    for bb in args.backbones:  # refused here, not after every child process has started
        try:
            if bb.startswith(DECODER_DEPTH):
                decoder_depth(bb)
            elif bb not in known:
                raise ValueError(f"unknown backbone {bb!r}: one of {', '.join(known)} or decoder:N")
        except ValueError as exc:
            ap.error(f"--backbones: {exc}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    notes = []
    if args.smoke:
        if args.sizes:
            notes.append(f"--sizes {' '.join(args.sizes)} ignored with --smoke (size toy)")
        dataset, steps, sizes = "toy", 2, {"toy": toy_dataset(work)}
        threads = args.threads or [1]
    else:
        dataset, steps = "ml-100k", args.steps
        sizes = {s: {"show_progress": False, "state": "WARNING", **SIZES[s]} for s in (args.sizes or ["default", "official"])}
        threads = args.threads or [1, 2]
    backbones = list(dict.fromkeys(args.backbones))
    amps = list(dict.fromkeys(args.amp))

    grid = []  # backbones innermost: the two backbones of one (size, threads, model, amp) run back to back
    for size, size_cfg in sizes.items():
        for th in threads:
            for model in args.models:
                for amp in amps:
                    for bb in (backbones if model in GENREC_MODELS else [None]):
                        cfg = {**size_cfg, **FAST_TOKENIZER, "train_batch_size": args.batch,
                               "eval_batch_size": args.batch, "checkpoint_dir": str(work / "saved"),
                               **(SASREC if model == "SASRec" else {})}
                        grid.append({"model": model, "backbone": bb, "amp": amp, "size": size, "threads": th,
                                     "config": cfg})

    results = {}   # row key -> list of child results
    errors = {}    # row key -> list of (round, error tail)
    peaks = {}     # threads -> list of peak dicts
    peak_errors = []
    total = args.rounds * (len(threads) + len(grid))
    done = 0

    def progress(what: str, t0: float, err) -> None:
        status = "ok" if err is None else f"FAILED: {_last_line(err)}"
        print(f"[{done}/{total}] {what}: {status} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if err is not None:
            print("    " + err.replace("\n", "\n    "), file=sys.stderr, flush=True)

    for rnd in range(args.rounds):
        for th in threads:
            t0 = time.perf_counter()
            res, err = _run_child("--peak-child", {"threads": th, "smoke": args.smoke}, th, work, args.timeout)
            done += 1
            if res is None:
                peak_errors.append((rnd + 1, th, err))
            else:
                peaks.setdefault(th, []).append(res)
            progress(f"round {rnd + 1}, matmul peaks at {th} thread(s)", t0, err)
        for g in grid:
            key = (g["model"], g["backbone"] or "-", g["amp"], g["size"], g["threads"])
            label = f"{key[1]}, amp {key[2]}, size {key[3]}, {key[4]} thread(s)"
            spec = {"model": g["model"], "dataset": dataset, "config": g["config"], "steps": steps,
                    "profile": args.profile and rnd == 0, "top": args.top, "threads": g["threads"],
                    "backbone": g["backbone"], "amp": g["amp"], "label": label}
            t0 = time.perf_counter()
            res, err = _run_child("--child", spec, g["threads"], work, args.timeout)
            done += 1
            if res is None:
                errors.setdefault(key, []).append((rnd + 1, err))
            else:
                results.setdefault(key, []).append(res)
            progress(f"round {rnd + 1}, {g['model']} [{label}]", t0, err)

    shutil.rmtree(work, ignore_errors=True)  # the toy dataset and checkpoints of the children (errors printed below)
    peak = {th: {k: _median([p[k] for p in ps]) for k in ("fp32 GFLOP/s", "bf16 GFLOP/s")} | {
        "fp32 n": ps[0]["fp32 n"], "bf16 n": ps[0]["bf16 n"], "device": ps[0]["device"]} for th, ps in peaks.items()}
    rows = {}
    for g in grid:
        key = (g["model"], g["backbone"] or "-", g["amp"], g["size"], g["threads"])
        row = dict(zip(("model", "backbone", "amp", "size", "threads"), key))
        runs = results.get(key, [])
        if runs:
            for k in ("train samples/s", "eval users/s", "peak RSS GiB", "flops/sample"):
                row[k] = _median([r[k] for r in runs])
            row["train GFLOP/s"] = row["flops/sample"] * row["train samples/s"] / 1e9
            pk = peak.get(key[4], {})
            for dt in ("fp32", "bf16"):
                p = pk.get(f"{dt} GFLOP/s")
                if dt == "bf16" and p and p < pk.get("fp32 GFLOP/s", 0):
                    p = None  # no bf16 matmul units (emulated bf16 is slower than fp32): a share of it means nothing
                row[f"% {dt} peak"] = 100 * row["train GFLOP/s"] / p if p else None
        row["runs"] = runs
        row["ok"] = len(runs)
        rows[key] = row
    for key, row in rows.items():
        if not row["ok"]:
            continue
        model, bb, amp, size, th = key
        ref = rows.get((model, REFERENCE_BACKBONE, "off", size, th))
        if bb != "-" and ref and ref["ok"]:
            row["train vs hf_t5"] = row["train samples/s"] / ref["train samples/s"]
            row["eval vs hf_t5"] = row["eval users/s"] / ref["eval users/s"]
        fast = rows.get((model, "fast", amp, size, th))
        if bb not in ("-", "fast") and fast and fast["ok"]:  # e.g. decoder vs the T5 at the same amp
            row["train vs fast"] = row["train samples/s"] / fast["train samples/s"]
            row["FLOPs fast / this"] = fast["flops/sample"] / row["flops/sample"]
        old = rows.get((model, BEFORE_BACKBONE, "off", size, th))
        if bb != "-" and old and old["ok"]:
            row["train vs before"] = row["train samples/s"] / old["train samples/s"]
            row["eval vs before"] = row["eval users/s"] / old["eval users/s"]
        sas = rows.get(("SASRec", "-", amp, size, th))
        if sas and sas["ok"]:
            row["train vs SASRec"] = row["train samples/s"] / sas["train samples/s"]

    import torch

    print(header("python bench/speed_rec.py " + " ".join(sys.argv[1:])))
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()} (torch.backends.cpu.get_cpu_capability())")
    size_text = {"toy": "toy = synthetic test dataset, tiny T5 (diger/testing.py)",
                 "default": "default = package ML-100K defaults (T5 2+2 layers, d_model 128, d_ff 256, d_kv 32, "
                            "64 codes x 3 levels, history 10)",
                 "official": "official = DIGER size (T5 4+4 layers, d_model 128, d_ff 512, 4 heads, d_kv 64, "
                             "256 codes x 3 levels, suffix 256, history 20)"}
    print(f"dataset {dataset}, batch {args.batch}, {steps} timed training steps after 1 warm-up, one validation "
          f"batch with beam search; {args.rounds} round(s){', medians' if args.rounds > 1 else ''}")
    print("sizes: " + "; ".join(size_text[s] for s in sizes))
    print(f"tokenizer pre-training shortened to rqvae_epochs {FAST_TOKENIZER['rqvae_epochs']} for every size "
          "(construction only; semantic IDs are poor, step cost unchanged)")
    print("threads: OMP_NUM_THREADS, MKL_NUM_THREADS and torch.set_num_threads per child process; amp bf16: "
          "enable_amp True + the bench's training loss under torch.autocast(bfloat16), evaluation as the model decides")
    print("FLOPs/sample: FlopCounterMode over the training forward+backward of the first 5 timed batches "
          "(matmul-class ops), / their samples, counted outside the timing; train GFLOP/s = FLOPs/sample x samples/s")
    for n in notes:
        print(n)
    print("\nmatmul peaks (square n x n matmul, best of 3):\n")
    prow = [{"threads": th, "fp32 GFLOP/s": _num(p["fp32 GFLOP/s"]), "fp32 n": p["fp32 n"],
             "bf16 GFLOP/s": _num(p["bf16 GFLOP/s"]), "bf16 n": p["bf16 n"], "device": p["device"]}
            for th, p in sorted(peak.items())]
    print(table(prow, ["threads", "fp32 GFLOP/s", "bf16 GFLOP/s", "fp32 n", "bf16 n", "device"]) if prow
          else "(no peak measured)")
    if any(p.get("bf16 GFLOP/s", 0) < p.get("fp32 GFLOP/s", 0) for p in peak.values()):
        print("\nbf16 matmuls are slower than fp32 here (no bf16 instructions): the '% bf16 peak' column is left empty")
    for rnd, th, err in peak_errors:
        print(f"\npeak measurement at {th} thread(s) failed (round {rnd}):\n{err}")

    cols = ["model", "backbone", "amp", "size", "threads", "train samples/s", "eval users/s", "peak RSS GiB",
            "MFLOP/sample", "train GFLOP/s", "% fp32 peak", "% bf16 peak"]
    if any("train vs hf_t5" in r for r in rows.values()):  # only when the reference ran
        cols += ["train vs hf_t5", "eval vs hf_t5"]
    if any("train vs before" in r for r in rows.values()):
        cols += ["train vs before", "eval vs before"]
    if any("train vs SASRec" in r for r in rows.values()):
        cols.append("train vs SASRec")
    if any("train vs fast" in r for r in rows.values()):  # same amp, size and threads
        cols += ["train vs fast", "FLOPs fast / this"]
    if args.rounds > 1:
        cols.append("runs ok")
    out_rows = []
    for row in rows.values():
        r = {k: row[k] for k in ("model", "backbone", "amp", "size", "threads")}
        r["runs ok"] = f"{row['ok']}/{args.rounds}"
        if not row["ok"]:
            r["train samples/s"] = "FAILED"
        else:
            for k in ("train samples/s", "eval users/s", "train GFLOP/s", "% fp32 peak", "% bf16 peak"):
                r[k] = _num(row.get(k))
            r["peak RSS GiB"] = f"{row['peak RSS GiB']:.2f}"
            r["MFLOP/sample"] = _num(row["flops/sample"] / 1e6)
            for k in ("train vs hf_t5", "eval vs hf_t5", "train vs before", "eval vs before", "train vs SASRec",
                      "train vs fast", "FLOPs fast / this"):
                r[k] = f"{row[k]:.2f}" if k in row else ""
        out_rows.append(r)
    print("\n" + table(out_rows, cols))

    built = {}
    for k, row in rows.items():
        if row["ok"] and k[1] != "-":
            built.setdefault(k[1], set()).add(row["runs"][0]["backbone class"])
    if built:
        print("\nT5 module built per backbone (checked in every run): "
              + "; ".join(f"{b}: {', '.join(sorted(c))}" for b, c in built.items()))
    if errors:
        print("\nfailed runs (each distinct error once):")
        by_err = {}
        for key, errs in errors.items():
            for rnd, err in errs:
                by_err.setdefault(err, []).append(f"{key[0]} [{key[1]}, amp {key[2]}, size {key[3]}, "
                                                  f"{key[4]} thread(s)] round {rnd}")
        for err, where in by_err.items():
            print(f"\n{_last_line(err)}\n  in: " + "; ".join(where) + "\n    " + err.replace("\n", "\n    "))
    for row in rows.values():
        for r in row["runs"]:
            if "profile" in r:
                print("\n" + r["profile"])
    if not any(row["ok"] for row in rows.values()):
        raise SystemExit("every run failed")


if __name__ == "__main__":
    main()
