"""SofT-GRPO vs discrete GRPO vs the Gaussian-embedding baseline, in miniature (arXiv 2511.06411, 2509.19170).

For each method and seed: train from the same base model with the same budget (steps, prompts, group size,
optimiser), then evaluate pass@1 / pass@k (unbiased, k up to ``--num-samples``) on the same held-out problems with
discrete and soft (SofT-GRPO setting: tau_g 0.1, top-k 5, top-p 0.95) inference. The base model is evaluated
once as a reference. Everything runs in this one process, one run at a time; results are appended to
``<out>/results.json`` after every evaluation (a re-run skips finished runs), and the table is printed at the end.

    python bench/softgrpo_compare.py                 # SmolLM2-135M-Instruct, configs/softthink_compare.yaml
    python bench/softgrpo_compare.py --smoke         # tiny random Qwen2, seconds (used by the tests)

Methods (only ``soft_thinking`` / ``soft_noise`` differ between them):
  grpo      discrete GRPO (discrete thinking tokens, same budget / marker / answer cue)
  softgrpo  SofT-GRPO: Gumbel noise on the top-K log-probs, tau_g 0.1
  embed     Gaussian noise on the input embedding (Butt et al. 2025), same mixture ids, scored with its density
  softgrpo_token, softgrpo_hybrid
            SofT-GRPO rollouts scored with ``soft_logprob: token`` / ``hybrid`` (ours; not in the default set)

The SmolLM2 repeat of issue 17 (GRPO vs SofT-GRPO with the best ``soft_logprob`` of bench/softgrpo_sft.py):

    python bench/softgrpo_compare.py --methods grpo,softgrpo_token --seeds 0,1,2 --steps 30 --eval-problems 40 \
        --override generation_batch_size=32 per_device_train_batch_size=32 learning_rate=1e-5 \
        --out runs/softgrpo_smollm2_repeat --results bench/results/softgrpo_smollm2_repeat.json

``--results`` (default ``<out>/results.json``) refuses a file written under another configuration, so runs of
different protocols never mix.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

METHODS = {
    "grpo": {"soft_thinking": False, "discrete_think": True},
    "softgrpo": {"soft_thinking": True, "soft_noise": "gumbel"},
    "embed": {"soft_thinking": True, "soft_noise": "embedding_gaussian"},
    "softgrpo_token": {"soft_thinking": True, "soft_noise": "gumbel", "soft_logprob": "token"},
    "softgrpo_hybrid": {"soft_thinking": True, "soft_noise": "gumbel", "soft_logprob": "hybrid"},
}
DEFAULT_METHODS = ("grpo", "softgrpo", "embed")
#: config keys that differ between the runs of one results file by design
_PER_RUN_KEYS = ("seed", "output_dir")
MODES = ("discrete", "softgrpo")


def _tiny_model_and_tokenizer():
    """A tiny random Qwen2 and a byte-level BPE trained in code (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<pad>", "<s>", "</s>", "</think>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [f"What is {a} + {b}? The final answer is \\boxed{{{a + b}}}</think>"
              for a in range(10) for b in range(10)]
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["</think>"])
    tok.padding_side = "left"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    return Qwen2ForCausalLM(cfg).float().eval(), tok


def _smoke_overrides() -> Dict[str, Any]:
    return dict(model_name_or_path="tiny-random", max_steps=2, dataset_size=8, eval_dataset_size=2,
                num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                gradient_accumulation_steps=1, max_completion_length=12, max_think_tokens=4, system_prompt=None,
                learning_rate=1e-3, torch_num_threads=1)


def _load(cfg):
    if cfg.model_name_or_path == "tiny-random":
        return _tiny_model_and_tokenizer()
    from softthink.models import load_model_and_tokenizer

    return load_model_and_tokenizer(cfg.model_name_or_path)


def _atomic_json(path: Path, obj) -> None:
    from softthink.trainer import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def _evaluate(model, tok, cfg, eval_ds, args, seed: int) -> Dict[str, Dict[str, Any]]:
    from softthink.evaluate import evaluate_model

    out = {}
    for mode in MODES:
        r = evaluate_model(model, tok, cfg, eval_ds, mode=mode, num_samples=args.num_samples, ks=args.ks,
                           batch_size=args.eval_batch_size, seed=10_000 + seed, progress=False)
        out[mode] = {k: r[k] for k in r if k.startswith("pass@") or k in (
            "correct_counts", "seconds", "completions/mean_length", "frac_problems_all_wrong", "settings")}
    return out


