"""How a soft step is scored, on a toy task where the reward depends on the last thinking token (issue 17).

    python bench/soft_logprob_toy.py --out bench/results/soft_logprob_toy.json     # 4 methods x 6 seeds, minutes
    python bench/soft_logprob_toy.py --smoke                                         # 2 steps, 2 seeds (tests)

A tiny random Qwen2 (``softthink.testing.make_model``), 8 prompts, 8 generations per prompt, 64 completions per
step, 4 completion positions, all thinking (no think end within the budget), reward 1 when the readable (top)
id of the last position is in 10..19, so the reward can only be learned through how thinking positions are
scored. Methods (every other setting equal, lr 1e-3, beta 0, tau_g 0.1, top-k 5, top-p 0.95):

* ``grpo``: discrete GRPO with the same thinking phase (``discrete_think``);
* ``softgrpo``: SofT-GRPO, ``soft_logprob: gumbel_density`` (the paper);
* ``softgrpo_token``: the same soft rollouts scored with the emitted top id's log-probability (ours);
* ``softgrpo_hybrid``: density where the mixture is mixed (largest weight < 0.99), token elsewhere (ours).

Reported per method: the mean training reward over all steps (how fast it learns; the task saturates, so the
last steps alone cannot separate methods) and over the last 5 steps, means over seeds, and each soft method's
paired difference from ``grpo`` (same seeds) with a 95% t confidence interval. Every finished run is written to ``--out``
at once; a rerun skips it.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, paired_ci, table  # noqa: E402
from quality import load_results  # noqa: E402
from diger.infra import atomic_write_json  # noqa: E402

METHODS = {
    "grpo": {"soft_thinking": False, "discrete_think": True},
    "softgrpo": {"soft_thinking": True, "soft_logprob": "gumbel_density"},
    "softgrpo_token": {"soft_thinking": True, "soft_logprob": "token"},
    "softgrpo_hybrid": {"soft_thinking": True, "soft_logprob": "hybrid"},
}
PROMPTS = [f"w{5 + i} w{20 + i} w{40 + i}" for i in range(8)]
def last_token_reward(prompts, completions, completion_ids, **kw):
    """1 if the readable id of the last completion position is in 10..19."""
    return [1.0 if ids and 10 <= ids[-1] <= 19 else 0.0 for ids in completion_ids]


def run_one(method: str, seed: int, steps: int, work: Path) -> dict:
    import torch

    from softthink.testing import base_config, make_model, make_tokenizer
    from softthink.trainer import SoftGRPOTrainer

    torch.set_num_threads(1)
    cfg = base_config(num_generations=8, generation_batch_size=64, per_device_train_batch_size=64,
                      gradient_accumulation_steps=1, max_completion_length=4, max_think_tokens=8, learning_rate=1e-3,
                      beta=0.0, max_steps=steps, seed=seed, output_dir=str(work / f"{method}-{seed}"),
                      save_model=False, save_steps=0, top_k=5, top_p=0.95, gumbel_tau=0.1, **METHODS[method])
    tr = SoftGRPOTrainer(make_model(seed=seed), make_tokenizer(), cfg, [{"prompt": p} for p in PROMPTS],
                         reward_funcs=[last_token_reward])
    t0 = time.time()
    rewards = [tr.step()["reward"] for _ in range(steps)]
    return {"rewards": rewards, "last5": sum(rewards[-5:]) / len(rewards[-5:]), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(range(6)))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.seeds = 2, [0, 1]
    meta = {"steps": args.steps, "task": "last thinking token in 10..19, tiny Qwen2"}
    done = load_results(args.out, meta) if not args.smoke else {}
    done["_meta"] = meta
    work = Path(tempfile.mkdtemp(prefix="bench-softlogprob-"))
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}/{seed}"
            if key not in done:
                done[key] = run_one(method, seed, args.steps, work)
                if args.out:
                    atomic_write_json(args.out, done)
                print(f"done {key}: last-5 reward {done[key]['last5']:.3f}", file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    auc = {k: statistics.mean(v["rewards"]) for k, v in done.items() if k != "_meta"}
    for method in args.methods:
        vals = [auc[f"{method}/{s}"] for s in args.seeds]
        last = [done[f"{method}/{s}"]["last5"] for s in args.seeds]
        row = {"method": method, "seeds": len(vals), "mean reward, all steps": f"{statistics.mean(vals):.3f}",
               "per seed": " ".join(f"{v:.2f}" for v in vals), "last-5 reward": f"{statistics.mean(last):.3f}"}
        if method != "grpo" and "grpo" in args.methods:
            m, lo, hi = paired_ci([v - auc[f"grpo/{s}"] for v, s in zip(vals, args.seeds)])
            row["minus grpo (95% CI)"] = f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        if method not in ("grpo", "softgrpo") and "softgrpo" in args.methods:
            m, lo, hi = paired_ci([v - auc[f"softgrpo/{s}"] for v, s in zip(vals, args.seeds)])
            row["minus softgrpo (95% CI)"] = f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        rows.append(row)
    print(header("python bench/soft_logprob_toy.py " + " ".join(sys.argv[1:])))
    print(f"{args.steps} steps x 64 completions, seeds {args.seeds}\n")
    print(table(rows, ["method", "seeds", "mean reward, all steps", "minus grpo (95% CI)", "minus softgrpo (95% CI)",
                       "per seed", "last-5 reward"]))


if __name__ == "__main__":
    main()
