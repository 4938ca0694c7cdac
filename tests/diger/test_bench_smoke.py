"""The diger bench scripts' small-size modes (issue #5): they run and print their tables. No timing asserted.

The softthink benches (speed_soft.py, softgrpo_compare.py) are in tests/softthink/test_bench_smoke.py.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.shared.bench_run import run_bench

ROOT = Path(__file__).resolve().parents[2]


def test_speed_rec_smoke():
    out = run_bench("bench/speed_rec.py", "--smoke", "--models", "DIGER", "--backbones", "hf_t5", "fast",
                    "--profile", "--top", "5")
    for backbone in ("hf_t5", "fast"):  # both backbones side by side, with the ratio to the reference
        assert f"| DIGER | {backbone} | off | toy | 1 |" in out
    assert "train samples/s" in out and "MFLOP/sample" in out and "% fp32 peak" in out and "% bf16 peak" in out
    assert "train vs hf_t5" in out and "FAILED" not in out and "cpu capability: " in out
    # the matmul peak table, one row per thread count (--smoke: 1 thread)
    assert "| threads | fp32 GFLOP/s | bf16 GFLOP/s |" in out and "\n| 1 | " in out
    # --profile: top Python functions and torch operators of the training steps and of the beam search
    assert "=== DIGER [fast, amp off, size toy, 1 thread(s)]: beam-search evaluation" in out
    assert "cProfile" in out and "torch.profiler" in out


def test_speed_rec_smoke_decoder_depths_against_fast():
    """``decoder`` and ``decoder:N`` rows beside ``fast``, with the speed and FLOP ratios to it."""
    out = run_bench("bench/speed_rec.py", "--smoke", "--models", "TIGER", "--backbones", "fast", "decoder", "decoder:1")
    for backbone in ("fast", "decoder", "decoder:1"):
        assert f"| TIGER | {backbone} | off | toy | 1 |" in out
    assert "train vs fast" in out and "FLOPs fast / this" in out and "FAILED" not in out
    flops = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 8 and cells[0] == "TIGER":
            flops[cells[1]] = float(cells[8])  # MFLOP/sample
    assert flops["decoder:1"] < flops["decoder"]  # a shallower causal LM costs fewer FLOPs per sample
    assert "train vs hf_t5" not in out  # no reference run, no empty ratio columns
    for bad in ("decoder:0", "decoder:x", "t6"):  # refused before any child process starts
        r = subprocess.run([sys.executable, "bench/speed_rec.py", "--smoke", "--backbones", "fast", bad],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 2 and "--backbones" in r.stderr and bad in r.stderr and "Traceback" not in r.stderr


def test_quality_smoke():
    out = run_bench("bench/quality.py", "--smoke", "--arms", "Pop", "TIGER")
    assert "| Pop |" in out and "| TIGER |" in out and "ndcg@10" in out


def test_ablations_smoke():
    out = run_bench("bench/ablations.py", "--smoke", "--arms", "ste", "sdud")
    assert "| ste |" in out and "| sdud |" in out and "test NDCG@10" in out


def test_collapse_smoke(tmp_path):
    out_file = tmp_path / "collapse.json"
    out = run_bench("bench/collapse.py", "--smoke", "--modes", "frqud", "--out", str(out_file))
    assert "| frqud | 0.001 | paper | 2020 |" in out and "| frqud | 0.001 | stop_target | 2020 |" in out
    assert "nearest used per epoch" in out and "SID churn per epoch" in out
    runs = json.loads(out_file.read_text())
    assert sorted(k for k in runs if k != "_meta") == ["frqud/0.001/paper/2020", "frqud/0.001/stop_target/2020"]
    assert all(len(r["epochs"]) == 2 for k, r in runs.items() if k != "_meta")


def test_eval_memory_smoke():
    """Chunked full-sort evaluation (eval_score_chunk_mb): per-arm peak RSS table, identical metrics in every arm."""
    out = run_bench("bench/eval_memory.py", "--smoke")
    assert "| baseline (load + build, no eval) |" in out and "| unchunked (1e9 MB, old behaviour) |" in out
    assert "| default (256 MB) |" in out and "| 1 MB | 1 | 52 |" in out  # 52 users x 5,001 items x 4 B <= 1 MB
    assert "catalogue 5000 items (item_num 5001 with [PAD])" in out and "peak RSS GiB" in out
    assert "metrics (identical in every arm" in out


def test_quality_on_a_prepared_dataset(tmp_path):
    """--data_path / --config_files: any dataset folder with its own protocol file, as for Beauty."""
    import yaml
    from diger.testing import small_config, write_dataset

    write_dataset(tmp_path)
    cfg = {k: v for k, v in small_config(tmp_path).items() if k not in ("data_path", "checkpoint_dir")}
    proto = tmp_path / "protocol.yaml"
    proto.write_text(yaml.safe_dump(cfg))
    out = run_bench("bench/quality.py", "--dataset", "toy", "--data_path", str(tmp_path), "--config_files", str(proto),
                    "--arms", "Pop", "--seeds", "2020")
    assert "| Pop |" in out and f"protocol {proto}" in out
    q = tmp_path / "q.json"
    out = run_bench("bench/quality.py", "--dataset", "toy", "--data_path", str(tmp_path), "--config_files", str(proto),
                    "--arms", "Pop", "--seeds", "2020", "--out", str(q), "--override", "epochs=1")
    assert "overrides {'epochs': 1}" in out
    assert json.loads(q.read_text())["_meta"] == {"dataset": "toy", "config_files": [str(proto)],
                                                 "sid_config_files": [], "overrides": {"epochs": 1}}

    tmp = tmp_path / "tmp"  # TMPDIR of the calls below: a failed run's folder is kept, here, not in /tmp
    tmp.mkdir()

    def fails(*args):
        r = subprocess.run([sys.executable, "bench/quality.py", *args], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "TMPDIR": str(tmp)})
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        return r.stderr

    # results of one protocol are never shown under another: the same --out with another dataset is refused
    assert "holds runs of another protocol" in fails("--arms", "Pop", "--seeds", "2020", "--out", str(q))
    assert "has no folder nope/" in fails("--dataset", "nope", "--data_path", str(tmp_path), "--config_files", str(proto))
    assert "unknown arms ['Nope']" in fails("--arms", "Nope")
    assert "expected at least one argument" in fails("--seeds")
    assert "folder /nonexistent does not exist" in fails("--out", "/nonexistent/q.json")
    (tmp_path / "bad.json").write_text("{not json")
    assert "not a readable results file" in fails("--out", str(tmp_path / "bad.json"))
    # a failing run reports its last error line and its log, not the child's traceback
    err = fails("--dataset", "toy", "--data_path", str(tmp_path), "--config_files", str(proto), "--arms", "Pop",
                "--seeds", "2020", "--override", "epochs=abc")
    assert "Pop seed 2020 failed: " in err and "'epochs' expects an integer" in err and "stderr.log" in err
    kept = list(tmp.glob("bench-quality-*/Pop-2020/stderr.log"))  # the only folder any of these calls kept
    assert len(kept) == 1 and len(list(tmp.glob("bench-quality-*"))) == 1
    assert "'epochs' expects an integer" in kept[0].read_text()


def test_quality_against_another_results_file(tmp_path):
    """--against: the same arm of another results file (e.g. another backbone), paired by seed; known answer."""
    import yaml
    from diger.testing import small_config, write_dataset

    write_dataset(tmp_path)
    cfg = {k: v for k, v in small_config(tmp_path).items() if k not in ("data_path", "checkpoint_dir")}
    proto = tmp_path / "protocol.yaml"
    proto.write_text(yaml.safe_dump(cfg))

    def results(path, overrides, ndcg, dataset="toy"):
        runs = {f"Pop/{s}": {"test": {"recall@5": 0.1, "recall@10": 2 * v, "ndcg@5": 0.1, "ndcg@10": v},
                             "codebook": None, "seconds": 60.0} for s, v in zip((2020, 2021), ndcg)}
        meta = {"dataset": dataset, "config_files": [str(proto)], "sid_config_files": [], "overrides": overrides}
        path.write_text(json.dumps({"_meta": meta, **runs}))
        return str(path)

    mine = results(tmp_path / "d.json", {}, [0.05, 0.07])
    theirs = results(tmp_path / "t5.json", {"backbone": "fast"}, [0.04, 0.05])
    args = ["--dataset", "toy", "--data_path", str(tmp_path), "--config_files", str(proto), "--arms", "Pop",
            "--seeds", "2020", "2021", "--out", mine]
    out = run_bench("bench/quality.py", *args, "--against", theirs)  # every run is in the files: nothing trains
    # NDCG differences 0.01, 0.02: mean 0.015, sd 0.00707, t(0.975, 1) = 12.706 -> half-width 0.0635 (Recall: x2)
    assert "| Pop - Pop (t5.json) | +0.0150 [-0.0485, +0.0785] | +0.0300 [-0.0971, +0.1571] |" in out
    assert "overrides {'backbone': 'fast'}" in out

    def fails(*extra):
        with tempfile.TemporaryDirectory() as tmp:  # a refused file is refused before any run folder exists
            r = subprocess.run([sys.executable, "bench/quality.py", *args, *extra], capture_output=True, text=True,
                               cwd=ROOT, env={**os.environ, "TMPDIR": tmp})
            assert not list(Path(tmp).iterdir())
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        return r.stderr

    assert "has no run Pop/2022" in fails("--seeds", "2020", "2021", "2022", "--against", theirs)
    other = results(tmp_path / "other.json", {}, [0.04, 0.05], dataset="ml-100k")
    assert "differences across protocols are not paired" in fails("--against", other)
    (tmp_path / "bad.json").write_text("[")
    assert "not a readable results file" in fails("--against", str(tmp_path / "bad.json"))
    (tmp_path / "nometa.json").write_text('{"_meta": 5}')
    assert "not a results file of bench/quality.py" in fails("--against", str(tmp_path / "nometa.json"))
    notest = json.loads(Path(theirs).read_text())
    del notest["Pop/2021"]["test"]
    (tmp_path / "notest.json").write_text(json.dumps(notest))  # refused before any run, not after all of them
    assert "run 'Pop/2021' has no numeric test metrics" in fails("--against", str(tmp_path / "notest.json"))
    for bad in ("bad.json", "missing.json"):  # --reuse is checked like --out and --against
        assert "--reuse" in fails("--reuse", str(tmp_path / bad))
    assert "holds runs of another protocol" in fails("--reuse", other)