def _check_protocol(old: Any, new: Dict[str, Any], path: Path) -> None:
    """Refuse to add runs to a results file written under another configuration.

    Raises:
        SystemExit: naming the file and the keys that differ (old -> new).
    """
    if not old:
        return
    diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if k not in _PER_RUN_KEYS and old.get(k) != new.get(k)}
    if diff:
        raise SystemExit(f"--results {path} holds runs of another configuration (old -> new: {diff}); "
                         "pick another --results / --out, or --fresh to discard them")


def run(args) -> Dict[str, Any]:
    import torch

    from softthink.config import load_yaml_config
    from softthink.data import make_train_eval_datasets
    from softthink.trainer import SoftGRPOTrainer

    over = _smoke_overrides() if args.smoke else {}
    if args.steps is not None:
        over["max_steps"] = args.steps
    if args.eval_problems is not None:
        over["eval_dataset_size"] = args.eval_problems
    over.update(args.override)
    base_cfg = load_yaml_config(args.config, over)
    torch.set_num_threads(int(base_cfg.torch_num_threads or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = Path(args.results) if args.results else out / "results.json"
    results: Dict[str, Any] = json.loads(res_path.read_text()) if res_path.is_file() and not args.fresh else {}
    _check_protocol(results.get("config"), base_cfg.to_dict(), res_path)
    results.setdefault("runs", {})
    results["config"] = base_cfg.to_dict()
    results["args"] = {k: v for k, v in vars(args).items()}
    t_all = time.time()

    train_ds, eval_ds = make_train_eval_datasets(base_cfg)
    # base model reference (evaluated once, seed 0)
    if "base" not in results["runs"]:
        t0 = time.time()
        model, tok = _load(base_cfg)
        ev = _evaluate(model, tok, base_cfg, eval_ds, args, 0)
        results["runs"]["base"] = {"method": "base", "seed": 0, "eval": ev, "train_seconds": 0.0,
                                   "seconds": time.time() - t0}
        _atomic_json(res_path, results)
        print(f"[base] {time.time() - t0:.0f}s", flush=True)
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}/seed{seed}"
            if key in results["runs"]:
                continue
            t0 = time.time()
            cfg = dataclasses.replace(base_cfg, seed=seed, output_dir=str(out / method / f"seed{seed}"),
                                      save_model=False, **METHODS[method])
            torch.manual_seed(seed)
            model, tok = _load(cfg)
            trainer = SoftGRPOTrainer(model, tok, cfg, train_ds)
            import contextlib
            import io

            with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
                hist = trainer.train()
            t_train = time.time() - t0
            model.eval()
            ev = _evaluate(trainer.model, tok, cfg, eval_ds, args, seed)
            results["runs"][key] = {
                "method": method, "seed": seed, "eval": ev, "train_seconds": t_train, "seconds": time.time() - t0,
                "reward_first3": sum(h["reward"] for h in hist[:3]) / min(3, len(hist)),
                "reward_last3": sum(h["reward"] for h in hist[-3:]) / min(3, len(hist)),
                "kl_last": hist[-1].get("kl", 0.0), "frac_soft_steps": hist[-1].get("soft/frac_soft_steps", 0.0),
            }
            _atomic_json(res_path, results)
            print(f"[{key}] train {t_train:.0f}s, total {time.time() - t0:.0f}s, reward "
                  f"{results['runs'][key]['reward_first3']:.3f} -> {results['runs'][key]['reward_last3']:.3f}, "
                  + ", ".join(f"{m} pass@1 {ev[m]['pass@1']:.3f}" for m in MODES), flush=True)
    results["wall_clock_s_this_invocation"] = time.time() - t_all
    _atomic_json(res_path, results)
    return results


def _ms(vals: List[float]) -> str:
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def make_table(results: Dict[str, Any], ks) -> str:
    from common import table

    rows = []
    methods = ["base"] + [m for m in METHODS if any(r["method"] == m for r in results["runs"].values())]
    for method in methods:
        runs = [r for r in results["runs"].values() if r["method"] == method]
        for mode in MODES:
            row = {"method": method, "inference": mode, "seeds": len(runs)}
            for k in ks:
                row[f"pass@{k}"] = _ms([r["eval"][mode][f"pass@{k}"] for r in runs])
            if method != "base":
                row["train reward first3 -> last3"] = (f"{statistics.mean(r['reward_first3'] for r in runs):.3f} -> "
                                                       f"{statistics.mean(r['reward_last3'] for r in runs):.3f}")
            rows.append(row)
    cols = ["method", "inference", "seeds"] + [f"pass@{k}" for k in ks] + ["train reward first3 -> last3"]
    return table(rows, cols)


def claim_check(results: Dict[str, Any], ks) -> str:
    """Paired-by-seed differences (method - grpo) of pass@1 and the largest pass@k: mean, 95% t interval
    (``bench/common.paired_ci``; NaN bounds for one seed) and how many seeds are above GRPO."""
    from common import paired_ci

    runs = results["runs"]
    kmax = max(ks)
    lines = []
    for method in [m for m in METHODS if m != "grpo"]:
        seeds = sorted(r["seed"] for r in runs.values() if r["method"] == method and f"grpo/seed{r['seed']}" in runs)
        if not seeds:
            continue
        for mode in MODES:
            parts = []
            for k in (1, kmax):
                key = f"pass@{k}"
                d = [runs[f"{method}/seed{s}"]["eval"][mode][key] - runs[f"grpo/seed{s}"]["eval"][mode][key]
                     for s in seeds]
                m, lo, hi = paired_ci(d)
                parts.append(f"pass@{k} {m:+.3f} [{lo:+.3f}, {hi:+.3f}] ({sum(x > 0 for x in d)}/{len(d)} seeds > 0)")
            lines.append(f"{method} - grpo, {mode} inference (95% CI): " + "; ".join(parts))
    return "\n".join(lines)


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "softthink_compare.yaml"))
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 1 seed, seconds")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, of {list(METHODS)}")
    ap.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                    help="SoftGRPOConfig fields over --config (YAML values), e.g. learning_rate=1e-5")
    ap.add_argument("--results", default=None, help="results JSON (default <out>/results.json; resumes)")
    ap.add_argument("--steps", type=int, help="override max_steps")
    ap.add_argument("--eval-problems", type=int, help="override eval_dataset_size")
    ap.add_argument("--num-samples", type=int, default=16, help="samples per held-out problem (n)")
    ap.add_argument("--k", default="1,2,4,8,16", help="pass@k values (each <= n)")
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "runs" / "softgrpo_compare"))
    ap.add_argument("--fresh", action="store_true", help="ignore an existing results.json")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.methods = [m for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; choose from {list(METHODS)}")
    args.ks = [int(k) for k in args.k.split(",") if k.strip()]
    from diger.infra import parse_key_values  # the rules of `softthink train --set`

    args.override = parse_key_values(args.override, prefix="", error=SystemExit,
                                     what="--override expects KEY=VALUE (a SoftGRPOConfig field)")
    if args.smoke:
        args.seeds, args.num_samples, args.ks, args.fresh = args.seeds[:1], 4, [1, 2, 4], True
        if args.out == str(ROOT / "runs" / "softgrpo_compare"):
            args.out = str(ROOT / "runs" / "softgrpo_compare_smoke")
    if any(k > args.num_samples for k in args.ks):
        raise SystemExit(f"--k values must be <= --num-samples {args.num_samples}")
    t0 = time.time()
    results = run(args)
    from common import header

    cmd = "python bench/softgrpo_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cfg = results["config"]
    print(header(cmd.strip()))
    print(f"model {cfg['model_name_or_path']}, task {cfg['dataset_name']} {cfg['dataset_kwargs']}, "
          f"{cfg['max_steps']} steps x {cfg['generation_batch_size']} completions (G={cfg['num_generations']}), "
          f"lr {cfg['learning_rate']}, beta {cfg['beta']}; eval {cfg['eval_dataset_size']} held-out problems x "
          f"{args.num_samples} samples; seeds {args.seeds}; wall-clock this invocation {time.time() - t0:.0f}s, "
          f"all runs {sum(r['seconds'] for r in results['runs'].values()):.0f}s")
    print(make_table(results, args.ks))
    print(claim_check(results, args.ks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
